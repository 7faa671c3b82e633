"""Model calls off the event loop, on threads of their own.

A call goes in through a ``queue.SimpleQueue`` and its result comes back with one
``loop.call_soon_threadsafe``: leaner than ``loop.run_in_executor`` (no concurrent.futures.Future and
callback chain): on 2 cores, for a server doing nothing but the hand-off, 64 us less median latency for a
lone client and 11% more throughput at concurrency 32 (see the notes at the end of
docs/benchmarks.md). ONNX Runtime and TensorFlow release the GIL while they compute.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

_STOP = object()


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by its caller meanwhile
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ModelThreads:
    """``count`` threads running submitted calls in submission order (as far as ``count`` allows)."""

    def __init__(self, count: int, name: str = "bnserve-model"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable, *args, handover_s: float = 0.0) -> asyncio.Future:
        """Run ``function(*args)`` on a model thread; await the returned future for its result.

        ``handover_s`` > 0: block the calling thread, the GIL released, until a model thread has started the
        call, at most that long. A woken model thread needs the GIL to start, and a busy event loop keeps it
        until it next waits for I/O: for ResNet50 at concurrency 8 on 2 cores, 1.15 ms (p50) from submit to
        start, against 0.05 ms with the hand-over, and the model thread busy 0.84 of the time against 0.95.
        For a long call that is worth the loop's short wait; for a short one it is not."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        started = None
        if handover_s > 0:
            started = threading.Lock()
            started.acquire()
        self._jobs.put((loop, future, function, args, started))
        if started is not None:
            started.acquire(timeout=handover_s)
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, future, function, args, started = job
            if started is not None:
                started.release()  # the caller waits for this, the GIL released
            try:
                result, error = function(*args), None
            except (
                BaseException
            ) as exc:  # handed to the awaiting coroutine, never lost in this thread
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_resolve, future, result, error)
            except RuntimeError:  # the loop closed while the call ran: nobody is waiting any more
                pass

    def shutdown(self) -> None:
        """Finish the queued calls, then stop the threads."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()
