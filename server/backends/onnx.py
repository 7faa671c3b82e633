"""ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from bnserve.core.repository import INPUT_NAME, ONNX_MODEL, TensorSpec
from server.errors import StartupError

ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(int64)": "INT64",
              "tensor(int32)": "INT32", "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_provider_available() -> bool:
    return CUDA in onnxruntime.get_available_providers()


class OnnxBackend:
    platform = "onnxruntime_onnx"

    def __init__(self, version_dir: Path, device: str, intra_op_threads: int = 0):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0: ONNX Runtime's default (physical cores)
        # Spinning intra-op threads keep every core busy between calls, starving the event loop that
        # feeds them: on 2 cores it halved served throughput at concurrency 32 (docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [CUDA, CPU] if device in ("auto", "gpu") and cuda_provider_available() else [CPU]
        self.session = onnxruntime.InferenceSession(str(version_dir / ONNX_MODEL), options, providers=providers)
        # ONNX Runtime silently falls back to the CPU when CUDA cannot start: check what it picked.
        self.device = "gpu" if self.session.get_providers()[0] == CUDA else "cpu"
        if device == "gpu" and self.device != "gpu":
            raise StartupError(f"--device gpu: ONNX Runtime has no usable CUDA provider (available: "
                               f"{', '.join(onnxruntime.get_available_providers())}); install bnserve[gpu]")

    def run(self, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.session.run(outputs, {INPUT_NAME: images})))

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        def spec(node) -> TensorSpec:
            datatype = ONNX_TO_V2.get(node.type, node.type)
            return TensorSpec(node.name, datatype, tuple(d if isinstance(d, int) else -1 for d in node.shape))

        return [spec(n) for n in self.session.get_inputs()], [spec(n) for n in self.session.get_outputs()]
