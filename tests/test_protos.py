"""The generated protobuf modules are what `make protos` makes from protos/*.proto today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py", "tfserving_pb2.py", "tfserving_pb2.pyi",
             "monitor_pb2.py", "monitor_pb2.pyi", "monitor_pb2_grpc.py"]


def test_generated_code_is_not_stale(tmp_path):
    for proto, grpc_out in (("inference.proto", True), ("tfserving.proto", False), ("monitor.proto", True)):
        command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={tmp_path}",
                   f"--pyi_out={tmp_path}", f"protos/{proto}"] + ([f"--grpc_python_out={tmp_path}"] if grpc_out else [])
        subprocess.run(command, check=True, cwd=ROOT)
    for name in GENERATED:
        assert (tmp_path / "protos" / name).read_text() == (ROOT / "protos" / name).read_text(), \
            f"protos/{name} is stale: run `make protos`"
