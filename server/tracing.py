"""OpenTelemetry traces of inference requests (``--otlp-endpoint``, the ``otel`` extra).

One span ``bnserve.infer`` per inference request, with four children laid end to end:

    decode   the protocol adapter parsing the request (from its arrival to the data plane)
    queue    validation, image decoding and the wait for a model call
    compute  the model call of the batch this request joined
    encode   the answer's encoding, until the adapter returns it

Attributes: ``bnserve.model``, ``bnserve.version``, ``bnserve.protocol`` (grpc or http),
``bnserve.request_rows`` and ``bnserve.batch_rows`` (the rows of the model call it joined). A W3C
``traceparent`` (gRPC metadata or HTTP header) makes the span a child of the caller's. Health, metadata and
metrics calls get no span. A request is sampled as its caller's ``traceparent`` says, else with probability
``--trace-sample-rate``; an unsampled one costs nothing more than the sampling draw. Spans are exported in batches by the SDK's BatchSpanProcessor over OTLP/gRPC; an
endpoint that cannot be reached logs one warning and serving goes on.

With tracing off (no ``--otlp-endpoint``) no OpenTelemetry module is imported, and the request path
checks one attribute that is None.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import random
import time
from typing import Mapping

from bnserve.core.errors import UserError

log = logging.getLogger("bnserve.server")

PERF_TO_WALL_NS = time.time_ns() - time.perf_counter_ns()
"""Added to a perf_counter_ns() reading gives epoch nanoseconds (spans take wall time)."""


CURRENT_TRACE: contextvars.ContextVar["RequestTrace | None"] = contextvars.ContextVar(
    "bnserve_trace", default=None
)
"""The trace of the request this task handles (set by ``traced``), read by DataPlane.infer."""


def traced(protocol: str):
    """Decorate an adapter's handler ``(self, request)`` (HTTP) or ``(self, request, context)`` (gRPC),
    inside its error mapping: with tracing on, a RequestTrace for the call, seen by DataPlane.infer."""

    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, *rest):
            tracing = self.dataplane.tracing
            if tracing is None:
                return await method(self, request, *rest)
            carrier = (
                grpc_carrier(rest[0])
                if protocol == "grpc"
                else {key.lower(): value for key, value in request.headers.items()}
            )
            trace = tracing.begin(carrier, protocol)
            if trace is None:  # not sampled
                return await method(self, request, *rest)
            token = CURRENT_TRACE.set(trace)
            try:
                answer = await method(self, request, *rest)
            except BaseException as exc:
                trace.finish(exc)
                raise
            finally:
                CURRENT_TRACE.reset(token)
            trace.finish()
            return answer

        return wrapper

    return decorate


def grpc_carrier(context) -> dict[str, str]:
    """gRPC invocation metadata as a propagation carrier (keys are lower case already)."""
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }


def error_name(exc: BaseException | None) -> str:
    """The status a failed request's span records: the gRPC code name, CANCELLED, or the exception."""
    if exc is None:
        return ""
    code = getattr(exc, "code", None)
    if code is not None and hasattr(code, "name"):
        return code.name
    return "CANCELLED" if type(exc).__name__ == "CancelledError" else type(exc).__name__


class RequestTrace:
    """The timestamps of one request (perf_counter_ns), filled in as it passes through; ``finish`` turns
    them into the spans."""

    __slots__ = ("tracing", "carrier", "protocol", "arrived", "decoded", "answered", "timing",
                 "model", "version", "rows", "error")  # fmt: skip

    def __init__(self, tracing: "Tracing", carrier: Mapping[str, str], protocol: str):
        self.tracing = tracing
        self.carrier = carrier
        self.protocol = protocol
        self.arrived = time.perf_counter_ns()
        self.decoded = self.answered = 0
        self.timing: list[int] = []
        """[compute started, compute ended, batch rows], written by the batcher."""
        self.model = self.version = ""
        self.rows = 0
        self.error = ""

    def finish(self, exc: BaseException | None = None) -> None:
        """Emit the spans (at the end of the adapter's handler, the answer encoded or the request failed)."""
        self.tracing.emit(self, time.perf_counter_ns(), error_name(exc) or self.error)


