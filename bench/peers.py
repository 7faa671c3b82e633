"""The peers in `make bench`: KServe's ModelServer and Seldon MLServer serving the same model.onnx.

Each runs in a virtual environment of its own under .bench/venvs/ (built here on first use, with the
pinned versions below), so their dependencies never meet bnserve's. A peer is started on free ports,
waited for until a real ModelInfer request gets the right answer, and stopped with SIGTERM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from tests.servers import ServerProcess, free_port  # a small race with fixed-port peers: bench only

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench" / "venvs"
PEERS = {
    "kserve": ["kserve==0.21.0", "onnxruntime>=1.20,<2"],
    "mlserver": ["mlserver==1.7.1", "onnxruntime>=1.20,<2"],
}


def venv_python(peer: str) -> Path:
    """The peer's interpreter, installing its venv when missing (about a minute each)."""
    venv = VENVS / peer
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.read_text() != "\n".join(PEERS[peer]):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEERS[peer]], check=True)
        stamp.write_text("\n".join(PEERS[peer]))
    return python


def reference_logits(version_dir: Path, images: np.ndarray) -> np.ndarray:
    """``version_dir``'s model.onnx on ``images`` in this process (ONNX Runtime, CPU): the answer every served
    model is checked against before it is measured (check_answer)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["logits"], {"images": images})[0]


def check_answer(
    port: int, model: str, images: np.ndarray, expected_logits: np.ndarray, timeout_s: float = 120
) -> None:
    """Wait until the server answers one real ModelInfer with logits equal to ``expected_logits``."""
    from bnserve.protos import inference_pb2 as pb
    from bnserve.protos import inference_pb2_grpc

    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="images", datatype="FP32", shape=images.shape
            )
        ],
        raw_input_contents=[images.tobytes()],
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    request, timeout=10
                )
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    position = [o.name for o in response.outputs].index("logits")
    if response.raw_output_contents:
        logits = np.frombuffer(response.raw_output_contents[position], np.float32)
    else:
        logits = np.array(response.outputs[position].contents.fp32_contents, np.float32)
    np.testing.assert_allclose(
        logits.reshape(expected_logits.shape), expected_logits, rtol=1e-5, atol=1e-5
    )


def start_peer(
    peer: str, version_dir: Path, model: str, work: Path, pin: str | None = None
) -> ServerProcess:
    python = venv_python(peer)
    port = free_port()
    prefix = ["taskset", "-c", pin] if pin else []
    log = open(work / f"{peer}-{port}.log", "w")
    http_port = free_port()
    if peer == "kserve":
        command = [
            *prefix,
            str(python),
            str(ROOT / "bench" / "peers" / "kserve_onnx.py"),
            "--model-dir",
            str(version_dir),
            "--name",
            model,
            "--grpc-port",
            str(port),
            "--http-port",
            str(http_port),
        ]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    else:
        folder = work / f"mlserver-{port}"
        folder.mkdir()
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "grpc_port": port,
                    "http_port": http_port,
                    "metrics_port": free_port(),
                    "parallel_workers": 0,
                    "debug": False,
                }
            )
        )
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": model,
                    "implementation": "mlserver_onnx.OnnxRuntime",
                    # Adaptive batching, MLServer's best configuration for concurrent traffic.
                    "max_batch_size": 64,
                    "max_batch_time": 0.001,
                    "parameters": {"uri": str(version_dir / "model.onnx")},
                }
            )
        )
        mlserver = python.parent / "mlserver"
        process = subprocess.Popen(
            [*prefix, str(mlserver), "start", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT / "bench" / "peers",
            env={"PYTHONPATH": str(ROOT / "bench" / "peers"), "PATH": "/usr/bin:/bin"},
        )
    return ServerProcess(process, port, http_port=http_port)
