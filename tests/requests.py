"""The one builder of KServe v2 ModelInfer requests every test uses (tritonclient's wire-compatible messages,
raw FP32 contents), and the reader of their logits."""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2 as v2


def v2_request(images: np.ndarray, model: str = "m", version: str = "", request_id: str = "",
               outputs=()) -> v2.ModelInferRequest:
    images = np.ascontiguousarray(images, np.float32)
    return v2.ModelInferRequest(
        model_name=model, model_version=version, id=request_id, raw_input_contents=[images.tobytes()],
        inputs=[v2.ModelInferRequest.InferInputTensor(name="images", datatype="FP32", shape=images.shape)],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs])


def random_images(batch: int, seed: int | None = None) -> np.ndarray:
    """Digits-shaped images with values in the data set's range 0..16 (seed: the batch size by default)."""
    return np.random.default_rng(batch if seed is None else seed).uniform(0, 16, (batch, 8, 8, 1)).astype(np.float32)


def v2_logits(response: v2.ModelInferResponse) -> np.ndarray:
    position = [o.name for o in response.outputs].index("logits")
    return np.frombuffer(response.raw_output_contents[position], np.float32).reshape(response.outputs[position].shape)
