"""The drift monitor and the traffic capture: sampled request inputs, handled off the request path.

On the request path a sampled request costs one random draw and a list append on the event loop; every
MONITOR_BATCH samples (or HAND_OVER_S after the first) the list goes to the background thread in one
non-blocking queue put (dropped, and counted, when the queue is full), so the thread wakes once per batch,
not once per request. Nothing there can fail or delay a request. The background thread runs
each version's monitor.onnx on the sampled inputs (in batches of up to MONITOR_BATCH samples), completes
windows of W samples, scores them (bnserve.core.drift) and keeps the last HISTORY windows; another writes
captured inputs as .npz shards.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnserve.core.drift import MonitorSpec, layer_shift, output_names
from bnserve.core.repository import INPUT_NAME
from bnserve.server import metrics

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
        self.session = onnxruntime.InferenceSession(str(self.model_path), session_options(1),
                                                    providers=["CPUExecutionProvider"])
        self.outputs = [name for index in range(len(self.spec.layers)) for name in output_names(index)]

    def evaluate(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """monitor.onnx's per-sample outputs for ``images`` (outside the lock: it takes a model call)."""
        if self.session is None:
            self.open_session()
        started = time.perf_counter_ns()
        values = self.session.run(self.outputs, {INPUT_NAME: images})
        self.spent_ns += time.perf_counter_ns() - started
        return dict(zip(self.outputs, values))

    def add(self, images: np.ndarray, values: dict[str, np.ndarray]) -> list[WindowResult]:
        """Fold the per-sample ``values`` of ``images`` into windows; returns the windows completed."""
        finished = []
        start = 0
        while start < len(images):
            take = min(len(images) - start, self.window - self.count)
            for index in range(len(self.spec.layers)):
                mean_name, square_name = output_names(index)
                self.sums[index][0] += values[mean_name][start:start + take].sum(axis=0, dtype=np.float64)
                self.sums[index][1] += values[square_name][start:start + take].sum(axis=0, dtype=np.float64)
            self.count += take
            start += take
            if self.count == self.window:
                finished.append(self.close_window())
        return finished

    def close_window(self) -> WindowResult:
        shifts = [layer_shift(sums[0] / self.count, sums[1] / self.count, layer)
                  for sums, layer in zip(self.sums, self.spec.layers)]
        alarm = any(shift > layer.threshold for shift, layer in zip(shifts, self.spec.layers))
        labels = (self.name, str(self.version))
        for index, shift in enumerate(shifts):
            metrics.BN_SHIFT.labels(*labels, str(index)).set(shift)
        metrics.DRIFT_ALARM.labels(*labels).set(1 if alarm else 0)
        if alarm != self.alarm:
            crossed = [f"layer {i} ({layer.name}) {shift:.3g} > {layer.threshold:.3g}"
                       for i, (shift, layer) in enumerate(zip(shifts, self.spec.layers)) if shift > layer.threshold]
            if alarm:
                log.warning("drift alarm on model %r version %d: %s (window of %d samples)", self.name, self.version,
                            "; ".join(crossed), self.window)
            else:
                log.info("drift alarm cleared on model %r version %d: every layer within its threshold", self.name,
                         self.version)
        self.alarm = alarm
        self.windows += 1
        result = WindowResult(time.time(), shifts, alarm)
        self.history.append(result)
        self.reset()
        return result

    def status(self) -> dict:
        """What GET .../drift and bnserve.Monitor/Drift answer."""
        last = self.history[-1] if self.history else None
        return {
            "name": self.name, "version": str(self.version), "monitored": True, "reason": "",
            "window": self.window, "calibrated_window": self.spec.window, "sample_rate": self.sample_rate,
            "windows": self.windows, "samples_in_window": self.count, "dropped": self.dropped,
            "skipped": self.skipped, "max_share": self.max_share, "alarm": self.alarm,
            "layers": [{"layer": index, "name": layer.name, "threshold": layer.threshold,
                        "score": last.shifts[index] if last else None,
                        "alarm": bool(last and last.shifts[index] > layer.threshold),
                        "history": [window.shifts[index] for window in self.history]}
                       for index, layer in enumerate(self.spec.layers)],
            "history_times": [window.finished for window in self.history],
        }


def unmonitored_status(name: str, version: int, reason: str) -> dict:
    return {"name": name, "version": str(version), "monitored": False, "reason": reason, "window": 0,
            "calibrated_window": 0, "sample_rate": 0.0, "windows": 0, "samples_in_window": 0, "dropped": 0,
            "skipped": 0, "max_share": 0.0,
            "alarm": False, "layers": [], "history_times": []}