class Tracing:
    def __init__(self, endpoint: str, sample_rate: float = 1.0, exporter=None):
        """``exporter``: a SpanExporter instead of OTLP to ``endpoint`` (embedding, tests)."""
        self.sample_rate = sample_rate
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            raise UserError(
                "--otlp-endpoint: OpenTelemetry is not installed; pip install 'bnserve[otel]'"
            ) from None
        import bnserve

        self._status, self._error_code = Status, StatusCode.ERROR
        self.propagator = TraceContextTextMapPropagator()
        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": "bnserve", "service.version": bnserve.__version__}
            )
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            # The exporter logs every failed attempt with its retries; one warning of ours instead.
            logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").setLevel(
                logging.CRITICAL
            )
            exporter = WarnOnce(
                # timeout: a collector that does not answer holds the export thread (and the final
                # flush at shutdown) 2 s per attempt, not the default 10.
                OTLPSpanExporter(
                    endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=2
                ),
                endpoint,
            )
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self.tracer = self.provider.get_tracer("bnserve.server")

    def begin(self, carrier: Mapping[str, str], protocol: str) -> RequestTrace | None:
        """A trace for this request, or None when it is not sampled: a caller's ``traceparent`` decides
        (its sampled flag, W3C trace-flags bit 0); without one, a request is sampled with probability
        ``sample_rate``. An unsampled request costs nothing more."""
        parent = carrier.get("traceparent")
        if parent is not None and len(parent) >= 55 and parent[2] == "-":
            try:
                sampled = int(parent[53:55], 16) & 1
            except ValueError:
                sampled = random.random() < self.sample_rate
        else:
            sampled = random.random() < self.sample_rate
        return RequestTrace(self, carrier, protocol) if sampled else None

    def emit(self, trace: RequestTrace, ended: int, error: str) -> None:
        parent = self.propagator.extract(carrier=trace.carrier)
        wall = PERF_TO_WALL_NS
        attributes = {"bnserve.protocol": trace.protocol}
        if trace.model:
            attributes |= {"bnserve.model": trace.model, "bnserve.version": trace.version,
                           "bnserve.request_rows": trace.rows}  # fmt: skip
        if trace.timing:
            attributes["bnserve.batch_rows"] = trace.timing[2]
        root = self.tracer.start_span(
            "bnserve.infer", context=parent, start_time=trace.arrived + wall, attributes=attributes
        )
        if error:
            root.set_status(self._status(self._error_code, error))
        context = _context_of(root)
        decoded = trace.decoded or ended
        phases = [("decode", trace.arrived, decoded)]
        if trace.timing:
            started, computed = trace.timing[0], trace.timing[1]
            phases += [("queue", decoded, started), ("compute", started, computed)]
            phases.append(("encode", trace.answered or computed, ended))
        for name, begin, end in phases:
            child = self.tracer.start_span(name, context=context, start_time=begin + wall)
            child.end(end_time=max(begin, end) + wall)
        root.end(end_time=ended + wall)

    def shutdown(self) -> None:
        """Export what is buffered (at most a few seconds), then stop."""
        self.provider.shutdown()


def _context_of(span):
    from opentelemetry import trace

    return trace.set_span_in_context(span)


class WarnOnce:
    """A SpanExporter that logs its first failure, and its first success after failures, once each."""

    def __init__(self, exporter, endpoint: str):
        self._exporter, self._endpoint, self._failing = exporter, endpoint, False

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._exporter.export(spans)
        except Exception:  # noqa: BLE001 - a collector's trouble never reaches the request path
            result = SpanExportResult.FAILURE
        if result != SpanExportResult.SUCCESS and not self._failing:
            self._failing = True
            log.warning(
                "--otlp-endpoint %s: spans could not be exported (the collector does not answer); "
                "serving goes on, spans are dropped until it does",
                self._endpoint,
            )
        elif result == SpanExportResult.SUCCESS and self._failing:
            self._failing = False
            log.info("--otlp-endpoint %s: exporting spans again", self._endpoint)
        return result

    def shutdown(self):
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)
