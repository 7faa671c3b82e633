"""Execution backends: ONNX Runtime (default) and TensorFlow SavedModel, on CPU or GPU.

A backend runs ``images`` float32 [N,H,W,C] and returns the requested outputs by name.
TensorFlow is imported only when the TensorFlow backend is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from bnserve.core.errors import UserError
from bnserve.core.repository import TensorSpec
from bnserve.server.settings import BACKENDS


class Backend(Protocol):
    platform: str
    """Triton platform name: onnxruntime_onnx or tensorflow_savedmodel."""
    device: str
    """Where it runs: "cpu" or "gpu"."""

    def run(self, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]: ...

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The model's own inputs and outputs (KServe datatypes, -1 for a dynamic dimension)."""
        ...


def check_signature(
    declared_inputs: list[TensorSpec],
    declared_outputs: list[TensorSpec],
    backend: Backend,
    artifact: str,
) -> None:
    """The manifest's tensors are the model's: same names, datatypes and shapes (a dynamic dimension of
    the model matches -1 only). Raises UserError naming the first difference."""
    inputs, outputs = backend.signature()
    for kind, declared, actual in (
        ("input", declared_inputs, inputs),
        ("output", declared_outputs, outputs),
    ):
        found = {spec.name: spec for spec in actual}
        if sorted(found) != sorted(spec.name for spec in declared):
            raise UserError(
                f"{artifact} has {kind}s {sorted(found)}, the manifest declares "
                f"{sorted(spec.name for spec in declared)}"
            )
        for spec in declared:
            model = found[spec.name]
            if model.datatype != spec.datatype:
                raise UserError(
                    f"{artifact} {kind} {spec.name!r} is {model.datatype}, the manifest declares "
                    f"{spec.datatype}"
                )
            if list(model.shape) != list(spec.shape):
                raise UserError(
                    f"{artifact} {kind} {spec.name!r} has shape {list(model.shape)}, the manifest "
                    f"declares {list(spec.shape)}"
                )


def load_backend(kind: str, version_dir: Path, device: str, intra_op_threads: int = 0) -> Backend:
    if kind == "onnx":
        from bnserve.server.backends.onnx import OnnxBackend

        return OnnxBackend(version_dir, device, intra_op_threads)
    if kind == "tf":
        from bnserve.server.backends.tf import TensorFlowBackend

        return TensorFlowBackend(version_dir, device)
    raise ValueError(f"unknown backend {kind!r}, expected one of {BACKENDS}")


def gpu_available(kind: str) -> bool:
    """Whether ``kind`` can run on a GPU here (ONNX Runtime's CUDA provider / TensorFlow's GPU)."""
    if kind == "onnx":
        from bnserve.server.backends.onnx import cuda_provider_available

        return cuda_provider_available()
    from bnserve.server.backends.tf import tensorflow_gpu_available

    return tensorflow_gpu_available()