class Capture:
    """Appends sampled request inputs to DIR/NAME/VERSION/*.npz shards (each written aside and renamed into
    place), keeping the directory under ``max_bytes`` by removing the oldest shards; a shard that would not fit
    on the disk is dropped with a log line and bnserve_capture_failures_total."""

    def __init__(self, directory: Path, max_bytes: int, shard_samples: int = 256, max_shard_seconds: float = 10.0):
        self.directory = directory
        self.max_bytes = max_bytes
        self.shard_samples = shard_samples
        self.max_shard_seconds = max_shard_seconds
        self.pending: dict[tuple[str, int], list[np.ndarray]] = {}
        self.started: dict[tuple[str, int], float] = {}
        self.sequence = 0
        self.last_failure_log = 0.0
        self.shards: collections.deque | None = None
        """(path, bytes) of every shard under the directory, oldest first: scanned once, then kept up to date, so
        keeping the budget costs no directory walk per shard."""

    def add(self, name: str, version: int, images: np.ndarray) -> None:
        key = (name, version)
        self.pending.setdefault(key, []).append(images)
        self.started.setdefault(key, time.monotonic())
        if sum(len(a) for a in self.pending[key]) >= self.shard_samples:
            self.flush(key)

    def flush_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for key in list(self.pending):
            if force or now - self.started[key] >= self.max_shard_seconds:
                self.flush(key)

    def flush(self, key: tuple[str, int]) -> None:
        arrays = self.pending.pop(key, [])
        self.started.pop(key, None)
        if not arrays:
            return
        images = np.concatenate(arrays)
        target_dir = self.directory / key[0] / str(key[1])
        self.sequence += 1
        # Sortable by time: the oldest shards go first when the directory is over its budget.
        target = target_dir / f"{time.time_ns():020d}-{os.getpid()}-{self.sequence:06d}.npz"
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            needed = images.nbytes + 4096
            if shutil.disk_usage(target_dir).free < 2 * needed:
                raise OSError(28, "not enough free space for the shard")
            handle, temporary = tempfile.mkstemp(dir=target_dir, prefix=".shard-", suffix=".npz.tmp")
            try:
                with os.fdopen(handle, "wb") as stream:
                    np.savez(stream, x=images)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            metrics.CAPTURED_SAMPLES.labels(key[0], str(key[1])).inc(len(images))
            self.enforce_budget(target)
        except OSError as exc:
            metrics.CAPTURE_FAILURES.labels(key[0], str(key[1])).inc()
            now = time.monotonic()
            if now - self.last_failure_log > 10:
                log.error("capture: could not write a shard of %d samples under %s (%s); the samples are dropped, "
                          "serving is not affected", len(images), target_dir, exc.strerror or exc)
                self.last_failure_log = now

    def enforce_budget(self, written: Path) -> None:
        """Remove the oldest shards (by name: time first) until the directory holds at most max_bytes."""
        if self.shards is None:  # shards left by an earlier run count too
            found = sorted(self.directory.glob("*/*/*.npz"), key=lambda p: p.name)
            self.shards = collections.deque((p, p.stat().st_size) for p in found)
            self.total = sum(size for _, size in self.shards)
        else:
            size = written.stat().st_size
            self.shards.append((written, size))
            self.total += size
        while self.total > self.max_bytes and self.shards:
            oldest, size = self.shards.popleft()
            oldest.unlink(missing_ok=True)
            self.total -= size


class TrafficSampler:
    """The request-path entry (``offer``) and the background thread behind it, for monitor and capture."""

    def __init__(self, sample_rate: float, window: int, capture: Capture | None = None, capture_rate: float = 0.0,
                 max_share: float = 0.0):
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
                monitor = VersionMonitor(model.name, model.version, spec, model.directory / spec.file, self.window,
                                         self.sample_rate, self.max_share)
                monitor.skipped_counter = metrics.SAMPLES_SKIPPED.labels(model.name, str(model.version))
                if self.window != spec.window:
                    log.warning("model %r version %d: drift thresholds were calibrated for windows of %d samples, "
                                "--monitor-window is %d: alarms are less reliable", model.name, model.version,
                                spec.window, self.window)
            with self.lock:
                self.monitors[key] = monitor
        return self.monitors[key]

    def status(self, model) -> dict:
        monitor = self.monitor_for(model)
        if monitor is not None:
            with self.lock:
                return monitor.status()
        if model.manifest.monitor is None:
            reason = "this version was exported without a drift monitor (monitor.onnx); re-export it"
        else:
            reason = "the monitor is off (--monitor-sample-rate 0)"
        return unmonitored_status(model.name, model.version, reason)

    def offer(self, model, images: np.ndarray) -> None:
        """On the request path: sample, hand over, never block or raise."""
        try:
            self._offer(model, images)
        except Exception:  # an observer's fault must not become the request's
            log.exception("drift monitor: sampling a request failed; the request is served regardless")

    def _offer(self, model, images: np.ndarray) -> None:
        draw = self.random.random()
        monitored = draw < self.sample_rate
        captured = draw < self.capture_rate
        if not (monitored or captured):
            return
        monitor = self.monitor_for(model) if monitored else None
        if monitor is not None and self.max_share and monitor.spent_ns > self.max_share * model.statistics.compute_infer.ns:
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
            self.hand_over_timer = asyncio.get_running_loop().call_later(HAND_OVER_S, self.hand_over)

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
        for labels, gauge in ([((name, str(version), str(i)), metrics.BN_SHIFT) for i in range(len(monitor.spec.layers))]
                              + [((name, str(version)), metrics.DRIFT_ALARM),
                                 ((name, str(version)), metrics.SAMPLES_SKIPPED)]):
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
            except Exception:  # the monitor is an observer: its failure is logged, never raised into serving
                log.exception("drift monitor failed on a batch of sampled inputs; continuing")
            if self.capture is not None and self.queue.empty():
                self.capture.flush_due()

    def process(self, batch) -> None:
        by_monitor: dict[int, tuple[VersionMonitor, list[np.ndarray]]] = {}
        for name, version, monitor, images, captured in batch:
            if monitor is not None:
                by_monitor.setdefault(id(monitor), (monitor, []))[1].append(images)
            if captured and self.capture is not None:
                self.capture.add(name, version, np.array(images, np.float32))  # a copy: the request may go
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
