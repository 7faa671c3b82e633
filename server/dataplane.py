"""The data plane shared by every protocol: domain requests in, domain responses out."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import NamedTuple

import numpy as np

import bnserve
from bnserve.core.images import IMAGE_BYTES_INPUT, ImageRefused, declared_pixels, decode_images
from bnserve.core.repository import TensorSpec
from bnserve.server import metrics
from bnserve.server.batching import ComputeTimes, DynamicBatcher
from bnserve.server.capture import Capture
from bnserve.server.errors import (
    InvalidInput,
    ModelNotFound,
    ResponseTooLarge,
    ServingError,
    Unavailable,
)
from bnserve.server.execution import ModelThreads
from bnserve.server.json_offload import separator_limit
from bnserve.server.models import READY, UNLOADING, ModelRegistry, ServedVersion, VersionState
from bnserve.server.monitor import DriftStatus, TrafficSampler
from bnserve.server.tfserving_documents import TfVersionStatus, version_statuses
from bnserve.server.tracing import CURRENT_TRACE, RequestTrace, Tracing

SERVER_NAME = "bnserve"
IMAGE_THREADS = 2
"""Threads decoding image_bytes: Pillow's decoders run outside the GIL, so two keep 2 cores busy."""
INLINE_IMAGE_BYTES = 4096
"""A request whose images total fewer bytes is decoded on the event loop: such an image's ~0.1 ms is
Pillow's Python layer, which holds the GIL in a thread too, and the hand-over to a thread and back cost
more: with every image in a thread, served 8x8 JPEGs at c=32 reached 0.34 of the tensor request rate
and conv6's 32x32 JPEGs 0.58; decoded inline, 0.45 and 0.78 (bench/image_bytes.py, one run each).
Larger images go to the image threads, where Pillow's C decoders release the GIL."""
INLINE_IMAGE_PIXELS = 256 * 256
"""...and whose headers each declare at most this many pixels: a few KiB of deflate can declare and
really hold megapixels (a zlib stream expands up to ~1000x), which would stop the loop for milliseconds."""
EXTENSIONS = ("classification", "model_configuration", "statistics", "model_repository")


# The request path's own types are NamedTuples: immutable like frozen dataclasses, and built in a quarter of
# the time (0.35 vs 1.3 us for InferenceRequest), which is paid several times per request.
class InferInput(NamedTuple):
    name: str
    datatype: str
    """KServe v2 datatype name, e.g. FP32."""
    data: np.ndarray


class InferenceRequest(NamedTuple):
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: tuple[InferInput, ...] = ()
    outputs: tuple[str, ...] = ()
    """Requested outputs; empty means all."""
    timeout_s: float | None = None
    """Time left before the client's deadline; an expired request is dropped before compute."""
    class_counts: tuple[tuple[str, int], ...] = ()
    """(output, N) for outputs asked for with Triton's classification extension: top-N strings instead."""


class ModelMetadata(NamedTuple):
    """What v2 model metadata answers on both protocols."""

    name: str
    versions: tuple[str, ...]
    """Every served version."""
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class InferOutput(NamedTuple):
    name: str
    datatype: str
    data: np.ndarray


class InferenceResponse(NamedTuple):
    model_name: str
    model_version: str
    id: str
    outputs: tuple[InferOutput, ...]


