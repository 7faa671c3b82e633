"""The drift monitor: sampled request inputs, handled off the request path (and handed to the capture).

On the request path a sampled request costs one random draw and a list append on the event loop; every
MONITOR_BATCH samples (or HAND_OVER_S after the first) the list goes to the background thread in one
non-blocking queue put (dropped, and counted, when the queue is full), so the thread wakes once per batch,
not once per request. Nothing there can fail or delay a request. The background thread runs
each version's monitor.onnx on the sampled inputs (in batches of up to MONITOR_BATCH samples), completes
windows of W samples, scores them (bnserve.core.drift) and keeps the last HISTORY windows; another writes
captured inputs as .npz shards (bnserve.server.capture).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnserve.core.drift import MonitorSpec, layer_shift, output_names
from bnserve.core.repository import INPUT_NAME
from bnserve.server import metrics
from bnserve.server.capture import Capture

log = logging.getLogger("bnserve.server")

MONITOR_BATCH = 64
HAND_OVER_S = 0.2
"""A partial batch of sampled inputs waits at most this long on the event loop before it is handed over."""
QUEUE_BATCHES = 64
"""Batches waiting for the monitor or capture thread, at most; beyond it they are dropped (counted)."""
HISTORY = 120
"""Windows kept per version for the drift endpoint and the status page."""


@dataclass
class WindowResult:
    finished: float
    """time.time() when the window completed"""
    shifts: list[float]
    alarm: bool


@dataclass(frozen=True)
class LayerDrift:
    layer: int
    """0 is the input standardisation, then the BN layers in graph order."""
    name: str
    threshold: float
    score: float | None
    """The last window's shift; None before the first window."""
    alarm: bool
    history: tuple[float, ...]
    """The shifts of the last HISTORY windows, oldest first."""


