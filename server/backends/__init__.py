"""Execution backends: ONNX Runtime (default) and TensorFlow SavedModel, on CPU or GPU.

A backend runs ``images`` float32 [N,H,W,C] and returns the requested outputs by name.
TensorFlow is imported only when the TensorFlow backend is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("onnx", "tf")
DEVICES = ("auto", "cpu", "gpu")


class Backend(Protocol):
    platform: str
    """Triton platform name: onnxruntime_onnx or tensorflow_savedmodel."""
    device: str
    """Where it runs: "cpu" or "gpu"."""

    def run(self, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]: ...


def load_backend(kind: str, version_dir: Path, device: str, intra_op_threads: int = 0) -> Backend:
    if kind == "onnx":
        from server.backends.onnx import OnnxBackend

        return OnnxBackend(version_dir, device, intra_op_threads)
    if kind == "tf":
        from server.backends.tf import TensorFlowBackend

        return TensorFlowBackend(version_dir, device)
    raise ValueError(f"unknown backend {kind!r}, expected one of {BACKENDS}")


def gpu_available(kind: str) -> bool:
    """Whether ``kind`` can run on a GPU here (ONNX Runtime's CUDA provider / TensorFlow's GPU)."""
    if kind == "onnx":
        from server.backends.onnx import cuda_provider_available

        return cuda_provider_available()
    from server.backends.tf import tensorflow_gpu_available

    return tensorflow_gpu_available()
