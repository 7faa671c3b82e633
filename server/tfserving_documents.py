"""TensorFlow Serving's names and model status, for both of its protocols (gRPC ModelService and REST GET
/v1/models/NAME): one mapping from the data plane's version states, written as enums on gRPC and as their
names on REST. Neither protocol layer owns this module."""

from __future__ import annotations

from typing import NamedTuple

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