def validated_images(
    model: ServedVersion, request: InferenceRequest, max_batch_size: int
) -> np.ndarray:
    """The single input: float32 [N,H,W,C], or for ``image_bytes`` its encoded images as an object array
    [N] (decoded later, off the event loop); InvalidInput names the field and what was expected."""
    spec = model.input
    if len(request.inputs) == 1 and request.inputs[0].name == spec.name:
        # The usual request: what the checks below would accept, without building the lists they name.
        data = validated_tensor(spec, request.inputs[0], max_batch_size)
        if request.outputs:
            validate_outputs(model, request)
        return data
    accepted = [item.name for item in model.inputs]
    expected = " or ".join(repr(name) for name in accepted)
    if not request.inputs:
        raise InvalidInput(f"inputs: the request has no input; expected one named {expected}")
    names = [tensor.name for tensor in request.inputs]
    if spec.name in names and IMAGE_BYTES_INPUT in names and IMAGE_BYTES_INPUT in accepted:
        raise InvalidInput(
            f"inputs: both {spec.name!r} and {IMAGE_BYTES_INPUT!r}; send the tensor or the encoded "
            "images, not both"
        )
    for position, name in enumerate(names):
        if name not in accepted:
            reason = (
                f"; this version takes no encoded images ({model.name} version {model.version} was "
                "exported without an input range)"
                if name == IMAGE_BYTES_INPUT
                else ""
            )
            raise InvalidInput(
                f"inputs[{position}].name: unknown input {name!r}; expected {expected}{reason}"
            )
        if position > 0:
            raise InvalidInput(
                f"inputs[{position}].name: duplicate input {name!r}; expected it once"
            )
    tensor = request.inputs[0]
    if tensor.name == IMAGE_BYTES_INPUT:
        data = validated_encoded_images(tensor, max_batch_size)
    else:
        data = validated_tensor(spec, tensor, max_batch_size)
    validate_outputs(model, request)
    return data


def validate_outputs(model: ServedVersion, request: InferenceRequest) -> None:
    """Requested outputs exist and are named once; a classification count is at least 1."""
    for position, name in enumerate(request.outputs):
        if name not in model.output_names:
            raise InvalidInput(
                f"outputs[{position}].name: unknown output {name!r}; expected one of "
                f"{', '.join(model.output_names)}"
            )
        if name in request.outputs[:position]:
            raise InvalidInput(
                f"outputs[{position}].name: duplicate output {name!r}; request each output once"
            )
    for name, count in request.class_counts:
        position = request.outputs.index(name)
        if count < 1:
            raise InvalidInput(
                f"outputs[{position}].parameters.classification: {count}; expected a class count >= 1"
            )


def validated_tensor(spec: TensorSpec, tensor: InferInput, max_batch_size: int) -> np.ndarray:
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"inputs[0].datatype: got {tensor.datatype}, expected {spec.datatype}")
    shape = list(tensor.data.shape)
    expected = list(spec.shape)
    if len(shape) != len(expected):
        raise InvalidInput(
            f"inputs[0].shape: got {shape} (rank {len(shape)}), expected rank {len(expected)} {expected}"
        )
    if shape[1:] != expected[1:]:
        raise InvalidInput(f"inputs[0].shape: got {shape}, expected {expected}")
    if not 1 <= shape[0] <= max_batch_size:
        raise InvalidInput(
            f"inputs[0].shape: batch size {shape[0]}, expected 1 to max_batch_size {max_batch_size}"
        )
    return tensor.data


def validated_encoded_images(tensor: InferInput, max_batch_size: int) -> np.ndarray:
    """``image_bytes``: BYTES of shape [N] (or [N, 1], as Triton clients often send strings)."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(
            f"inputs[0].datatype: got {tensor.datatype}, expected BYTES (PNG or JPEG files) for "
            f"{IMAGE_BYTES_INPUT!r}"
        )
    shape = list(tensor.data.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInput(
            f"inputs[0].shape: got {shape}, expected [N] (one encoded image per element) for "
            f"{IMAGE_BYTES_INPUT!r}"
        )
    if not 1 <= shape[0] <= max_batch_size:
        raise InvalidInput(
            f"inputs[0].shape: batch size {shape[0]}, expected 1 to max_batch_size {max_batch_size}"
        )
    return tensor.data.reshape(-1)


def top_classes(values: np.ndarray, count: int, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification extension: for each row of ``values`` [N, K], its min(count, K) largest
    entries, largest first (ties: lower index first), each as the bytes "<value>:<index>:<label>", with the
    value printed as C's %f (Triton's std::to_string), e.g. b"0.981234:3:3" (":<label>" only where the
    manifest names one). Returns BYTES [N, min(count, K)] as an object array of bytes."""
    kept = min(count, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :kept]
    rows = [
        [
            f"{float(row[index]):f}:{index}".encode()
            + (f":{labels[index]}".encode() if index < len(labels) else b"")
            for index in indices
        ]
        for row, indices in zip(values, order)
    ]
    return np.array(rows, dtype=object).reshape(len(values), kept)


