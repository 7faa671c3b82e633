"""Prometheus metrics (prometheus-client), served over HTTP on --metrics-port.

    bnserve_requests_total{model,version,code,protocol}  requests answered, by gRPC status code (the HTTP
                                                      status maps from it) and protocol (grpc or http)
    bnserve_request_seconds{model,version,protocol}   histogram: time inside the server of decoded requests
    bnserve_queue_seconds{model,version}              histogram: time a request waited for its batch
    bnserve_compute_seconds{model,version}            histogram: model call time per batch
    bnserve_batch_size{model,version}                 histogram: samples per model call
    bnserve_model_calls_total{model,version,place}    model calls by where they ran: "inline" (event loop) or "thread"
    bnserve_loaded_versions{model}                    gauge: versions ready to serve
    bnserve_queue_depth{model,version}                gauge: requests waiting for a model call (read at scrape)
    bnserve_inflight_requests{model,version}          gauge: requests inside the server, waiting or computing
    bnserve_load_failures_total{model}                versions refused at load (bad hash, unreadable ...)
    bnserve_parity_max_abs_error{model,version}       gauge: largest |output - golden reference| measured at load
    bnserve_bn_shift{model,version,layer}             gauge: the last window's shift score per BN layer (bnserve.core.drift)
    bnserve_drift_alarm{model,version}                gauge: 1 while some layer's shift is above its threshold
    bnserve_monitor_dropped_samples_total{model,version}  sampled inputs dropped because the monitor was behind
    bnserve_monitor_skipped_samples_total{model,version}  sampled inputs skipped: the monitor was over --monitor-max-share
    bnserve_monitor_non_finite_samples_total{model,version}  sampled inputs kept out of the moments (NaN/inf)
    bnserve_captured_samples_total{model,version}     inputs written to --capture-dir
    bnserve_capture_failures_total{model,version}     capture shards not written (disk full, unwritable)

A request for a model the server does not know is counted under model="" so that clients cannot
create unbounded label values.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, Counter, Gauge, make_wsgi_app
from prometheus_client import metrics as client_metrics
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from bnserve.server.auth import BearerToken

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# -- the request path's metrics ----------------------------------------------------------------------------
# A request pays for two counters and four histogram observations. prometheus_client's take a lock per value
# and check the metric's state on every call: 0.7 us an increment and 1.6 us an observation here, ~8 us of a
# request's ~60 us of Python. These are written by the event loop thread only, so they need no lock: an
# increment is one addition (0.1 us), an observation a bisect and two additions (0.3 us). They are exposed
# by the same registry, with the same names, labels and samples as prometheus_client's Counter and Histogram.


class LoopCounterChild:
    __slots__ = ("value", "created")

    def __init__(self):
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class LoopHistogramChild:
    __slots__ = ("upper_bounds", "counts", "sum", "created")

    def __init__(self, upper_bounds: tuple[float, ...]):
        self.upper_bounds = upper_bounds
        self.counts = [0] * len(upper_bounds)
        """counts[i]: observations in (upper_bounds[i-1], upper_bounds[i]]; the last bound is +Inf."""
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Prometheus buckets are inclusive (le): the first bound >= amount."""
        self.counts[bisect_left(self.upper_bounds, amount)] += 1
        self.sum += amount


class LoopMetric:
    """A labelled counter or histogram updated on the event loop thread only (see above) and collected by the
    metrics thread. A scrape copies each child's counts in one step under the GIL, so buckets and _count always
    agree; _sum may lag them by the one observation being made meanwhile."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        kind: str,
        buckets: tuple[float, ...] = (),
        registry=REGISTRY,
    ):
        self.name, self.documentation, self.kind = name, documentation, kind
        self.labelnames = tuple(labelnames)
        self.upper_bounds = (*(float(b) for b in buckets), float("inf"))
        self._children: dict[tuple[str, ...], LoopCounterChild | LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values) -> LoopCounterChild | LoopHistogramChild:
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(
                    f"{self.name}: {len(key)} label values, expected {len(self.labelnames)} "
                    f"({', '.join(self.labelnames)})"
                )
            child = (
                LoopCounterChild()
                if self.kind == "counter"
                else LoopHistogramChild(self.upper_bounds)
            )
            self._children[key] = child
        return child

    def remove(self, *values) -> None:
        """KeyError when no such child exists, as prometheus_client's remove."""
        del self._children[tuple(str(value) for value in values)]

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, self.kind)]

    def collect(self):
        metric = Metric(self.name, self.documentation, self.kind)
        for key, child in list(self._children.items()):
            labels = dict(zip(self.labelnames, key))
            if isinstance(child, LoopCounterChild):
                metric.add_sample(self.name + "_total", labels, child.value)
            else:
                counts, total = child.counts[:], child.sum
                cumulative = 0
                for bound, count in zip(child.upper_bounds, counts):
                    cumulative += count
                    metric.add_sample(
                        self.name + "_bucket", {**labels, "le": floatToGoString(bound)}, cumulative
                    )
                metric.add_sample(self.name + "_count", labels, cumulative)
                metric.add_sample(self.name + "_sum", labels, total)
            # as prometheus_client's own (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics())
            if getattr(client_metrics, "_use_created", True):
                metric.add_sample(self.name + "_created", labels, child.created)
        yield metric


