"""Model calls in processes of their own, fed through shared memory: the event loop's interpreter and the
model never share a GIL.

Each instance is one child process (``spawn``: the server's gRPC threads must not be forked) holding its own
ONNX Runtime session of the version's model.onnx. A batch's images are written straight into a shared-memory
block that the child maps (``multiprocessing.shared_memory``; grown, by a new block, when a batch needs more);
the request that names the rows, the outputs wanted and any new block goes down a pipe, and the child's
answer (the outputs, which are small for a classifier, and the call's own duration) comes back up it. The
event loop watches each pipe with ``add_reader``, so an answer is taken on the loop thread: no thread hands
a result over and no thread waits for the GIL that the loop holds.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from bnserve.server.errors import Unavailable


def _child(connection, model_path: str, intra_op_threads: int) -> None:
    import onnxruntime

    from bnserve.core.repository import INPUT_NAME
    from bnserve.server.backends.onnx import session_options

    session = onnxruntime.InferenceSession(
        model_path, session_options(intra_op_threads), providers=["CPUExecutionProvider"]
    )
    block: shared_memory.SharedMemory | None = None
    while True:
        message = connection.recv()
        if message is None:
            break
        name, shape, outputs = message
        if block is None or block.name != name:
            if block is not None:
                block.close()
            # A spawned child shares the parent's resource tracker: attaching registers the name again in
            # the same set, and the block is unlinked by the parent (or by the tracker if the parent dies).
            block = shared_memory.SharedMemory(name=name)
        images = np.ndarray(shape, np.float32, buffer=block.buf)
        started = time.perf_counter_ns()
        try:
            results = dict(zip(outputs, session.run(outputs, {INPUT_NAME: images})))
            answer = (results, time.perf_counter_ns() - started, None)
        except Exception as exc:  # the batch fails, the process serves on
            answer = (None, 0, f"{type(exc).__name__}: {exc}")
        del images
        connection.send(answer)
    if block is not None:
        block.close()


@dataclass
class _Instance:
    process: multiprocessing.Process
    connection: object
    block: shared_memory.SharedMemory | None = None
    future: asyncio.Future | None = None
    dead: bool = False


class ModelProcesses:
    """``count`` child processes, each running one batch at a time; ``submit`` has ModelThreads' shape."""

    def __init__(self, count: int, model_path: Path, intra_op_threads: int):
        context = multiprocessing.get_context("spawn")
        self._instances: list[_Instance] = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_child,
                args=(child, str(model_path), intra_op_threads),
                name="bnserve-model-process",
                daemon=True,
            )
            process.start()
            child.close()
            self._instances.append(_Instance(process, parent))
        # No wait for the children here (this runs on the event loop): a batch sent before a child has
        # loaded its session waits in the pipe, so only the first batches pay the start (~1 s).
        self._free = list(self._instances)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for instance in self._instances:
            loop.add_reader(instance.connection.fileno(), self._answered, instance)

    def _answered(self, instance: _Instance) -> None:
        try:
            results, compute_ns, error = instance.connection.recv()
        except (EOFError, OSError):
            self._loop.remove_reader(instance.connection.fileno())
            instance.process.join(timeout=1)
            results, compute_ns = None, 0
            error = f"the model process (pid {instance.process.pid}) exited with status {instance.process.exitcode}"
            instance.dead = True
        future, instance.future = instance.future, None
        if not instance.dead:
            self._free.append(instance)
        if future is None or future.done():
            return
        if error is None:
            future.set_result((results, compute_ns))
        else:
            future.set_exception(Unavailable(f"model process: {error}"))

    def submit(
        self, function, run, images: np.ndarray, outputs: list[str], handover_s: float = 0.0
    ) -> asyncio.Future:
        """Run a batch on a free child process (the batcher's semaphore guarantees one is free); the future
        gives ``(results, compute_ns)`` as ``execution.ModelThreads.submit(batching.timed, ...)`` does.
        ``handover_s`` is ignored: a child process does not wait for this one's GIL to start."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._watch(loop)
        if (
            not self._free
        ):  # the batcher's semaphore counts every instance: here only dead ones are missing
            raise Unavailable(
                "model process: every model process of this version has exited; reload it"
            )
        instance = self._free.pop()
        needed = images.nbytes
        if instance.block is None or instance.block.size < needed:
            if instance.block is not None:
                instance.block.close()
                instance.block.unlink()
            instance.block = shared_memory.SharedMemory(create=True, size=max(needed * 2, 1 << 16))
        np.copyto(np.ndarray(images.shape, np.float32, buffer=instance.block.buf), images)
        try:
            instance.connection.send((instance.block.name, images.shape, outputs))
        except OSError:  # the child died and its pipe's end-of-file has not been read yet
            self._answered(instance)
            raise Unavailable(
                f"model process: the model process (pid {instance.process.pid}) exited; retry"
            ) from None
        instance.future = loop.create_future()
        return instance.future

    def shutdown(self) -> None:
        for instance in self._instances:
            if self._loop is not None and not instance.dead:
                try:
                    self._loop.remove_reader(instance.connection.fileno())
                except (ValueError, RuntimeError):
                    pass
            try:
                instance.connection.send(None)
            except OSError:
                pass
            instance.process.join(timeout=5)
            if instance.process.is_alive():
                instance.process.kill()
            if instance.block is not None:
                instance.block.close()
                instance.block.unlink()
