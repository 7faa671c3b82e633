"""TensorFlow Serving's names and model status, for both of its protocols (gRPC ModelService and REST GET
/v1/models/NAME): one mapping from the data plane's version states, written as enums on gRPC and as their
names on REST. Neither protocol layer owns this module."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnserve.server.errors import InvalidInput
from bnserve.server.models import READY, UNAVAILABLE, UNLOADING, VersionState

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
"""The tf.Example feature that carries one image: a float_list of H*W*C raw values, row-major (NHWC)."""


def examples_to_images(
    examples: list[dict[str, tuple[str, list]]], shape: tuple[int, ...], field: str
) -> np.ndarray:
    """Examples (feature name -> (kind, values), kind one of float_list, int64_list, bytes_list) to the
    float32 batch [N, H, W, C]; InvalidInput names the example and what was expected."""
    if not examples:
        raise InvalidInput(f"{field}: no examples; expected at least one")
    size = int(np.prod(shape))
    rows = []
    for position, features in enumerate(examples):
        where = f"{field}[{position}]"
        if IMAGE_FEATURE not in features:
            raise InvalidInput(
                f"{where}: no feature {IMAGE_FEATURE!r} (found {', '.join(sorted(features)) or 'none'}); "
                f"expected a float_list of {size} raw values ({'x'.join(map(str, shape))}, channels last)"
            )
        kind, values = features[IMAGE_FEATURE]
        if kind == "bytes_list":
            raise InvalidInput(
                f"{where}.{IMAGE_FEATURE}: a bytes_list; encoded images are not accepted yet, send a "
                f"float_list of {size} raw values"
            )
        if len(values) != size:
            raise InvalidInput(
                f"{where}.{IMAGE_FEATURE}: {len(values)} values, expected {size} "
                f"({'x'.join(map(str, shape))}, channels last)"
            )
        rows.append(np.asarray(values, np.float32))
    return np.stack(rows).reshape(len(rows), *shape)


def ranked_classes(
    probabilities: np.ndarray, labels: tuple[str, ...]
) -> list[list[tuple[str, float]]]:
    """Every class of each row with its probability, highest first (ties: lower index first)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    return [
        [(labels[k] if k < len(labels) else str(k), float(row[k])) for k in indices]
        for row, indices in zip(probabilities, order)
    ]
