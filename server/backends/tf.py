"""TensorFlow SavedModel backend (imports TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bnserve.core.repository import INPUT_NAME, SAVED_MODEL, SIGNATURE, TensorSpec
from bnserve.server.errors import StartupError


def tensorflow_gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


TF_TO_V2 = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}


class TensorFlowBackend:
    platform = "tensorflow_savedmodel"

    def __init__(self, version_dir: Path, device: str):
        if device == "gpu" and not tensorflow_gpu_available():
            raise StartupError("--device gpu: TensorFlow sees no GPU")
        self.device = "gpu" if device in ("auto", "gpu") and tensorflow_gpu_available() else "cpu"
        self._device_name = "/GPU:0" if self.device == "gpu" else "/CPU:0"
        with tf.device(self._device_name):
            self._model = tf.saved_model.load(str(version_dir / SAVED_MODEL))
        self._signature = self._model.signatures[SIGNATURE]

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        def spec(name, tensor) -> TensorSpec:
            datatype = TF_TO_V2.get(tensor.dtype.name, tensor.dtype.name)
            return TensorSpec(
                name, datatype, tuple(-1 if d is None else int(d) for d in tensor.shape)
            )

        _, inputs = self._signature.structured_input_signature
        return (
            [spec(name, t) for name, t in inputs.items()],
            [spec(name, t) for name, t in self._signature.structured_outputs.items()],
        )

    def run(self, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        with tf.device(self._device_name):
            results = self._signature(**{INPUT_NAME: tf.constant(images)})
        return {name: results[name].numpy() for name in outputs}
