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

from bnserve.server.errors import BodyTooLarge

log = logging.getLogger("bnserve.server")

OFF_LOOP_BYTES = 256 * 1024
"""About 5 ms of json.loads here; from this size on a body is decoded in the decoding process."""
SEPARATOR_SLACK = 4096
"""Commas a request's fields other than its tensor may add (names, shapes, parameters)."""


def separator_limit(max_batch_size: int, sample_shape: tuple[int, ...]) -> int:
    """The most commas a JSON body may hold for a model whose batches hold ``max_batch_size`` samples of
    ``sample_shape``: 2 B prod(shape) + SEPARATOR_SLACK.

    Every element of a JSON array but its first follows a comma, so a body's Python objects number at most
    its commas plus one chain of nested first elements (which the parser's depth limit bounds). A tensor of
    V values in any nesting layout (the innermost dimension 1 included, one ``[v]`` per value) holds fewer
    than 2 V commas."""
    values = max_batch_size
    for dimension in sample_shape:
        values *= max(int(dimension), 1)
    return 2 * values + SEPARATOR_SLACK


def bounded_decode(
    limit: int | None, json_size: int, function: Callable[..., Any], body: bytes, *args
) -> Any:
    """``function(body, *args)`` once the commas of the body's first ``json_size`` bytes (its JSON; the
    binary extension's tensors follow) are within ``limit``: counting them is one pass at memchr speed,
    while json.loads of a body of small numbers builds ~30 bytes of Python objects per byte (63 MiB of JSON
    once took the server from 105 to 695 MB before any count was checked)."""
    if limit is not None:
        separators = body.count(b",", 0, json_size)
        if separators > limit:
            raise BodyTooLarge(
                f"body: {separators} JSON separators (','), more than the {limit} that a request of "
                "the model's max_batch_size inputs can hold; send fewer inputs per request"
            )
    return function(body, *args)


class JsonDecoder:
    """One decoding process per server, started on the first large body and stopped with the HTTP site."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def decode(
        self, size: int, limit: int | None, function: Callable[..., Any], body: bytes, *args
    ) -> Any:
        """``bounded_decode(limit, size, function, body, *args)``: in place for a JSON part of ``size`` bytes under
        OFF_LOOP_BYTES, else in the decoding process (in place too, logged, if that process died and cannot
        be restarted)."""
        if size < OFF_LOOP_BYTES:
            return bounded_decode(limit, size, function, body, *args)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, bounded_decode, limit, size, function, body, *args
            )
        except BrokenProcessPool:
            log.warning("the JSON decoding process died; decoding this body on the event loop")
            self._pool = None
            return bounded_decode(limit, size, function, body, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
