"""Large JSON bodies are decoded in a process of their own, so that the event loop keeps answering.

``json.loads`` holds the GIL for the whole parse (C code, no bytecode boundary at which to switch): in a
thread it would still stop the event loop, which once left every client of the port, gRPC health probes
included, waiting 3.9 s behind one 63 MiB body. A spawned process (never forked: the gRPC core runs threads)
takes the bytes and hands back the decoded request, whose arrays cross the pipe as raw bytes. Bodies under
OFF_LOOP_BYTES are decoded in place: below it the hand-over costs more than the parse.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

log = logging.getLogger("bnserve.server")

OFF_LOOP_BYTES = 256 * 1024
"""About 5 ms of json.loads here; from this size on a body is decoded in the decoding process."""


class JsonDecoder:
    """One decoding process per server, started on the first large body and stopped with the HTTP site."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def decode(self, size: int, function: Callable[..., Any], *args) -> Any:
        """``function(*args)``: in place for a body of ``size`` under OFF_LOOP_BYTES, else in the decoding
        process (in place too, logged, if that process died and cannot be restarted)."""
        if size < OFF_LOOP_BYTES:
            return function(*args)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        except BrokenProcessPool:
            log.warning("the JSON decoding process died; decoding this body on the event loop")
            self._pool = None
            return function(*args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
