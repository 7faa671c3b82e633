"""Per-model dynamic batching: coalesce concurrent requests into one model call, split results back.

A request waits in a bounded queue. Whenever one of the model's ``instances`` is free, the batcher
takes the queued requests in arrival order while their total batch fits ``max_batch_size``. It then
waits for companions only when recent traffic says they are coming: each arriving request observes
how many requests are already inside the batcher (queued or running), and the batch waits, at most
``max_queue_delay_us`` after its oldest request arrived, until it holds 1 + the moving average of
that number. A lone client (nothing else inside when it arrives) is never held back; 32 concurrent
clients fill batches instead of paying one thread hand-off each.
``coalesce=False`` runs every request alone (batching off), with the same queue and deadlines.

A batch runs on a model thread, or on the event loop itself when its measured compute time is within
``inline_compute_us`` and nothing else could use the loop meanwhile (``DynamicBatcher._runs_inline``):
a lone client then pays no thread hand-off, and a slow model still never blocks the loop.

A call measured at ``long_call_us`` or more is handled for the model's sake (``DynamicBatcher._long``): the
loop waits for the model thread to start it, the next ready batch starts as soon as it returns (before its
answers are written), and a queue short of the expected companions, or empty, regroups with the requests its
answers bring back (``DynamicBatcher._after_long_call``).

While the event loop is busy (``LoopBusy``: its thread on a CPU most of the time), a batch waits up to
``busy_queue_delay_us`` instead, when that is longer. The requests the loop has not read yet wait inside
gRPC meanwhile, where the batcher cannot count them, so a longer wait costs the loop nothing and saves
model calls, each a thread hand-off and two GIL hand-overs. Below that load nothing changes: a batch that
waits longer there only adds its wait to every request's latency.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bnserve.server import metrics
from bnserve.server.errors import DeadlineExceeded, ModelOutputMismatch, QueueFull, Unavailable
from bnserve.server.execution import ModelThreads
from bnserve.server.settings import BatchingOptions
from bnserve.server.statistics import VersionStatistics

Runner = Callable[[np.ndarray, list[str]], dict[str, np.ndarray]]


@dataclass(slots=True)
class Pending:
    images: np.ndarray
    outputs: list[str]
    deadline: float | None
    """Event-loop time after which the request is dropped before compute."""
    arrived: float
    """Event-loop time of arrival; max_queue_delay_us counts from the oldest request of a batch."""
    enqueued_ns: int
    future: asyncio.Future
    timing: list | None = None
    """A traced request's [compute started, compute ended, batch rows] (perf_counter_ns), filled in by
    the batch that ran it; None untraced."""
    size: int = 0
    """Rows of ``images``."""


class ComputeTimes:
    """Measured model-call time per batch size, for the inline-or-thread choice.

    Batch sizes are grouped in buckets of powers of two (1, 2, 3-4, 5-8, ...); each bucket keeps an
    exponential moving average, weight 1/4, of the duration of every call in it, wherever it ran:
    ``avg <- avg + (ns - avg) / 4``. A bucket without a measurement is unknown, and an unknown call goes
    to a model thread (it is measured there).
    """

    def __init__(self, seed: dict[int, int] | None = None):
        self._ns: dict[int, float] = {}
        for rows, ns in (seed or {}).items():
            self.record(rows, ns)

    @staticmethod
    def bucket(rows: int) -> int:
        return 1 << max(rows - 1, 0).bit_length()

    def record(self, rows: int, ns: int) -> None:
        key = self.bucket(rows)
        previous = self._ns.get(key)
        self._ns[key] = float(ns) if previous is None else previous + (ns - previous) / 4

    def expected_ns(self, rows: int) -> float | None:
        return self._ns.get(self.bucket(rows))


INLINE_PROBE_EVERY = 16
"""After this many inline calls in a row, one goes to a model thread to look for hidden concurrency."""
INLINE_BACKOFF_S = 1.0
"""How long inline calls stop after a probe found other requests arriving."""
HANDOVER_S = 0.002
"""At most this long the loop waits for a model thread to start a long call (ModelThreads.submit)."""
REGROUP_WAIT_SHARE = 0.25
"""A regroup after a long call of t waits at most max(max_queue_delay_us, REGROUP_WAIT_SHARE * t) for the
answered requests to come back, so the model idles at most REGROUP_WAIT_SHARE / (1 + REGROUP_WAIT_SHARE)
(20%) of its time for them. max_queue_delay_us alone (1 ms) was shorter than the round trip of an answer
to 8 clients and back on 2 busy cores: ResNet50 batches held 5.7 of 8. Interleaved A/B against the 1 ms
window, c=8: ResNet50 1.10 / 1.08 (2 shared cores) and 1.05 (server on one core); conv6 (its calls nearer
1 ms, the window barely longer) 0.94-1.02, within its noise (docs/benchmarks.md)."""


BUSY_LOOP_SHARE = 0.75
"""The event loop is busy when its thread ran at least this share of the wall time (LoopBusy). Serving digits
from 32 clients on 2 cores it ran 0.89-0.92; from an open-loop 2,500 req/s, half that load, about 0.5."""
BUSY_WINDOW_S = 0.02
"""LoopBusy reads the thread's CPU time at most this often: one system call per window, not per batch."""


