"""The data plane shared by every protocol: domain requests in, domain responses out."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

import bnserve
from server.batching import BatchingOptions, DynamicBatcher
from server.errors import InvalidInput
from server.models import READY, ModelRegistry, ServedVersion

SERVER_NAME = "bnserve"
EXTENSIONS = ("model_configuration", "statistics", "model_repository")


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str
    """KServe v2 datatype name, e.g. FP32."""
    data: np.ndarray


@dataclass(frozen=True)
class InferenceRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: tuple[InferInput, ...] = ()
    outputs: tuple[str, ...] = ()
    """Requested outputs; empty means all."""
    timeout_s: float | None = None
    """Time left before the client's deadline; an expired request is dropped before compute."""


@dataclass(frozen=True)
class InferOutput:
    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class InferenceResponse:
    model_name: str
    model_version: str
    id: str
    outputs: tuple[InferOutput, ...]


def validated_images(model: ServedVersion, request: InferenceRequest, max_batch_size: int) -> np.ndarray:
    """The single input as float32 [N,H,W,C], or InvalidInput naming the field and what was expected."""
    spec = model.input
    if not request.inputs:
        raise InvalidInput(f"inputs: the request has no input; expected one named {spec.name!r}")
    names = [tensor.name for tensor in request.inputs]
    for position, name in enumerate(names):
        if name != spec.name:
            raise InvalidInput(f"inputs[{position}].name: unknown input {name!r}; expected {spec.name!r}")
        if position > 0:
            raise InvalidInput(f"inputs[{position}].name: duplicate input {name!r}; expected it once")
    tensor = request.inputs[0]
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"inputs[0].datatype: got {tensor.datatype}, expected {spec.datatype}")
    shape = list(tensor.data.shape)
    expected = list(spec.shape)
    if len(shape) != len(expected):
        raise InvalidInput(f"inputs[0].shape: got {shape} (rank {len(shape)}), expected rank {len(expected)} {expected}")
    if shape[1:] != expected[1:]:
        raise InvalidInput(f"inputs[0].shape: got {shape}, expected {expected}")
    if not 1 <= shape[0] <= max_batch_size:
        raise InvalidInput(f"inputs[0].shape: batch size {shape[0]}, expected 1 to max_batch_size {max_batch_size}")
    for position, name in enumerate(request.outputs):
        if name not in model.output_names:
            raise InvalidInput(f"outputs[{position}].name: unknown output {name!r}; expected one of "
                               f"{', '.join(model.output_names)}")
    return tensor.data


class DataPlane:
    def __init__(self, registry: ModelRegistry, executor: Executor, batching: BatchingOptions):
        self.registry = registry
        self.executor = executor
        self.batching = batching
        self.max_batch_size = batching.max_batch_size
        self._batchers: dict[tuple[str, int], tuple[ServedVersion, DynamicBatcher]] = {}

    def batcher(self, model: ServedVersion) -> DynamicBatcher:
        """The version's own batcher, made on first use on the event loop thread (a reloaded version gets a new one)."""
        key = (model.name, model.version)
        entry = self._batchers.get(key)
        if entry is None or entry[0] is not model:
            entry = (model, DynamicBatcher(model.backend.run, model.output_names, self.executor, self.batching,
                                           model.statistics))
            self._batchers[key] = entry
        return entry[1]

    @staticmethod
    def server_metadata() -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, bnserve.__version__, EXTENSIONS

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.registry.get(name, version)
        except Exception:
            return False
        return True

    def server_ready(self) -> bool:
        """Ready when every model on disk serves at least one version."""
        index = self.registry.index()
        names = {state.name for state in index}
        return all(any(s.name == name and s.state == READY for s in index) for name in names)

    def model(self, name: str, version: str = "") -> ServedVersion:
        return self.registry.get(name, version)

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate (before any batching, so a bad request never joins a batch), then run via the batcher."""
        started = time.perf_counter_ns()
        model = self.registry.get(request.model_name, request.model_version)
        try:
            images = validated_images(model, request, self.max_batch_size)
            outputs = list(request.outputs) or model.output_names
            results = await self.batcher(model).submit(images, outputs, request.timeout_s)
        except BaseException:  # errors, and cancellation by the client (its deadline passed or it hung up)
            model.statistics.record_request(False, time.perf_counter_ns() - started)
            raise
        model.statistics.record_request(True, time.perf_counter_ns() - started)
        return InferenceResponse(model.name, str(model.version), request.id,
                                 tuple(InferOutput(name, "FP32", results[name]) for name in outputs))