REQUESTS = LoopMetric(
    "bnserve_requests",
    "Requests answered, by gRPC status code and protocol",
    ["model", "version", "code", "protocol"],
    "counter",
)
REQUEST_SECONDS = LoopMetric(
    "bnserve_request_seconds",
    "Request time inside the server",
    ["model", "version", "protocol"],
    "histogram",
    LATENCY_BUCKETS,
)
QUEUE_SECONDS = LoopMetric(
    "bnserve_queue_seconds",
    "Time a request waited for its batch",
    ["model", "version"],
    "histogram",
    LATENCY_BUCKETS,
)
COMPUTE_SECONDS = LoopMetric(
    "bnserve_compute_seconds",
    "Model call time per batch",
    ["model", "version"],
    "histogram",
    LATENCY_BUCKETS,
)
BATCH_SIZE = LoopMetric(
    "bnserve_batch_size", "Samples per model call", ["model", "version"], "histogram", BATCH_BUCKETS
)
MODEL_CALLS = LoopMetric(
    "bnserve_model_calls",
    "Model calls by where they ran (inline: on the event loop)",
    ["model", "version", "place"],
    "counter",
)
BUSY_LOOP_BATCHES = LoopMetric(
    "bnserve_busy_loop_batches",
    "Batches that could wait for companions up to --busy-queue-delay-us, the event loop being busy",
    ["model", "version"],
    "counter",
)
LOADED_VERSIONS = Gauge("bnserve_loaded_versions", "Versions ready to serve", ["model"])
QUEUE_DEPTH = Gauge(
    "bnserve_queue_depth",
    "Requests waiting for a model call (the autoscaling signal, as Triton's pending request count)",
    ["model", "version"],
)
INFLIGHT_REQUESTS = Gauge(
    "bnserve_inflight_requests",
    "Requests inside the server for this version: decoded and not yet answered (waiting or computing)",
    ["model", "version"],
)
LOAD_FAILURES = Counter("bnserve_load_failures", "Versions refused at load", ["model"])
PARITY_MAX_ABS_ERROR = Gauge(
    "bnserve_parity_max_abs_error",
    "Largest |output - golden reference output| of the load-time check on this backend",
    ["model", "version"],
)


def serve_metrics(host: str, port: int, token: BearerToken | None = None, registry=None) -> int:
    """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port (0 picks one).

    With ``token``, a scrape must carry ``authorization: Bearer <token>``, else it gets 401. ``registry``:
    what to expose (default: this process's metrics).
    """
    metrics_app = make_wsgi_app() if registry is None else make_wsgi_app(registry)

    def app(environ, start_response):
        if token is not None and token.refusal(
            environ.get("HTTP_AUTHORIZATION"), "Authorization", "header"
        ):
            start_response(
                "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            )
            return [b"missing or wrong bearer token\n"]
        return metrics_app(environ, start_response)

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # scrapes are not worth a log line each
            pass

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="bnserve-metrics", daemon=True).start()
    return server.server_port


BN_SHIFT = Gauge(
    "bnserve_bn_shift",
    "Shift score (mean KL of live vs frozen BN moments) of the last window",
    ["model", "version", "layer"],
)
DRIFT_ALARM = Gauge(
    "bnserve_drift_alarm",
    "1 while a BN layer's shift is above its calibrated threshold",
    ["model", "version"],
)
SAMPLES_DROPPED = Counter(
    "bnserve_monitor_dropped_samples",
    "Sampled inputs dropped: the monitor thread was behind",
    ["model", "version"],
)
SAMPLES_SKIPPED = Counter(
    "bnserve_monitor_skipped_samples",
    "Sampled inputs not monitored: the monitor was over its --monitor-max-share budget",
    ["model", "version"],
)
MONITOR_NON_FINITE = Counter(
    "bnserve_monitor_non_finite_samples",
    "Sampled inputs kept out of the drift moments: a NaN or infinity in the input or its moments",
    ["model", "version"],
)
CAPTURED_SAMPLES = Counter(
    "bnserve_captured_samples", "Request inputs written to --capture-dir", ["model", "version"]
)
CAPTURE_FAILURES = Counter(
    "bnserve_capture_failures",
    "Capture shards not written (disk full or unwritable)",
    ["model", "version"],
)


# -- --workers N: one port for the replica ---------------------------------------------------------------

LARGEST_OF_WORKERS = {
    "bnserve_loaded_versions",
    "bnserve_parity_max_abs_error",
    "bnserve_bn_shift",
    "bnserve_drift_alarm",
    "process_start_time_seconds",
    "process_max_fds",
    "python_info",
}
"""Gauges that describe the versions every worker loads (or the processes), where the replica's value is the
largest worker's, not the sum: each worker loads every version and runs its own monitor."""


class WorkersCollector:
    """The replica's metrics under --workers N: every worker's /metrics scraped at collection time, samples
    with the same name and labels summed (counters, histograms, queue and in-flight gauges), or for
    LARGEST_OF_WORKERS the largest taken. A worker that does not answer (restarting) is left out."""

    def __init__(self, ports: list[int], token: str | None = None, timeout_s: float = 2.0):
        self.ports, self.token, self.timeout_s = ports, token, timeout_s

    def scrape(self, port: int) -> str | None:
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read().decode()
        except OSError:
            return None

    def collect(self):
        from prometheus_client.metrics_core import Metric
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple, float]] = {}
        answered = 0
        for port in self.ports:
            text = self.scrape(port)
            if text is None:
                continue
            answered += 1
            for family in text_string_to_metric_families(text):
                families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                table = values.setdefault(family.name, {})
                largest = family.name in LARGEST_OF_WORKERS
                for sample in family.samples:
                    if sample.name.endswith("_created"):  # a worker's own start time, not a count
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key in table:
                        table[key] = (
                            max(table[key], sample.value) if largest else table[key] + sample.value
                        )
                    else:
                        table[key] = sample.value
        for name, family in families.items():
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family
        workers = Metric(
            "bnserve_workers_answering", "Workers whose metrics this scrape summed", "gauge"
        )
        workers.add_sample("bnserve_workers_answering", {}, answered)
        yield workers
