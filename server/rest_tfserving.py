"""TensorFlow Serving's REST API: model status, metadata and ``:predict`` in the row and columnar formats.

Shapes follow TensorFlow Serving's documentation (https://www.tensorflow.org/tfx/serving/api_rest):

- row format, ``{"instances": [row, ...]}``: a row is the input's value for one sample, or
  ``{"images": value}``; the answer is ``{"predictions": [...]}``, one entry per row, each an object
  ``{output: value}`` (or the bare value when the model has a single output);
- columnar format, ``{"inputs": value}`` or ``{"inputs": {"images": value}}`` with the batch dimension
  inside; the answer is ``{"outputs": {output: value}}`` (or the bare value for a single output).
"""

from __future__ import annotations

import json

import numpy as np

from bnserve.core.images import IMAGE_BYTES_INPUT
from bnserve.core.repository import TensorSpec
from bnserve.server.dataplane import InferenceRequest, InferenceResponse, InferInput
from bnserve.server.errors import InvalidInput
from bnserve.server.json_codec import expect, json_document, may_hold_booleans, parse_json
from bnserve.server.models import ServedVersion
from bnserve.server.tensors import V2_TO_NUMPY, array_from_json, bytes_from_json, json_bytes
from bnserve.server.tfserving_documents import (
    CLASSIFY_METHOD,
    CLASSIFY_SIGNATURE,
    CLASSIFY_SIGNATURES,
    PREDICT_METHOD,
    SIGNATURE_NAME,
    TfVersionStatus,
    examples_input,
)


def check_signature(document: dict) -> None:
    name = expect(document.get("signature_name", SIGNATURE_NAME), str, "signature_name", "a string")
    if name not in ("", SIGNATURE_NAME):
        raise InvalidInput(
            f"signature_name: unknown signature {name!r}; expected {SIGNATURE_NAME!r}"
        )


def label_refused(label: str) -> InvalidInput:
    return InvalidInput(
        f"labels/{label}: version labels are not supported; use /versions/N or no version"
    )


def parse_predict(
    body: bytes,
    model_name: str,
    input_spec: TensorSpec,
    model_version: str,
    timeout_s: float | None = None,
) -> tuple[InferenceRequest, bool]:
    """A ``:predict`` body -> the domain request, and whether it used the row format (``input_spec``: the
    model's input, so that this runs in a decoding process without the served version)."""
    document = expect(parse_json(body), dict, "body", 'a JSON object with "instances" or "inputs"')
    check_signature(document)
    booleans_possible = may_hold_booleans(body)
    if ("instances" in document) == ("inputs" in document):
        raise InvalidInput(
            'body: expected exactly one of "instances" (row format) or "inputs" (columnar format)'
        )
    input_name = input_spec.name
    names = (input_name, IMAGE_BYTES_INPUT)
    row_format = "instances" in document
    if row_format:
        instances = expect(
            document["instances"], list, "instances", "a list with one entry per sample"
        )
        if not instances:
            raise InvalidInput("instances: empty; expected at least one instance")
        if all(isinstance(row, dict) and set(row) == {"b64"} for row in instances):
            columns = {IMAGE_BYTES_INPUT: instances}  # bare {"b64": ...} rows: encoded images
        elif all(isinstance(row, dict) for row in instances):
            keys = sorted(instances[0])
            for position, row in enumerate(instances):
                if sorted(row) != keys or not set(row) <= set(names):
                    raise InvalidInput(
                        f"instances[{position}]: named inputs {sorted(row)}; expected "
                        f"[{input_name!r}] or [{IMAGE_BYTES_INPUT!r}] in every instance"
                    )
            columns = {key: [row[key] for row in instances] for key in keys}
        elif any(isinstance(row, dict) for row in instances):
            raise InvalidInput(
                "instances: mixes named (objects) and bare rows; expected one form for all"
            )
        else:
            columns = {input_name: instances}
        where = "instances"
    else:
        inputs = document["inputs"]
        if isinstance(inputs, dict):
            if not inputs or not set(inputs) <= set(names):
                raise InvalidInput(
                    f"inputs: named inputs {sorted(inputs)}; expected [{input_name!r}] or "
                    f"[{IMAGE_BYTES_INPUT!r}]"
                )
            columns = dict(inputs)
        else:
            columns = {input_name: inputs}
        where = "inputs"
    tensors = tuple(
        InferInput(
            name,
            input_spec.datatype,
            json_array(values, V2_TO_NUMPY[input_spec.datatype], where, booleans_possible),
        )
        if name == input_name
        else InferInput(name, "BYTES", bytes_from_json(values, None, where))
        for name, values in sorted(columns.items(), key=lambda item: names.index(item[0]))
    )
    request = InferenceRequest(
        model_name,
        model_version,
        "",
        tensors,
        (),
        timeout_s,
    )
    return request, row_format


