"""Mapping errors to gRPC status codes, in one place."""

from __future__ import annotations

import functools
import logging
import time

import grpc

from bnserve.server.errors import ServingError

log = logging.getLogger("bnserve.server")

ERROR_LOG_INTERVAL_S = 1.0


class ErrorLogLimiter:
    """At most one request-error line per interval, with a count of those left out."""

    def __init__(self, interval_s: float = ERROR_LOG_INTERVAL_S):
        self.interval_s = interval_s
        self.last = 0.0
        self.suppressed = 0

    def log(self, method: str, code: grpc.StatusCode, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval_s:
            self.suppressed += 1
            return
        extra = f" (+{self.suppressed} more errors not logged)" if self.suppressed else ""
        log.info("%s -> %s: %s%s", method, code.name, message, extra)
        self.last, self.suppressed = now, 0


limiter = ErrorLogLimiter()


def grpc_errors(method):
    """Turn ServingError into its status code and anything unexpected into INTERNAL (logged)."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ServingError as exc:
            code, message = exc.code, exc.message
            limiter.log(method.__name__, code, message)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        # Abort outside the except clause: raised inside it, AbortError would chain the caught exception,
        # whose traceback holds the frames that hold the request (up to --max-message-bytes each), and gRPC
        # keeps that chain in a reference cycle that only a full garbage collection frees.
        del request
        await context.abort(code, message)

    return wrapper
