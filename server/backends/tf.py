"""TensorFlow SavedModel backend (imports TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bnserve.repository import INPUT_NAME, SAVED_MODEL, SIGNATURE
from server.errors import StartupError


def tensorflow_gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


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

    def run(self, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        with tf.device(self._device_name):
            results = self._signature(**{INPUT_NAME: tf.constant(images)})
        return {name: results[name].numpy() for name in outputs}