@dataclass(frozen=True)
class DriftStatus:
    """A served version's drift monitor, as GET .../drift, bnserve.Monitor/Drift and the status page show it."""

    name: str
    version: str
    monitored: bool
    reason: str = ""
    """Why the version is not monitored (monitored False)."""
    window: int = 0
    calibrated_window: int = 0
    sample_rate: float = 0.0
    windows: int = 0
    samples_in_window: int = 0
    dropped: int = 0
    skipped: int = 0
    max_share: float = 0.0
    alarm: bool = False
    non_finite: int = 0
    """Sampled inputs kept out of the moments: a NaN or an infinity in the input or in its BN moments."""
    unknown_windows: int = 0
    """Windows whose score was not a number: they neither raise nor clear the alarm."""
    layers: tuple[LayerDrift, ...] = ()
    history_times: tuple[float, ...] = ()
    """time.time() at which each window of the history completed."""

    def to_json(self) -> dict:
        """The drift endpoint's document (history_times stay on the server). A score that is not finite
        (an infinite shift of a channel whose live variance is 0) is null: NaN and Infinity are not JSON."""
        document = dataclasses.asdict(self)
        del document["history_times"]
        for layer in document["layers"]:
            layer["history"] = [finite_or_none(v) for v in layer["history"]]
            layer["score"] = finite_or_none(layer["score"])
            layer["threshold"] = finite_or_none(layer["threshold"])
        return document


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass
class VersionMonitor:
    """One served version's monitor state (updated by the monitor thread, read by the endpoints)."""

    name: str
    version: int
    spec: MonitorSpec
    model_path: Path
    window: int
    sample_rate: float
    max_share: float = 0.0
    """The budget: spent_ns at most max_share x the served version's compute time (0: no limit)."""
    session: object = None
    sums: list[np.ndarray] = field(default_factory=list)
    """Per layer: [sum of per-sample means, sum of per-sample mean squares] over the open window, float64."""
    count: int = 0
    """Samples in the open window."""
    windows: int = 0
    dropped: int = 0
    spent_ns: int = 0
    """Time spent in monitor.onnx so far (written by the monitor thread only)."""
    skipped: int = 0
    """Sampled inputs not monitored because spent_ns was over the budget (--monitor-max-share)."""
    skipped_counter: object = None
    non_finite: int = 0
    """Sampled inputs kept out of the moments because they, or their moments, were not finite."""
    unknown_windows: int = 0
    alarm: bool = False
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY))

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = [np.zeros((2, len(layer.scale))) for layer in self.spec.layers]
        self.count = 0

    def open_session(self) -> None:
        import onnxruntime

        from bnserve.server.backends.onnx import session_options

        # One thread: the monitor must never compete with the model threads for cores.
        self.session = onnxruntime.InferenceSession(
            str(self.model_path), session_options(1), providers=["CPUExecutionProvider"]
        )
        self.outputs = [
            name for index in range(len(self.spec.layers)) for name in output_names(index)
        ]

    def evaluate(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """monitor.onnx's per-sample outputs for ``images`` (outside the lock: it takes a model call)."""
        if self.session is None:
            self.open_session()
        started = time.perf_counter_ns()
        values = self.session.run(self.outputs, {INPUT_NAME: images})
        self.spent_ns += time.perf_counter_ns() - started
        return dict(zip(self.outputs, values))

    def add(self, images: np.ndarray, values: dict[str, np.ndarray]) -> list[WindowResult]:
        """Fold the per-sample ``values`` of ``images`` into windows; returns the windows completed. A sample
        that is not finite, or whose moments are not (a finite 1e30 squares to infinity in float32), is
        counted in ``non_finite`` and kept out: one such sample would make every score of its window NaN."""
        keep = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        for value in values.values():
            keep &= np.isfinite(value.reshape(len(value), -1)).all(axis=1)
        if not keep.all():
            dropped = int((~keep).sum())
            self.non_finite += dropped
            metrics.MONITOR_NON_FINITE.labels(self.name, str(self.version)).inc(dropped)
            images = images[keep]
            values = {name: value[keep] for name, value in values.items()}
        finished = []
        start = 0
        while start < len(images):
            take = min(len(images) - start, self.window - self.count)
            for index in range(len(self.spec.layers)):
                mean_name, square_name = output_names(index)
                self.sums[index][0] += values[mean_name][start : start + take].sum(
                    axis=0, dtype=np.float64
                )
                self.sums[index][1] += values[square_name][start : start + take].sum(
                    axis=0, dtype=np.float64
                )
            self.count += take
            start += take
            if self.count == self.window:
                finished.append(self.close_window())
        return finished

    def close_window(self) -> WindowResult:
        shifts = [
            layer_shift(sums[0] / self.count, sums[1] / self.count, layer)
            for sums, layer in zip(self.sums, self.spec.layers)
        ]
        labels = (self.name, str(self.version))
        if any(math.isnan(shift) for shift in shifts):
            # Unknown: NaN > threshold is false, so such a window would clear any alarm. It changes nothing.
            self.unknown_windows += 1
            log.warning(
                "drift window on model %r version %d has no score (not a number); the alarm stays %s",
                self.name,
                self.version,
                "on" if self.alarm else "off",
            )
            self.reset()
            return WindowResult(time.time(), shifts, self.alarm)
        alarm = any(shift > layer.threshold for shift, layer in zip(shifts, self.spec.layers))
        for index, shift in enumerate(shifts):
            metrics.BN_SHIFT.labels(*labels, str(index)).set(shift)
        metrics.DRIFT_ALARM.labels(*labels).set(1 if alarm else 0)
        if alarm != self.alarm:
            crossed = [
                f"layer {i} ({layer.name}) {shift:.3g} > {layer.threshold:.3g}"
                for i, (shift, layer) in enumerate(zip(shifts, self.spec.layers))
                if shift > layer.threshold
            ]
            if alarm:
                log.warning(
                    "drift alarm on model %r version %d: %s (window of %d samples)",
                    self.name,
                    self.version,
                    "; ".join(crossed),
                    self.window,
                )
            else:
                log.info(
                    "drift alarm cleared on model %r version %d: every layer within its threshold",
                    self.name,
                    self.version,
                )
        self.alarm = alarm
        self.windows += 1
        result = WindowResult(time.time(), shifts, alarm)
        self.history.append(result)
        self.reset()
        return result

    def status(self) -> DriftStatus:
        """What GET .../drift, bnserve.Monitor/Drift and the status page show."""
        last = self.history[-1] if self.history else None
        layers = tuple(
            LayerDrift(
                index,
                layer.name,
                layer.threshold,
                last.shifts[index] if last else None,
                bool(last and last.shifts[index] > layer.threshold),
                tuple(window.shifts[index] for window in self.history),
            )
            for index, layer in enumerate(self.spec.layers)
        )
        return DriftStatus(
            self.name,
            str(self.version),
            True,
            "",
            self.window,
            self.spec.window,
            self.sample_rate,
            self.windows,
            self.count,
            self.dropped,
            self.skipped,
            self.max_share,
            self.alarm,
            self.non_finite,
            self.unknown_windows,
            layers,
            tuple(window.finished for window in self.history),
        )


def unmonitored_status(name: str, version: int, reason: str) -> DriftStatus:
    return DriftStatus(name, str(version), False, reason)


class TrafficSampler:
    """The request-path entry (``offer``) and the background thread behind it, for monitor and capture."""

    def __init__(
        self,
        sample_rate: float,
        window: int,
        capture: Capture | None = None,
        capture_rate: float = 0.0,
        max_share: float = 0.0,
    ):
        self.sample_rate = sample_rate
        self.max_share = max_share
        self.window = window
        self.capture = capture
        self.capture_rate = capture_rate if capture is not None else 0.0
        self.monitors: dict[tuple[str, int], VersionMonitor | None] = {}
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self.pending: list[tuple] = []
        """Sampled requests not yet handed to the thread (touched on the event loop only)."""
        self.pending_samples = 0
        self.hand_over_timer: asyncio.TimerHandle | None = None
        self.random = random.Random()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.sample_rate > 0 or self.capture_rate > 0

    def monitor_for(self, model) -> VersionMonitor | None:
        """The version's monitor, made on first use (None: not monitored, e.g. exported before monitor.onnx)."""
        key = (model.name, model.version)
        if key not in self.monitors:
            monitor = None
            spec = model.manifest.monitor
            if self.sample_rate > 0 and spec is not None and model.directory is not None:
                monitor = VersionMonitor(
                    model.name,
                    model.version,
                    spec,
                    model.directory / spec.file,
                    self.window,
                    self.sample_rate,
                    self.max_share,
                )
                monitor.skipped_counter = metrics.SAMPLES_SKIPPED.labels(
                    model.name, str(model.version)
                )
                if self.window != spec.window:
                    log.warning(
                        "model %r version %d: drift thresholds were calibrated for windows of %d samples, "
                        "--monitor-window is %d: alarms are less reliable",
                        model.name,
                        model.version,
                        spec.window,
                        self.window,
                    )
            with self.lock:
                self.monitors[key] = monitor
        return self.monitors[key]

    def status(self, model) -> DriftStatus:
        monitor = self.monitor_for(model)
        if monitor is not None:
            with self.lock:
                return monitor.status()
        if model.manifest.monitor is None:
            reason = (
                "this version was exported without a drift monitor (monitor.onnx); re-export it"
            )
        else:
            reason = "the monitor is off (--monitor-sample-rate 0)"
        return unmonitored_status(model.name, model.version, reason)

    def offer(self, model, images: np.ndarray) -> None:
        """On the request path: sample, hand over, never block or raise."""
        try:
            self._offer(model, images)
        except Exception:  # an observer's fault must not become the request's
            log.exception(
                "drift monitor: sampling a request failed; the request is served regardless"
            )

    def _offer(self, model, images: np.ndarray) -> None:
        draw = self.random.random()
        monitored = draw < self.sample_rate
        captured = draw < self.capture_rate
        if not (monitored or captured):
            return
        monitor = self.monitor_for(model) if monitored else None
        if (
            monitor is not None
            and self.max_share
            and monitor.spent_ns > self.max_share * model.statistics.infer_ns
        ):
            # Over budget: on a compute-bound model every monitored sample costs about one more sample of
            # compute; skipping depends on time only, never on the input, so the windows stay unbiased.
            monitor.skipped += len(images)
            monitor.skipped_counter.inc(len(images))
            monitor = None
        if monitor is None and not captured:
            return
        self.pending.append((model.name, model.version, monitor, images, captured))
        self.pending_samples += len(images)
        if self.pending_samples >= MONITOR_BATCH:
            self.hand_over()
        elif self.hand_over_timer is None:
            self.hand_over_timer = asyncio.get_running_loop().call_later(
                HAND_OVER_S, self.hand_over
            )

    def hand_over(self) -> None:
        """Give the pending sampled requests to the background thread in one put (event loop only)."""
        if self.hand_over_timer is not None:
            self.hand_over_timer.cancel()
            self.hand_over_timer = None
        batch, self.pending, self.pending_samples = self.pending, [], 0
        if not batch:
            return
        try:
            self.queue.put_nowait(batch)
        except queue.Full:
            for name, version, monitor, images, _ in batch:
                metrics.SAMPLES_DROPPED.labels(name, str(version)).inc(len(images))
                if monitor is not None:
                    monitor.dropped += len(images)
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="bnserve-monitor", daemon=True)
            self.thread.start()

    def forget(self, name: str, version: int) -> None:
        """A version no longer served: its monitor and gauges go."""
        with self.lock:
            monitor = self.monitors.pop((name, version), None)
        if monitor is None:
            return
        for labels, gauge in [
            ((name, str(version), str(i)), metrics.BN_SHIFT)
            for i in range(len(monitor.spec.layers))
        ] + [
            ((name, str(version)), metrics.DRIFT_ALARM),
            ((name, str(version)), metrics.SAMPLES_SKIPPED),
        ]:
            try:
                gauge.remove(*labels)
            except KeyError:  # no window completed: the series was never set
                pass

    def run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                break
            try:
                self.process(batch)
            # The monitor is an observer: its failure is logged, never raised into serving
            except Exception:
                log.exception("drift monitor failed on a batch of sampled inputs; continuing")
            if self.capture is not None and self.queue.empty():
                self.capture.flush_due()

    def process(self, batch) -> None:
        by_monitor: dict[int, tuple[VersionMonitor, list[np.ndarray]]] = {}
        for name, version, monitor, images, captured in batch:
            if monitor is not None:
                by_monitor.setdefault(id(monitor), (monitor, []))[1].append(images)
            if captured and self.capture is not None:
                self.capture.add(
                    name, version, np.array(images, np.float32)
                )  # a copy: the request may go
        for monitor, arrays in by_monitor.values():
            images = np.ascontiguousarray(np.concatenate(arrays), np.float32)
            values = monitor.evaluate(images)
            with self.lock:
                # The version may have been unloaded meanwhile: its gauges are gone and must stay gone.
                if self.monitors.get((monitor.name, monitor.version)) is monitor:
                    monitor.add(images, values)

    def stop(self) -> None:
        """After hand_over() on the event loop: let the thread finish what it holds, write the last shards."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join(timeout=10)
        if self.capture is not None:
            self.capture.flush_due(force=True)
