"""The request path's lock-free counters and histograms expose what prometheus_client's own would."""

from __future__ import annotations

import random
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bnserve.server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, LoopMetric


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition, sorted, with the creation times (which differ by construction) cut off."""
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line.rsplit(" ", 1)[0] if "_created" in line else line for line in lines)


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, BATCH_BUCKETS])
def test_histogram_exposition_equals_prometheus_client(buckets):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop_histogram = LoopMetric(
        "h_seconds", "help", ["model", "version"], "histogram", buckets, ours
    )
    client_histogram = Histogram(
        "h_seconds", "help", ["model", "version"], buckets=buckets, registry=theirs
    )
    draw = random.Random(5)
    # Every bound exactly (buckets are inclusive), values between them, below the first and beyond the last.
    values = [float(b) for b in buckets] + [draw.uniform(0, 2 * buckets[-1]) for _ in range(500)]
    values += [0.0, buckets[-1] * 1000]
    for value in values:
        labels = (draw.choice(["a", "b"]), str(draw.randint(1, 2)))
        loop_histogram.labels(*labels).observe(value)
        client_histogram.labels(*labels).observe(value)
    assert exposition(ours) == exposition(theirs)


def test_counter_exposition_equals_prometheus_client_and_remove():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop_counter = LoopMetric("c", "help", ["model", "code"], "counter", registry=ours)
    client_counter = Counter("c", "help", ["model", "code"], registry=theirs)
    for model, code, amount in [
        ("m", "OK", 1),
        ("m", "OK", 3),
        ("n", "INTERNAL", 1),
        ("x", "OK", 1),
    ]:
        loop_counter.labels(model, code).inc(amount)
        client_counter.labels(model, code).inc(amount)
    loop_counter.remove("x", "OK")
    client_counter.remove("x", "OK")
    assert exposition(ours) == exposition(theirs)
    with pytest.raises(KeyError):
        loop_counter.remove("x", "OK")
    with pytest.raises(ValueError, match="c: 1 label values, expected 2 \\(model, code\\)"):
        loop_counter.labels("m")


def test_a_scrape_during_observations_sees_buckets_that_add_up():
    """The metrics thread reads while the event loop thread writes: _count is always the top bucket."""
    registry = CollectorRegistry()
    histogram = LoopMetric(
        "busy_seconds", "help", ["model"], "histogram", LATENCY_BUCKETS, registry
    )
    child = histogram.labels("m")
    stop = threading.Event()

    def observe():
        draw = random.Random(1)
        while not stop.is_set():
            child.observe(draw.uniform(0, 0.02))

    writer = threading.Thread(target=observe)
    writer.start()
    try:
        for _ in range(200):
            (family,) = list(histogram.collect())
            samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
            buckets = [v for (name, _), v in samples.items() if name.endswith("_bucket")]
            assert buckets == sorted(buckets)
            assert samples[("busy_seconds_count", None)] == samples[("busy_seconds_bucket", "+Inf")]
    finally:
        stop.set()
        writer.join()
    assert child.sum > 0
