"""Mapping errors to gRPC status codes, in one place."""

from __future__ import annotations

import functools
import logging

import grpc

from bnserve.server.errors import ErrorLogLimiter, ServingError

log = logging.getLogger("bnserve.server")

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
