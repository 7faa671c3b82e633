"""Serving errors: each knows its gRPC status code, its HTTP status, and builds its own message.

HTTP statuses follow what the REST protocols specify and Triton / TensorFlow Serving answer: 400 for a
request the client must change, 404 for an unknown model or version, 503 for "retry later" (shutting
down, queue full), 500 only for the server's own faults."""

from __future__ import annotations

import logging
import time

import grpc

from bnserve.core.errors import BnserveError, UserError


class ServingError(BnserveError):
    code = grpc.StatusCode.INTERNAL
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404

    def __init__(self, name: str, version: str | int | None = None, reason: str = ""):
        where = f"model {name!r}" + (f" version {version}" if version not in (None, "") else "")
        super().__init__(f"{where} not found" + (f": {reason}" if reason else ""))


class InvalidInput(ServingError):
    """A request field is wrong; the message names the field and what was expected."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class BodyTimeout(ServingError):
    """An HTTP body that did not arrive whole within --body-seconds: 408, and the connection is closed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 408


class BodyTooLarge(ServingError):
    """An HTTP body over its limit, found before or while reading it: 413, and the connection is closed."""

    http_status = 413
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelLoadFailed(ServingError):
    """No version of the model could be loaded (Triton answers INTERNAL here too)."""

    code = grpc.StatusCode.INTERNAL
    http_status = 400


class QueueFull(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 503


class ModelOutputMismatch(ServingError):
    """The model answered something other than its declared outputs (INTERNAL: the server's fault, not the client's)."""

    code = grpc.StatusCode.INTERNAL


class ModelControlDisabled(ServingError):
    """RepositoryModelLoad/Unload outside --model-control explicit (Triton answers UNAVAILABLE here too)."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 400

    def __init__(self, mode: str):
        super().__init__(
            f"explicit model load / unload is not allowed: the server runs with --model-control {mode} "
            "(start it with --model-control explicit to manage models by RPC)"
        )


class ResponseTooLarge(ServingError):
    """The answer would exceed --max-message-bytes: refused before anything is computed or built."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 400


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Unimplemented(ServingError):
    """A method of a protocol that bnserve does not serve, with the reason."""

    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class StartupError(UserError):
    """The server cannot start as configured (e.g. --device gpu without a usable GPU): exit status 2."""


class RateLimitedLog:
    """At most one line per ``interval_s``; the lines left out in between are counted in the next one. Every
    log line a client can cause at will goes through one of these."""

    def __init__(self, logger: logging.Logger, interval_s: float, counted: str = "lines"):
        self.logger = logger
        self.interval_s = interval_s
        self.counted = counted
        """What the lines left out are called in the count: "(+3 more errors not logged)"."""
        self.last = -float("inf")
        self.suppressed = 0

    def log(self, level: int, message: str, *args) -> bool:
        """Log ``message % args`` unless a line went out less than interval_s ago; whether it was logged."""
        now = time.monotonic()
        if now - self.last < self.interval_s:
            self.suppressed += 1
            return False
        extra = f" (+{self.suppressed} more {self.counted} not logged)" if self.suppressed else ""
        self.logger.log(level, message + "%s", *args, extra)
        self.last, self.suppressed = now, 0
        return True


ERROR_LOG_INTERVAL_S = 1.0


class ErrorLogLimiter:
    """Request errors, one line a second at most on every protocol: ``METHOD -> CODE: message``."""

    def __init__(self, interval_s: float = ERROR_LOG_INTERVAL_S):
        self.lines = RateLimitedLog(logging.getLogger("bnserve.server"), interval_s, "errors")

    def log(self, method: str, code: grpc.StatusCode, message: str) -> None:
        self.lines.log(logging.INFO, "%s -> %s: %s", method, code.name, message)