def parse_classify(
    body: bytes,
    model_name: str,
    input_spec: TensorSpec,
    model_version: str,
    timeout_s: float | None = None,
) -> InferenceRequest:
    """A ``:classify`` body ({"examples": [{feature: values}], optional "context"}) -> the domain request for
    the probabilities of the images in the examples' "images" feature."""
    document = expect(parse_json(body), dict, "body", 'a JSON object with "examples"')
    name = expect(document.get("signature_name", ""), str, "signature_name", "a string")
    if name not in CLASSIFY_SIGNATURES:
        raise InvalidInput(
            f"signature_name: unknown signature {name!r}; expected {CLASSIFY_SIGNATURE!r} or "
            f"{SIGNATURE_NAME!r}"
        )
    examples = expect(document.get("examples"), list, "examples", "a list of examples (objects)")
    context = expect(document.get("context", {}), dict, "context", "an object of features")
    features = []
    for position, example in enumerate(examples):
        expect(example, dict, f"examples[{position}]", "an object of features")
        merged = {**context, **example}
        features.append(
            {
                key: json_feature(value, f"examples[{position}].{key}")
                for key, value in merged.items()
            }
        )
    return InferenceRequest(
        model_name,
        model_version,
        "",
        (InferInput(*examples_input(features, input_spec, "examples")),),
        ("probabilities",),
        timeout_s,
    )


def json_feature(value, field: str) -> tuple[str, list]:
    """One REST feature value -> (kind, values): numbers (nested lists are flattened) are a float_list,
    strings and {"b64": ...} a bytes_list of their bytes."""
    if isinstance(value, (dict, str)) or (
        isinstance(value, list) and value and isinstance(value[0], (dict, str))
    ):
        items = value if isinstance(value, list) else [value]
        return "bytes_list", [json_bytes(item, field) for item in items]
    try:
        values = np.asarray(value, np.float32).reshape(-1)
    except (TypeError, ValueError):
        return "unreadable", []
    return "float_list", values


def encode_classify(ranked: list[list[tuple[str, float]]]) -> dict:
    """TensorFlow Serving's REST classify result: per example, [label, score] pairs."""
    return {"result": [[[label, score] for label, score in row] for row in ranked]}


def json_array(values, dtype: np.dtype, field: str, booleans_possible: bool = True) -> np.ndarray:
    """Nested JSON lists -> an array of their own shape (the shape is the nesting, as TF Serving reads it)."""
    expect(values, list, field, "nested lists of numbers")
    return array_from_json(values, dtype, None, field, booleans_possible)


def encode_predict(response: InferenceResponse, row_format: bool) -> dict:
    outputs = {o.name: o.data for o in response.outputs}
    if row_format:
        rows = len(next(iter(outputs.values())))
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        columns = {name: data.tolist() for name, data in outputs.items()}
        return {
            "predictions": [{name: columns[name][row] for name in outputs} for row in range(rows)]
        }
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {name: data.tolist() for name, data in outputs.items()}}


def predict_body(response: InferenceResponse, row_format: bool) -> bytes:
    """encode_predict's document as JSON. orjson writes it (a digits answer in ~1 us against the standard
    library's ~13) when every output is floating point and finite (json_codec.json_document); otherwise the
    standard library does: it keeps the NaN/Infinity tokens (orjson writes null) and its own handling of any
    other kind of output."""
    document = encode_predict(response, row_format)
    if all(o.data.dtype.kind == "f" for o in response.outputs):
        return json_document(document)
    return json.dumps(document, separators=(",", ":")).encode()


def status_json(statuses: list[TfVersionStatus]) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(s.version),
                "state": s.state,
                "status": {"error_code": s.error_code, "error_message": s.error_message},
            }
            for s in statuses
        ]
    }


def tensor_info_json(spec) -> dict:
    return {
        "dtype": "DT_STRING" if spec.datatype == "BYTES" else "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": f"{spec.name}:0",
    }


def metadata_json(model: ServedVersion) -> dict:
    """GET .../metadata, as TensorFlow Serving's REST API writes a SignatureDefMap (64-bit ints as strings)."""
    signature = {
        "inputs": {spec.name: tensor_info_json(spec) for spec in model.inputs},
        "outputs": {o.name: tensor_info_json(o) for o in model.outputs},
        "method_name": PREDICT_METHOD,
    }
    classes = str(len(model.manifest.class_labels))
    classify = {
        "inputs": {"inputs": string_info("tf_example:0", ["-1"])},
        "outputs": {
            "classes": string_info("classes:0", ["-1", classes]),
            "scores": string_info("scores:0", ["-1", classes]) | {"dtype": "DT_FLOAT"},
        },
        "method_name": CLASSIFY_METHOD,
    }
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {
            "signature_def": {
                "signature_def": {SIGNATURE_NAME: signature, CLASSIFY_SIGNATURE: classify}
            }
        },
    }


def string_info(name: str, dims: list[str]) -> dict:
    return {
        "dtype": "DT_STRING",
        "tensor_shape": {"dim": [{"size": d, "name": ""} for d in dims], "unknown_rank": False},
        "name": name,
    }