def check_finite(images: np.ndarray) -> None:
    """InvalidInput when the input holds a NaN or an infinity (--reject-non-finite)."""
    finite = np.isfinite(images)
    if not finite.all():
        count = int(images.size - np.count_nonzero(finite))
        raise InvalidInput(
            f"inputs[0]: {count} of {images.size} values are NaN or infinite; expected finite numbers "
            "(the server runs with --reject-non-finite)"
        )


RESPONSE_OVERHEAD_BYTES = 256
"""Room for a response's names, shapes and framing beside its tensor bytes (a few hundred bytes here)."""


def check_response_size(
    model: ServedVersion, rows: int, outputs: list[str], max_message_bytes: int
) -> None:
    """Refuse, before compute, a request whose answer could not be sent: sum over the requested outputs of
    rows x prod(output dims) x 4 bytes, plus RESPONSE_OVERHEAD_BYTES."""
    row_bytes = model.output_row_bytes
    per_row = (
        model.all_outputs_row_bytes
        if outputs is model.output_names
        else sum(row_bytes[name] for name in outputs)
    )
    size = RESPONSE_OVERHEAD_BYTES + rows * per_row
    if size > max_message_bytes:
        raise ResponseTooLarge(
            f"outputs: the response would take {size} bytes, more than --max-message-bytes "
            f"{max_message_bytes}; request fewer rows or outputs"
        )


class Admission:
    """DataPlane.admission's context manager. A class rather than @contextmanager: it runs once per request,
    and a generator-based one cost ~2 us there against ~0.6 us (measured on this 2-core machine)."""

    __slots__ = ("dataplane", "model_name", "model_version", "protocol")

    def __init__(self, dataplane: "DataPlane", model_name: str, model_version: str, protocol: str):
        self.dataplane = dataplane
        self.model_name = model_name
        self.model_version = model_version
        self.protocol = protocol

    def __enter__(self) -> None:
        try:
            self.dataplane.check_accepting()
        except ServingError as exc:  # __exit__ is not called when __enter__ raises
            self.dataplane.record_rejection(self.model_name, self.model_version, exc, self.protocol)
            raise

    def __exit__(self, kind, exc, traceback) -> bool:
        if isinstance(exc, ServingError):
            self.dataplane.record_rejection(self.model_name, self.model_version, exc, self.protocol)
        return False


