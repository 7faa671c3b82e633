"""The generated protobuf modules are what `make protos` makes from protos/*.proto today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = [
    "inference_pb2.py",
    "inference_pb2.pyi",
    "inference_pb2_grpc.py",
    "tfserving_pb2.py",
    "tfserving_pb2.pyi",
    "monitor_pb2.py",
    "monitor_pb2.pyi",
    "monitor_pb2_grpc.py",
]


def test_generated_code_is_not_stale(tmp_path):
    # As `make protos` does: protoc sees protos/ as bnserve/protos/, the package it installs as.
    source, out = tmp_path / "source", tmp_path / "out"
    (source / "bnserve").mkdir(parents=True)
    (source / "bnserve" / "protos").symlink_to(ROOT / "protos")
    out.mkdir()
    for proto, grpc_out in (
        ("inference.proto", True),
        ("tfserving.proto", False),
        ("monitor.proto", True),
    ):
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{source}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"bnserve/protos/{proto}",
        ] + ([f"--grpc_python_out={out}"] if grpc_out else [])
        subprocess.run(command, check=True, cwd=ROOT)
    for name in GENERATED:
        assert (out / "bnserve" / "protos" / name).read_text() == (
            ROOT / "protos" / name
        ).read_text(), f"protos/{name} is stale: run `make protos`"
    assert (
        "from bnserve.protos import inference_pb2"
        in (ROOT / "protos" / "inference_pb2_grpc.py").read_text()
    )
