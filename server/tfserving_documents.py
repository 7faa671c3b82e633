"""TensorFlow Serving's names and model status, for both of its protocols (gRPC ModelService and REST GET
/v1/models/NAME): one mapping from the data plane's version states, written as enums on gRPC and as their
names on REST. Neither protocol layer owns this module."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnserve.core.images import IMAGE_BYTES_INPUT
from bnserve.core.repository import TensorSpec
from bnserve.server.errors import InvalidInput
from bnserve.server.models import READY, UNAVAILABLE, UNLOADING, VersionState
from bnserve.server.tensors import object_array

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SERVICE_NAMES = (PREDICTION_SERVICE, MODEL_SERVICE)
SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


class TfVersionStatus(NamedTuple):
    """One ModelVersionStatus: ``state`` and ``error_code`` are the names of TensorFlow Serving's enums
    (ModelVersionStatus.State, tensorflow.error.Code)."""

    version: int
    state: str
    error_code: str
    error_message: str


TF_STATES = {READY: "AVAILABLE", UNLOADING: "UNLOADING"}
"""Every other state (refused, unloaded, not chosen by the version policy) is END, as TensorFlow Serving
reports a version that does not serve."""


def version_statuses(states: list[VersionState]) -> list[TfVersionStatus]:
    return [
        TfVersionStatus(
            s.version,
            TF_STATES.get(s.state, "END"),
            "UNKNOWN" if s.state == UNAVAILABLE else "OK",
            s.reason,
        )
        for s in states
    ]


# -- Classify: tf.Example inputs, classes with labels and scores (both protocols) ----------------------------

CLASSIFY_METHOD = "tensorflow/serving/classify"
CLASSIFY_SIGNATURE = "classify"
CLASSIFY_SIGNATURES = ("", SIGNATURE_NAME, CLASSIFY_SIGNATURE)
"""Classify answers on the default signature name too, as TensorFlow Serving does for a classifier."""
IMAGE_FEATURE = "images"
"""The tf.Example feature that carries one image as a float_list of H*W*C raw values, row-major (NHWC)."""
ENCODED_FEATURE = IMAGE_BYTES_INPUT
"""The tf.Example feature that carries one image as a bytes_list of one PNG or JPEG file."""


def examples_input(
    examples: list[dict[str, tuple[str, list]]], spec: TensorSpec, field: str
) -> tuple[str, str, np.ndarray]:
    """Examples (feature name -> (kind, values), kind one of float_list, int64_list, bytes_list) -> the
    request's one input: the float32 batch [N, H, W, C] from IMAGE_FEATURE, or the encoded images [N] from
    ENCODED_FEATURE (every example the same way), as (name, datatype, data); InvalidInput names the example and what was expected."""
    if not examples:
        raise InvalidInput(f"{field}: no examples; expected at least one")
    shape = tuple(spec.shape[1:])
    size = int(np.prod(shape))
    described = (
        f"a float_list of {size} raw values ({'x'.join(map(str, shape))}, channels last) in "
        f"{IMAGE_FEATURE!r}, or one PNG or JPEG in a bytes_list {ENCODED_FEATURE!r}"
    )
    rows, encoded = [], []
    for position, features in enumerate(examples):
        where = f"{field}[{position}]"
        present = [name for name in (IMAGE_FEATURE, ENCODED_FEATURE) if name in features]
        if not present:
            raise InvalidInput(
                f"{where}: no feature {IMAGE_FEATURE!r} or {ENCODED_FEATURE!r} (found "
                f"{', '.join(sorted(features)) or 'none'}); expected {described}"
            )
        if len(present) == 2:
            raise InvalidInput(
                f"{where}: both {IMAGE_FEATURE!r} and {ENCODED_FEATURE!r}; send one image one way"
            )
        name = present[0]
        if position > 0 and (name == ENCODED_FEATURE) != bool(encoded):
            raise InvalidInput(
                f"{where}.{name}: the examples before it used the other feature; send every example's "
                "image the same way"
            )
        kind, values = features[name]
        if name == ENCODED_FEATURE:
            if kind != "bytes_list" or len(values) != 1:
                raise InvalidInput(
                    f"{where}.{name}: a {kind} of {len(values)} values; expected a bytes_list of one "
                    "PNG or JPEG file"
                )
            encoded.append(values[0])
            continue
        if kind == "bytes_list":
            raise InvalidInput(
                f"{where}.{IMAGE_FEATURE}: a bytes_list; send encoded images in the feature "
                f"{ENCODED_FEATURE!r}, or a float_list of {size} raw values here"
            )
        if len(values) != size:
            raise InvalidInput(
                f"{where}.{IMAGE_FEATURE}: {len(values)} values, expected {size} "
                f"({'x'.join(map(str, shape))}, channels last)"
            )
        rows.append(np.asarray(values, np.float32))
    if encoded:
        return ENCODED_FEATURE, "BYTES", object_array(encoded, [len(encoded)], field)
    return spec.name, spec.datatype, np.stack(rows).reshape(len(rows), *shape)


def ranked_classes(
    probabilities: np.ndarray, labels: tuple[str, ...]
) -> list[list[tuple[str, float]]]:
    """Every class of each row with its probability, highest first (ties: lower index first)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    return [
        [(labels[k] if k < len(labels) else str(k), float(row[k])) for k in indices]
        for row, indices in zip(probabilities, order)
    ]