class DataPlane:
    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self._batchers: dict[tuple[str, int], tuple[ServedVersion, DynamicBatcher]] = {}
        self.accepting = True
        """False once the drain's --drain-seconds passed: new requests get UNAVAILABLE."""
        self._draining = False
        """True from SIGTERM on: every readiness answer is false (endpoints are removed first)."""
        self.loading = True
        """True until the repository's first load finished: live, never ready."""
        self.in_flight = 0
        self._image_threads: ThreadPoolExecutor | None = None
        endpoint = registry.settings.otlp_endpoint
        self.tracing = Tracing(endpoint, registry.settings.trace_sample_rate) if endpoint else None
        """OpenTelemetry spans of inference requests (--otlp-endpoint), or None: tracing off."""
        self._metric_children: dict[tuple[str, int, str], tuple] = {}
        settings = registry.settings
        capture = (
            Capture(settings.capture_dir, settings.capture_max_bytes)
            if settings.capture_dir
            else None
        )
        self.sampler = TrafficSampler(
            settings.monitor_sample_rate,
            settings.monitor_window,
            capture,
            settings.capture_rate,
            settings.monitor_max_share,
        )

    def _executor(self, model: ServedVersion, instances: int):
        """Where the version's batches run: model threads, or with the experimental --model-processes
        (ONNX Runtime on the CPU) processes of their own."""
        if (
            self.registry.settings.model_processes
            and model.backend.platform == "onnxruntime_onnx"
            and model.backend.device == "cpu"
        ):
            from bnserve.server.model_process import ModelProcesses

            return ModelProcesses(
                instances, model.directory / "model.onnx", model.backend.intra_op_threads
            )
        return ModelThreads(instances)

    def batcher(self, model: ServedVersion) -> DynamicBatcher:
        """The version's own batcher and model threads, made on first use on the event loop thread (a
        reloaded version gets new ones), with the model's batching options."""
        key = (model.name, model.version)
        entry = self._batchers.get(key)
        if entry is None or entry[0] is not model:
            options = self.registry.settings.batching_options(model.name)
            entry = (
                model,
                DynamicBatcher(
                    model.backend.run,
                    model.output_names,
                    self._executor(model, options.instances),
                    options,
                    model.statistics,
                    labels=(model.name, str(model.version)),
                    compute_times=ComputeTimes(model.calibration),
                ),
            )
            self._batchers[key] = entry
            version = str(model.version)
            # Read when scraped: the request path pays nothing for either gauge but an integer.
            metrics.QUEUE_DEPTH.labels(model.name, version).set_function(
                lambda batcher=entry[1]: batcher.queued
            )
            metrics.INFLIGHT_REQUESTS.labels(model.name, version).set_function(
                lambda model=model: model.in_flight
            )
        return entry[1]

    async def stop(self) -> None:
        """Stop every batcher and its threads (after drain), then the monitor (writing the last capture shards)."""
        for _, batcher in self._batchers.values():
            await batcher.stop()
        self._batchers.clear()
        if self._image_threads is not None:
            self._image_threads.shutdown(wait=False, cancel_futures=True)
            self._image_threads = None
        self.sampler.hand_over()
        await asyncio.get_running_loop().run_in_executor(None, self.sampler.stop)
        if self.tracing is not None:  # export what is buffered (a dead collector: 2 s at most)
            await asyncio.get_running_loop().run_in_executor(None, self.tracing.shutdown)

    async def release_unserved(self, grace_seconds: float) -> None:
        """Drain and drop the batchers of versions no longer served: their in-flight requests finish."""
        served = {(m.name, m.version): m for m in self.registry.served()}
        stale = [key for key, (model, _) in self._batchers.items() if served.get(key) is not model]
        for key in stale:
            _, batcher = self._batchers.pop(key)
            await batcher.drain(grace_seconds)
            self.sampler.forget(*key)
            if key not in self._batchers:  # not reloaded meanwhile
                for gauge in (metrics.QUEUE_DEPTH, metrics.INFLIGHT_REQUESTS):
                    try:
                        gauge.remove(key[0], str(key[1]))
                    except KeyError:
                        pass

    async def drain(self, grace_seconds: float) -> None:
        """Stop accepting requests and wait (at most ``grace_seconds``) for the ones inside to finish."""
        self.begin_drain()
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)

    @staticmethod
    def server_metadata() -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, bnserve.__version__, EXTENSIONS

    # -- readiness: the one answer of gRPC v2, HTTP v2, grpc.health.v1, TF Serving status and the status page --

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """From now on every readiness answer is false; requests are still served until ``drain``."""
        self._draining = True

    def model_ready(self, name: str, version: str = "") -> bool:
        """Never while loading or draining. With a version: that version is served (loaded,
        golden-checked). Without: the model serves every version its policy asks for
        (ModelRegistry.meets_policy)."""
        if self.draining or self.loading:
            return False
        if not version:
            return self.registry.meets_policy(name)
        try:
            self.registry.get(name, version)
        except Exception:
            return False
        return True

    def server_ready(self) -> bool:
        """Never while loading or draining. Else, with --ready-requires all (Triton's strict readiness),
        every model on disk serves every version its policy asks for; with ``any``, at least one model does.
        Entries that are not models, such as a folder with an invalid name, are reported by RepositoryIndex
        but do not hold readiness back."""
        if self.draining or self.loading:
            return False
        meets = [self.registry.meets_policy(name) for name in self.registry.model_names()]
        if self.registry.settings.ready_requires == "any":
            return any(meets)
        return all(meets)

    def model_names(self) -> list[str]:
        return self.registry.model_names()

    def admission(self, model_name: str, model_version: str, protocol: str = "grpc") -> Admission:
        """Around an adapter's decoding of one request (``with dataplane.admission(...):``): refused while
        draining (before a body is read), and a request that fails to decode is counted as a rejection of
        the version it named."""
        return Admission(self, model_name, model_version, protocol)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.registry.get(name, version)
        return ModelMetadata(
            model.name,
            tuple(str(v) for v in self.served_versions(name)),
            model.backend.platform,
            model.inputs,
            tuple(model.outputs),
        )

    def tf_model_status(self, name: str, version: str = "") -> list[TfVersionStatus]:
        """TensorFlow Serving's GetModelStatus: every version's state, or one version's (NOT_FOUND for an
        unknown one)."""
        states = self.states(name)
        if version:
            states = [s for s in states if str(s.version) == version]
            if not states:
                self.model(name, version)  # raises NOT_FOUND, with the reason
        return version_statuses(states)

    @property
    def settings(self):
        return self.registry.settings

    def served(self, name: str | None = None) -> list[ServedVersion]:
        """Every served version, or those of ``name``."""
        return [m for m in self.registry.served() if name is None or m.name == name]

    def served_versions(self, name: str) -> list[int]:
        return self.registry.served_versions(name)

    def while_draining(self, states: list[VersionState]) -> list[VersionState]:
        """Served versions are UNLOADING once the drain began."""
        if not self.draining:
            return states
        return [replace(s, state=UNLOADING) if s.state == READY else s for s in states]

    def index(self, ready_only: bool = False) -> list[VersionState]:
        """RepositoryIndex: every version's state, or only the READY ones."""
        return [
            s
            for s in self.while_draining(self.registry.index())
            if s.state == READY or not ready_only
        ]

    def statistics_of(self, name: str = "", version: str = "") -> list[ServedVersion]:
        """The versions ModelStatistics reports: one version, every served version of a model (NOT_FOUND for an
        unknown one), or every served version when no name is given."""
        if name and version:
            return [self.model(name, version)]
        if name:
            self.model(name)
            return self.served(name)
        return self.served()

    def check_accepting(self) -> None:
        """Unavailable once shutdown began: new requests go to another replica."""
        if not self.accepting:
            raise Unavailable("the server is shutting down; retry on another replica")

    def states(self, name: str) -> list[VersionState]:
        return self.while_draining(self.registry.states(name))

    def model(self, name: str, version: str = "") -> ServedVersion:
        return self.registry.get(name, version)

    def json_separator_limit(self, name: str, version: str = "") -> int | None:
        """The most JSON separators an infer body for this version may hold (json_offload.separator_limit),
        or None when no such version is served (the request's own lookup then names what is wrong)."""
        try:
            model = self.registry.get(name, version)
        except ModelNotFound:
            return None
        options = self.registry.settings.batching_options(model.name)
        return separator_limit(options.max_batch_size, tuple(model.input.shape[1:]))

    def drift(self, name: str, version: str = "") -> DriftStatus:
        """The drift monitor's state of a served version (NOT_FOUND for an unknown one)."""
        return self.sampler.status(self.registry.get(name, version))

    def record_rejection(
        self, model_name: str, model_version: str, error: ServingError, protocol: str = "grpc"
    ) -> None:
        """Count a request refused before it became an InferenceRequest (e.g. bytes that do not fit its shape)."""
        try:
            model = self.registry.get(model_name, model_version)
        except ServingError:
            metrics.REQUESTS.labels("", "", error.code.name, protocol).inc()
            return
        model.statistics.record_request(False, 0)
        self._request_metrics(model, error.code.name, protocol)[0].inc()

    def _request_metrics(self, model: ServedVersion, code: str, protocol: str):
        """The labelled metric children of (version, status code, protocol), looked up once: labels() costs
        more than the increment itself on the request path."""
        key = (model.name, model.version, code, protocol)
        children = self._metric_children.get(key)
        if children is None:
            version = str(model.version)
            children = (
                metrics.REQUESTS.labels(model.name, version, code, protocol),
                metrics.REQUEST_SECONDS.labels(model.name, version, protocol),
            )
            self._metric_children[key] = children
        return children

    async def decoded_images(self, model: ServedVersion, encoded: np.ndarray) -> np.ndarray:
        """The ``image_bytes`` of one request -> float32 [N,H,W,C] by the manifest's mapping: in the image
        threads (Pillow's decoders release the GIL), or under INLINE_IMAGE_BYTES in all on the event loop."""
        settings = self.settings
        arguments = (
            list(encoded),
            tuple(model.input.shape[1:]),
            model.manifest.image_bytes,
            f"inputs[0] ({IMAGE_BYTES_INPUT})",
            settings.max_image_bytes,
            settings.max_image_pixels,
        )
        try:
            if sum(len(item) for item in encoded) < INLINE_IMAGE_BYTES and all(
                (declared_pixels(item) or INLINE_IMAGE_PIXELS + 1) <= INLINE_IMAGE_PIXELS
                for item in encoded
            ):
                return decode_images(*arguments)
            if self._image_threads is None:
                self._image_threads = ThreadPoolExecutor(
                    IMAGE_THREADS, thread_name_prefix="bnserve-image"
                )
            return await asyncio.get_running_loop().run_in_executor(
                self._image_threads, decode_images, *arguments
            )
        except ImageRefused as exc:
            raise InvalidInput(str(exc)) from None

    async def infer(
        self, request: InferenceRequest, protocol: str = "grpc", trace: RequestTrace | None = None
    ) -> InferenceResponse:
        """Validate (before any batching, so a bad request never joins a batch), then run via the batcher.
        ``protocol`` ("grpc" or "http") labels the request metrics only: both mean the same here.
        ``trace``: the request's RequestTrace (with tracing on, else None; by default the task's own)."""
        started = time.perf_counter_ns()
        if self.tracing is not None and trace is None:
            trace = CURRENT_TRACE.get()
        if not self.accepting:
            metrics.REQUESTS.labels("", "", "UNAVAILABLE", protocol).inc()
            self.check_accepting()
        try:
            model = self.registry.get(request.model_name, request.model_version)
        except ServingError as exc:
            metrics.REQUESTS.labels("", "", exc.code.name, protocol).inc()
            raise
        self.in_flight += 1
        model.in_flight += 1
        code = "OK"
        try:
            batcher = self.batcher(model)
            settings = self.registry.settings
            images = validated_images(model, request, batcher.options.max_batch_size)
            if images.dtype.kind == "O":  # image_bytes
                images = await self.decoded_images(model, images)
            if settings.reject_non_finite:
                check_finite(images)
            outputs = list(request.outputs) or model.output_names
            counts = dict(request.class_counts)
            check_response_size(model, len(images), outputs, settings.max_message_bytes)
            if self.sampler.active:
                self.sampler.offer(model, images)
            if trace is None:
                results = await batcher.submit(images, outputs, request.timeout_s)
            else:
                trace.decoded, trace.rows = started, len(images)
                trace.model, trace.version = model.name, str(model.version)
                results = await batcher.submit(images, outputs, request.timeout_s, trace.timing)
                trace.answered = time.perf_counter_ns()
        except (
            BaseException
        ) as exc:  # errors, and cancellation by the client (its deadline passed or it hung up)
            code = (
                exc.code.name
                if isinstance(exc, ServingError)
                else ("CANCELLED" if isinstance(exc, asyncio.CancelledError) else "INTERNAL")
            )
            raise
        finally:
            self.in_flight -= 1
            model.in_flight -= 1
            elapsed = time.perf_counter_ns() - started
            model.statistics.record_request(code == "OK", elapsed)
            requests, seconds = self._request_metrics(model, code, protocol)
            requests.inc()
            seconds.observe(elapsed / 1e9)
        if counts:
            answers = tuple(
                InferOutput(name, "FP32", results[name])
                if name not in counts
                else InferOutput(
                    name,
                    "BYTES",
                    top_classes(results[name], counts[name], model.manifest.class_labels),
                )
                for name in outputs
            )
        else:
            answers = tuple([InferOutput(name, "FP32", results[name]) for name in outputs])
        return InferenceResponse(model.name, str(model.version), request.id, answers)