class LoopBusy:
    """Whether the calling thread (the event loop's) is busy, from its CPU time over the wall time since the
    previous reading, read again once BUSY_WINDOW_S has passed:
    ``busy = (thread_time - thread_time_before) >= BUSY_LOOP_SHARE * (perf_counter - perf_counter_before)``.
    The first reading sets the baseline and is not busy. The loop's thread is off the CPU while it waits
    for I/O and while another thread holds the GIL, so a loop that is short of work, or of the GIL, is not
    busy."""

    __slots__ = ("_wall", "_cpu", "busy")

    def __init__(self):
        self._wall: float | None = None
        self._cpu = 0.0
        self.busy = False

    def read(self) -> bool:
        wall = time.perf_counter()
        if self._wall is None or wall - self._wall >= BUSY_WINDOW_S:
            cpu = time.thread_time()
            if self._wall is not None:
                self.busy = cpu - self._cpu >= BUSY_LOOP_SHARE * (wall - self._wall)
            self._wall, self._cpu = wall, cpu
        return self.busy


@dataclass(slots=True)
class Launch:
    """A batch ready for its model call."""

    batch: list[Pending]
    outputs: list[str]
    images: np.ndarray
    started: int
    """perf_counter_ns when the batch left the queue."""
    input_done: int
    """perf_counter_ns when its input was assembled."""


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def timed(run: Runner, images: np.ndarray, outputs: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """``run`` on a model thread, with its own duration (the hand-off is not the model's time)."""
    started = time.perf_counter_ns()
    results = run(images, outputs)
    return results, time.perf_counter_ns() - started


class DynamicBatcher:
    def __init__(
        self,
        run: Runner,
        output_order: list[str],
        threads: ModelThreads,
        options: BatchingOptions,
        statistics: VersionStatistics | None = None,
        labels: tuple[str, str] = ("", ""),
        compute_times: ComputeTimes | None = None,
    ):
        self.run = run
        self.threads = threads
        self.compute_times = compute_times or ComputeTimes()
        self.inline_calls = 0
        """Model calls that ran on the event loop (the rest ran on model threads)."""
        self.early_starts = 0
        """Batches started by the long call before them, ahead of its answers (_after_long_call)."""
        self._regroup_rows = 0
        """Rows the dispatcher's next batch waits for after a long call (0: none; _after_long_call)."""
        self._regroup_after_ns = 0
        """The duration of the long call that set _regroup_rows, which sizes the regroup's window."""
        self._refill_until = 0.0
        """Set with _regroup_rows after a long call that left the queue empty: the event-loop time at which
        that regroup's window ends, REGROUP_WAIT_SHARE of the call after its end (0: the window counts from
        when the next batch starts collecting; _after_long_call)."""
        self._inline_streak = 0
        self._contended_until = 0.0
        self._queue_seconds = metrics.QUEUE_SECONDS.labels(*labels)
        self._compute_seconds = metrics.COMPUTE_SECONDS.labels(*labels)
        self._batch_size = metrics.BATCH_SIZE.labels(*labels)
        self._busy_loop_batches = metrics.BUSY_LOOP_BATCHES.labels(*labels)
        self._loop_busy = LoopBusy()
        self.busy_loop_batches = 0
        """Batches collected with busy_queue_delay_us, the event loop being busy (_queue_delay_s)."""
        self._inline_calls = metrics.MODEL_CALLS.labels(*labels, "inline")
        self._thread_calls = metrics.MODEL_CALLS.labels(*labels, "thread")
        self.output_order = output_order
        self.options = options
        self.statistics = statistics or VersionStatistics()
        self._queue: deque[Pending] = deque()
        self._arrival: asyncio.Future | None = None
        """What the dispatcher awaits while it waits for a request to arrive (None: it is not waiting)."""
        self._free_instances = options.instances
        """Instances not running a batch. Taken by submit()'s direct path (never waits) and the dispatcher."""
        self._instance_freed: asyncio.Future | None = None
        """What the dispatcher awaits while every instance is busy (None: it is not waiting)."""
        self._running: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._inside = 0
        """Requests submitted and not yet answered."""
        self.concurrency = 0.0
        """Moving average (weight 1/8) of ``_inside`` seen by each arriving request."""

    async def submit(
        self,
        images: np.ndarray,
        outputs: list[str],
        timeout_s: float | None = None,
        timing: list | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one validated request; returns its requested outputs, rows of this request only.
        ``timing`` (a traced request's list) receives its batch's compute start, end and rows."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._dispatch())
        if len(self._queue) >= self.options.max_queue_size:
            raise QueueFull(
                f"queue full: {len(self._queue)} requests waiting (limit {self.options.max_queue_size});"
                " retry later"
            )
        now = loop.time()
        pending = Pending(
            images,
            outputs,
            now + timeout_s if timeout_s is not None else None,
            now,
            time.perf_counter_ns(),
            loop.create_future(),
            timing,
            len(images),
        )
        self.concurrency += (self._inside - self.concurrency) / 8
        self._inside += 1
        try:
            if not self._queue and self._free_instances and self._companions_expected() == 0:
                # Nothing queued, an instance free, nobody expected: run now, without the dispatcher
                # task's extra trips through the event loop (the latency of a lone client).
                self._free_instances -= 1
                await self._execute([pending])
            else:
                self._queue.append(pending)
                arrival = self._arrival
                if arrival is not None and not arrival.done():
                    arrival.set_result(None)
            return await pending.future
        finally:
            self._inside -= 1

    def _companions_expected(self) -> int:
        """How many more requests a new batch should wait for: the recent concurrency, rounded."""
        return round(self.concurrency)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inside(self) -> int:
        """Requests submitted and not yet answered (queued or running)."""
        return self._inside

    async def drain(self, timeout_s: float) -> None:
        """Let every request inside finish (at most ``timeout_s``), then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._inside and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self.stop()

    async def stop(self) -> None:
        """Finish the running calls, refuse what is still queued."""
        if self._task is not None:
            self._task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(Unavailable("the model version was unloaded; retry"))
        self.threads.shutdown()

    async def _dispatch(self) -> None:
        while True:
            await self._wait_for_arrival()
            # The instance is taken only once work is queued, so an idle batcher leaves it free for
            # the direct path in submit().
            await self._take_instance()
            batch = await self._collect()
            if not batch:
                self._release_instance()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _take_instance(self) -> None:
        """asyncio.Semaphore.acquire for the one waiter there is (the dispatcher), without the walk over its
        waiters that each of the semaphore's calls made."""
        while not self._free_instances:
            self._instance_freed = asyncio.get_running_loop().create_future()
            try:
                await self._instance_freed
            finally:
                self._instance_freed = None
        self._free_instances -= 1

    def _release_instance(self) -> None:
        self._free_instances += 1
        freed = self._instance_freed
        if freed is not None and not freed.done():
            freed.set_result(None)

    def _expired(self, pending: Pending, now: float) -> bool:
        """Cancelled by its client, or past its deadline (then failed with DEADLINE_EXCEEDED)."""
        if pending.future.done():
            return True
        if pending.deadline is not None and now >= pending.deadline:
            pending.future.set_exception(
                DeadlineExceeded("deadline exceeded while queued; the request was not run")
            )
            return True
        return False

    def _take_ready(self, batch: list[Pending], size: int) -> int:
        """Move queued requests into ``batch`` while they fit; expired or cancelled ones are dropped."""
        now = asyncio.get_running_loop().time()
        while self._queue:
            head = self._queue[0]
            if self._expired(head, now):
                self._queue.popleft()
                continue
            if batch and (
                not self.options.coalesce or size + head.size > self.options.max_batch_size
            ):
                break
            batch.append(self._queue.popleft())
            size += head.size
        return size

    async def _wait_for_arrival(self) -> None:
        while not self._queue:
            await self._next_arrival(None)

    async def _next_arrival(self, timeout_s: float | None) -> None:
        """Until submit() queues a request, or ``timeout_s`` passed. One future and at most one timer: with
        asyncio.Event and asyncio.wait_for, each wait made a task and took three trips through the event
        loop to wake, paid by every request that joins a forming batch."""
        loop = asyncio.get_running_loop()
        arrival = self._arrival = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _settle, arrival)
        try:
            await arrival
        finally:
            self._arrival = None
            if timer is not None:
                timer.cancel()

    async def _collect(self) -> list[Pending]:
        """The next batch from the queue (empty when everything queued had expired or was cancelled)."""
        loop = asyncio.get_running_loop()
        batch: list[Pending] = []
        size = self._take_ready(batch, 0)
        if not batch:
            # Nothing left (an early start took it, or it expired): a regroup's state waits for the batch
            # that has requests.
            return batch
        delay = self._queue_delay_s()
        companions = target = min(self.options.max_batch_size, 1 + self._companions_expected())
        regroup_until = 0.0
        if self._regroup_rows:
            target = max(target, min(self.options.max_batch_size, self._regroup_rows))
            regroup_until = self._refill_until or loop.time() + max(
                delay, REGROUP_WAIT_SHARE * self._regroup_after_ns / 1e9
            )
            self._regroup_rows, self._refill_until = 0, 0.0
        while batch and self.options.coalesce and delay > 0 and size < target:
            # The expected companions are waited for until the oldest request's delay is spent; rows beyond
            # them (a regroup's) only within the regroup's window.
            until = (
                max(batch[0].arrived + delay, regroup_until) if size < companions else regroup_until
            )
            remaining = until - loop.time()
            if remaining <= 0 or (
                self._queue and size + self._queue[0].size > self.options.max_batch_size
            ):
                break
            await self._next_arrival(remaining)
            size = self._take_ready(batch, size)
        return batch

    def _queue_delay_s(self) -> float:
        """How long a batch may wait for companions: ``max_queue_delay_us``, or ``busy_queue_delay_us`` where that
        is longer and the event loop is busy (LoopBusy). A delay of 0 (never wait) stays 0."""
        delay_us = self.options.max_queue_delay_us
        if delay_us and self.options.busy_queue_delay_us > delay_us and self._loop_busy.read():
            delay_us = self.options.busy_queue_delay_us
            self.busy_loop_batches += 1
            self._busy_loop_batches.inc()
        return delay_us / 1e6

    def _runs_inline(self, requests: int, rows: int) -> bool:
        """Whether this batch runs on the event loop: its measured compute time is within
        ``inline_compute_us``, nobody else is inside the batcher nor was recently, no other callback waits
        for the loop, and no probe found a hidden backlog in the last INLINE_BACKOFF_S.

        An inline call hides concurrency: while it holds the loop, other requests wait in gRPC, unseen,
        and come in one by one afterwards, so the batcher would keep running lone requests serially
        instead of batching them. Hence every INLINE_PROBE_EVERY-th eligible call goes to a model thread,
        leaving the loop free; if requests arrive meanwhile, inline calls stop for INLINE_BACKOFF_S.
        """
        expected = self.compute_times.expected_ns(rows)
        if expected is None or expected > self.options.inline_compute_us * 1000:
            return False
        if self._inside > requests or self.concurrency >= 0.5:
            return False
        loop = asyncio.get_running_loop()
        if loop.time() < self._contended_until:
            return False
        # Callbacks already waiting for the loop (a burst of requests gRPC has delivered but the batcher has
        # not seen yet) would wait behind an inline call. asyncio's ready queue is the only place that shows
        # them; uvloop (the default loop, --event-loop) has none and relies on the probes alone.
        if len(getattr(loop, "_ready", ())) > 0:
            return False
        return self._inline_streak < INLINE_PROBE_EVERY

    def _prepare(self, batch: list[Pending]) -> Launch | None:
        """The batch's model input and requested outputs, its expired or cancelled requests dropped (a batch
        that waited for companions is checked again); None when none is left."""
        now = asyncio.get_running_loop().time()
        batch = [pending for pending in batch if not self._expired(pending, now)]
        if not batch:
            return None
        started = time.perf_counter_ns()
        if len(batch) == 1:
            outputs, images = batch[0].outputs, batch[0].images
        else:
            requested = {name for pending in batch for name in pending.outputs}
            outputs = [name for name in self.output_order if name in requested]
            images = np.concatenate([p.images for p in batch])
        return Launch(batch, outputs, images, started, time.perf_counter_ns())

    async def _execute(self, batch: list[Pending]) -> None:
        """Run ``batch`` on the instance its caller took, answer its requests, release the instance."""
        try:
            launch = self._prepare(batch)
        except Exception as exc:
            self._fail(batch, exc)
            self._release_instance()
            return
        if launch is None:
            self._release_instance()
            return
        await self._complete(launch, None)

    def _long(self, ns: float) -> bool:
        """Whether a call of ``ns`` is long (BatchingOptions.long_call_us). Against the threshold: the event
        loop's ~0.1-0.2 ms a request to answer a batch and ~1 ms for a woken model thread to get the GIL. A
        short call gains nothing from the long-call handling and batches better without it (handing a batch
        over before answering cost digits 5-11% on one core, 2026-11-29)."""
        return 0 < self.options.long_call_us * 1000 <= ns

    def _after_long_call(self, answered_rows: int, call_ns: int) -> bool:
        """After a long call (``_long``) of ``call_ns``, before its ``answered_rows`` are answered: regroup,
        start the queued batch at once, or leave it to the dispatcher. True: the instance passed to a batch
        started here; False: it is to be released.

        - Regroup, when the queued rows are fewer than the expected companions and they would fit one batch
          with the rows about to be answered: the dispatcher's next batch then waits, up to
          max(``max_queue_delay_us``, REGROUP_WAIT_SHARE * ``call_ns``) from when it starts collecting,
          until it also holds that many rows, the requests those answers bring back. Without this, n
          closed-loop clients on one instance settle into two alternating batches of about n/2 (the queued
          half runs while the answered half comes back): ResNet50 at concurrency 8 ran batches of 4.00,
          0.65 of in-process ONNX Runtime at batch 4 and 0.47 at batch 8; regrouped within 1 ms, 5.7 and
          0.81 / 0.59 (docs/benchmarks.md).
        - Regroup too when the queue is empty (the batch took every request): the next batch waits for the
          answered rows as well, until REGROUP_WAIT_SHARE * ``call_ns`` from now. Rows beyond the companions
          estimate are never waited for past that (a burst's clients need not come back), while the estimate
          itself is lowered by the answered clients coming back one by one (each sees fewer inside): 8
          closed-loop clients ran 8, 5, 8, 5 without it, 8, 8, 8 with it (tests/test_batching.py); ResNet50
          at c=8, batches 5.5 -> 7.1-7.3, 1.02-1.09x in interleaved A/Bs (docs/benchmarks.md).
        - Start at once, when the queue is ready to leave (companions all there, or its oldest request's
          delay spent): the model does not wait for the loop to answer the finished batch."""
        delay = self.options.max_queue_delay_us / 1e6
        head = self._queue[0] if self._queue else None
        if head is None:
            if self.options.coalesce and delay > 0:
                self._regroup_rows = answered_rows
                self._refill_until = (
                    asyncio.get_running_loop().time() + REGROUP_WAIT_SHARE * call_ns / 1e9
                )
            return False
        if head.future.done():
            return False
        target = min(self.options.max_batch_size, 1 + self._companions_expected())
        queued_rows = sum(pending.size for pending in self._queue)
        if self.options.coalesce and queued_rows < target:
            if delay > 0 and queued_rows + answered_rows <= self.options.max_batch_size:
                self._regroup_rows = queued_rows + answered_rows
                self._regroup_after_ns, self._refill_until = call_ns, 0.0
                return False
            if asyncio.get_running_loop().time() < head.arrived + delay:
                return False  # still collecting companions: the dispatcher takes it when ready
        batch: list[Pending] = []
        self._take_ready(batch, 0)
        try:
            launch = self._prepare(batch)
        except Exception as exc:
            self._fail(batch, exc)
            return False
        if launch is None:
            return False
        call = self.threads.submit(
            timed, self.run, launch.images, launch.outputs, handover_s=HANDOVER_S
        )
        task = asyncio.get_running_loop().create_task(self._complete(launch, call))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        self.early_starts += 1
        return True

    @staticmethod
    def _fail(batch: list[Pending], exc: Exception) -> None:
        """A failed call fails only the requests in its batch."""
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _complete(self, launch: Launch, call: asyncio.Future | None) -> None:
        """Run ``launch`` (``call``: already submitted to a model thread), answer its requests, and release
        the instance or hand it to the next batch."""
        batch, outputs, images = launch.batch, launch.outputs, launch.images
        started, input_done = launch.started, launch.input_done
        handed_over = False
        try:
            if call is None and self._runs_inline(len(batch), len(images)):
                results = self.run(images, outputs)
                self.inline_calls += 1
                self._inline_streak += 1
                self._inline_calls.inc()
                self.compute_times.record(len(images), time.perf_counter_ns() - input_done)
            else:
                probing = call is None and self._inline_streak >= INLINE_PROBE_EVERY
                if call is None:
                    expected = self.compute_times.expected_ns(len(images))
                    call = self.threads.submit(
                        timed,
                        self.run,
                        images,
                        outputs,
                        handover_s=HANDOVER_S
                        if expected is not None and self._long(expected)
                        else 0.0,
                    )
                results, compute_ns = await call
                self._thread_calls.inc()
                self.compute_times.record(len(images), compute_ns)
                if probing:
                    self._inline_streak = 0
                    if self._inside > len(
                        batch
                    ):  # others arrived while the loop was free: there is a backlog
                        self._contended_until = asyncio.get_running_loop().time() + INLINE_BACKOFF_S
                if self._long(compute_ns):
                    handed_over = self._after_long_call(len(images), compute_ns)
            infer_done = time.perf_counter_ns()
            for name in outputs:  # never split a result that does not have one row per input row
                if len(results[name]) != len(images):
                    raise ModelOutputMismatch(
                        f"the model returned {len(results[name])} rows of output {name!r} "
                        f"for a batch of {len(images)} input rows; the batch failed"
                    )
            offset = queued_ns = 0
            alone = len(batch) == 1  # the whole result is the request's: nothing to split
            for pending in batch:
                rows = slice(offset, offset + pending.size)
                offset += pending.size
                if not pending.future.done():
                    pending.future.set_result(
                        results
                        if alone
                        else {name: results[name][rows] for name in pending.outputs}
                    )
                if pending.timing is not None:
                    pending.timing[:] = (input_done, infer_done, len(images))
                queued_ns += started - pending.enqueued_ns
                self._queue_seconds.observe((started - pending.enqueued_ns) / 1e9)
            self.statistics.queue.add(queued_ns, len(batch))
            self.statistics.record_execution(
                offset,
                input_done - started,
                infer_done - input_done,
                time.perf_counter_ns() - infer_done,
            )
            self._compute_seconds.observe((infer_done - input_done) / 1e9)
            self._batch_size.observe(offset)
        except Exception as exc:
            self._fail(batch, exc)
        finally:
            if not handed_over:
                self._release_instance()
