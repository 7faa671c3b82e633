"""The one builder of KServe v2 ModelInfer requests every test uses (tritonclient's wire-compatible messages,
raw FP32 contents), and the reader of their logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tritonclient.grpc import service_pb2 as v2


def v2_request(
    images: np.ndarray, model: str = "m", version: str = "", request_id: str = "", outputs=()
) -> v2.ModelInferRequest:
    # Imported here: tritonclient's v2 messages clash with the project's own in one process (DESIGN.md), and
    # the HTTP builders below are used where the project's are loaded (bench/http_run.py).
    from tritonclient.grpc import service_pb2 as v2

    images = np.ascontiguousarray(images, np.float32)
    return v2.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        raw_input_contents=[images.tobytes()],
        inputs=[
            v2.ModelInferRequest.InferInputTensor(
                name="images", datatype="FP32", shape=images.shape
            )
        ],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
    )


def random_images(batch: int, seed: int | None = None) -> np.ndarray:
    """Digits-shaped images with values in the data set's range 0..16 (seed: the batch size by default)."""
    return (
        np.random.default_rng(batch if seed is None else seed)
        .uniform(0, 16, (batch, 8, 8, 1))
        .astype(np.float32)
    )


def v2_logits(response) -> np.ndarray:
    position = [o.name for o in response.outputs].index("logits")
    return np.frombuffer(response.raw_output_contents[position], np.float32).reshape(
        response.outputs[position].shape
    )


# -- HTTP: KServe v2 REST and TensorFlow Serving REST bodies ------------------------------------------------


def v2_json_body(
    images: np.ndarray, outputs=(), binary_outputs: bool = False, request_id: str = ""
) -> dict:
    """A KServe v2 REST infer body with the images as JSON data (flat, row-major)."""
    images = np.ascontiguousarray(images, np.float32)
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(images.shape),
                "data": images.reshape(-1).tolist(),
            }
        ]
    }
    if request_id:
        body["id"] = request_id
    if outputs:
        body["outputs"] = [
            {"name": name, "parameters": {"binary_data": binary_outputs}} for name in outputs
        ]
    elif binary_outputs:
        body["parameters"] = {"binary_data_output": True}
    return body


def v2_binary_body(images: np.ndarray, binary_outputs: bool = True) -> tuple[bytes, dict]:
    """The binary tensor extension: JSON header, then the raw FP32 bytes; returns (body, headers)."""
    import json

    images = np.ascontiguousarray(images, np.float32)
    raw = images.tobytes()
    header = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(images.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": binary_outputs},
    }
    text = json.dumps(header).encode()
    return text + raw, {
        "Inference-Header-Content-Length": str(len(text)),
        "Content-Type": "application/octet-stream",
    }


def v2_http_outputs(body: bytes, headers) -> dict[str, np.ndarray]:
    """The outputs of a v2 REST infer response, JSON or binary, as float32 arrays by name."""
    import json

    length = headers.get("Inference-Header-Content-Length")
    document = json.loads(body[: int(length)] if length else body)
    arrays, offset = {}, int(length or 0)
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get(
            "binary_data_size"
        )  # some servers write "parameters": null
        if size is None:
            arrays[output["name"]] = np.array(output["data"], np.float32).reshape(output["shape"])
        else:
            arrays[output["name"]] = np.frombuffer(
                body[offset : offset + size], np.float32
            ).reshape(output["shape"])
            offset += size
    return arrays


def tf_rest_body(images: np.ndarray, columnar: bool = False, named: bool = True) -> dict:
    """A TensorFlow Serving REST :predict body, row ("instances") or columnar ("inputs") format."""
    values = np.asarray(images, np.float32).tolist()
    if columnar:
        return {"inputs": {"images": values} if named else values}
    return {"instances": [{"images": row} for row in values] if named else values}
