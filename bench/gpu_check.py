"""One command for the first machine with an NVIDIA GPU: serve on the GPU, prove the numbers, measure.

    python bench/gpu_check.py [--seconds 3]

On a machine without a usable NVIDIA GPU it stops at once with one line saying why (exit status 2).
Otherwise it installs the `gpu` extra (ONNX Runtime's CUDA build in place of the CPU wheel) and
TensorFlow's CUDA libraries, trains and exports the digits and conv6 models, and for each backend
(onnx, tf) and model:

- starts `bnserve serve --device gpu` and times the cold start (process start to a READY model); the
  server's own load-time golden check then runs on the GPU: its measured error (ModelConfig parameter
  parity_max_abs_error) is reported;
- compares the GPU server's answers with a CPU server's for the same 64 random images (<= 1e-4);
- measures served throughput (h2load, c=32 digits / c=8 conv6) against in-process ONNX Runtime on
  the GPU at batch 64 (with I/O binding of the input, so host-to-device copies are not counted twice);

and writes docs/gpu.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOLERANCE = 1e-4


def no_gpu_reason() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU here (nvidia-smi not found): nothing to check"
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if result.returncode != 0 or "GPU" not in result.stdout:
        return f"no usable NVIDIA GPU here (nvidia-smi -L: {(result.stderr or result.stdout).strip()[:200]})"
    return None


def install_gpu_runtimes() -> None:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-e", f"{ROOT}[gpu,test,bench]"], check=True)
    # onnxruntime-gpu provides the same `onnxruntime` module: the CPU wheel must go, then the GPU wheel's
    # files must be put back (uninstalling one removed the shared files).
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", "onnxruntime"], check=True
    )
    subprocess.run([*pip, "--force-reinstall", "--no-deps", "onnxruntime-gpu>=1.20,<2"], check=True)
    subprocess.run([*pip, "tensorflow[and-cuda]>=2.21,<2.22"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu.md")
    parser.add_argument(
        "--skip-install", action="store_true", help="the GPU runtimes are installed already"
    )
    args = parser.parse_args()
    reason = no_gpu_reason()
    if reason:
        print(f"gpu_check: {reason}", file=sys.stderr)
        return 2
    if not args.skip_install:
        install_gpu_runtimes()
    # A fresh interpreter imports the GPU build of ONNX Runtime installed above.
    return subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            str(args.seconds),
            str(args.out),
        ]
    ).returncode


def measure(seconds: float, out: Path) -> int:
    import grpc
    import numpy as np
    import onnxruntime

    from bench.loadgen import model_infer_body, run_load
    from bench.run import prepare_models
    from bnserve.protos import inference_pb2 as pb
    from bnserve.protos import inference_pb2_grpc
    from tests.servers import start_server

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print(
            f"gpu_check: ONNX Runtime has no CUDA provider after the install "
            f"({onnxruntime.get_available_providers()})",
            file=sys.stderr,
        )
        return 1
    shapes = {"digits": (8, 8, 1), "conv6": (32, 32, 3)}
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        repository = prepare_models(work)

        def answers(url: str, name: str, images: np.ndarray) -> np.ndarray:
            request = pb.ModelInferRequest(
                model_name=name,
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="images", datatype="FP32", shape=images.shape
                    )
                ],
                raw_input_contents=[images.tobytes()],
            )
            with grpc.insecure_channel(url) as channel:
                response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    request, timeout=60
                )
            return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(
                len(images), -1
            )

        def parity_error(url: str, name: str) -> str:
            with grpc.insecure_channel(url) as channel:
                config = (
                    inference_pb2_grpc.GRPCInferenceServiceStub(channel)
                    .ModelConfig(pb.ModelConfigRequest(name=name), timeout=30)
                    .config
                )
            return config.parameters["parity_max_abs_error"].string_value or "unverified"

        for backend in ("onnx", "tf"):
            for name, shape in shapes.items():
                images = np.random.default_rng(1).uniform(0, 16, (64, *shape)).astype(np.float32)
                cpu = start_server(
                    repository, "--backend", backend, "--device", "cpu", "--model-control", "none"
                )
                try:
                    expected = answers(cpu.url, name, images)
                finally:
                    cpu.stop()
                started = time.perf_counter()
                gpu = start_server(
                    repository,
                    "--backend",
                    backend,
                    "--device",
                    "gpu",
                    "--model-control",
                    "none",
                    timeout=300,
                )
                cold_start = time.perf_counter() - started
                try:
                    difference = float(np.max(np.abs(answers(gpu.url, name, images) - expected)))
                    golden = parity_error(gpu.url, name)
                    concurrency = 32 if name == "digits" else 8
                    served = run_load(
                        gpu.port,
                        model_infer_body(name, images[:1]),
                        concurrency,
                        seconds,
                        gpu.process.pid,
                    ).throughput
                finally:
                    gpu.stop()
                in_process = in_process_gpu(repository / name / "1" / "model.onnx", images, seconds)
                if difference > TOLERANCE:
                    failures.append(
                        f"{backend}/{name}: GPU vs CPU {difference:.2e} > {TOLERANCE:g}"
                    )
                rows.append(
                    f"| {backend} | {name} | {cold_start:.2f} | {golden} | {difference:.2e} | {served:,.0f} | "
                    f"{in_process:,.0f} | {served / in_process:.2f} |"
                )
    device = (
        subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[0]
    )
    out.write_text(
        "\n".join(
            [
                "# GPU check",
                "",
                f"Produced by `python bench/gpu_check.py` on {device}, onnxruntime "
                f"{onnxruntime.__version__}.",
                "",
                "| backend | model | cold start s | load-time golden error | GPU vs CPU max abs | served req/s | "
                "in-process ORT GPU samples/s (batch 64, I/O binding) | served / in-process |",
                "|---|---|---|---|---|---|---|---|",
                *rows,
                "",
                "Verdict: "
                + (
                    "every GPU answer within 1e-4 of the CPU's."
                    if not failures
                    else "; ".join(failures)
                ),
                "",
            ]
        )
    )
    print(out.read_text())
    return 1 if failures else 0


def in_process_gpu(model_path: Path, images, seconds: float) -> float:
    """Samples/s of ONNX Runtime's CUDA provider at batch 64, input bound once on the device."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(model_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    binding = session.io_binding()
    binding.bind_ortvalue_input(
        "images", onnxruntime.OrtValue.ortvalue_from_numpy(images, "cuda", 0)
    )
    for name in ("logits", "probabilities"):
        binding.bind_output(name, "cuda")
    session.run_with_iobinding(binding)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run_with_iobinding(binding)
        calls += 1
    return calls * len(images) / (time.perf_counter() - started)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        sys.exit(measure(float(sys.argv[2]), Path(sys.argv[3])))
    sys.exit(main())
