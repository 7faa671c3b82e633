"""The data plane shared by every protocol: domain requests in, domain responses out."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

import bnserve
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
    def __init__(self, registry: ModelRegistry, executor: Executor):
        self.registry = registry
        self.executor = executor
        self.max_batch_size = registry.settings.max_batch_size

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
        started = time.perf_counter_ns()
        model = self.registry.get(request.model_name, request.model_version)
        try:
            images = validated_images(model, request, self.max_batch_size)
            outputs = list(request.outputs) or model.output_names
            input_done = time.perf_counter_ns()
            results = await asyncio.get_running_loop().run_in_executor(self.executor, model.backend.run, images, outputs)
            infer_done = time.perf_counter_ns()
            response = InferenceResponse(
                model.name, str(model.version), request.id,
                tuple(InferOutput(name, "FP32", np.ascontiguousarray(results[name], np.float32)) for name in outputs))
            done = time.perf_counter_ns()
        except Exception:
            model.statistics.record_request(False, time.perf_counter_ns() - started)
            raise
        model.statistics.record_execution(len(images), input_done - started, infer_done - input_done, done - infer_done)
        model.statistics.record_request(True, done - started)
        return response
