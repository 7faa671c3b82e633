"""Bearer-token authentication for every RPC, as a gRPC server interceptor."""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from bnserve.core.errors import UserError

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"--auth-token-file {str(path)!r}: unreadable ({exc.strerror})") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--auth-token-file {str(path)!r}: expected one token without spaces")
    return token


def denying(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # makes this an async generator, as streaming handlers are

    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return factory(streaming if handler.response_streaming else unary,
                   request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC must carry ``authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, token: str, health_without_auth: bool):
        self._expected = f"Bearer {token}".encode()
        self._open_prefixes = (HEALTH_PREFIX,) if health_without_auth else ()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._open_prefixes):
            return handler
        supplied = next((value for key, value in handler_call_details.invocation_metadata or ()
                         if key == "authorization"), "")
        supplied = supplied.encode() if isinstance(supplied, str) else supplied
        if hmac.compare_digest(supplied, self._expected):
            return handler
        reason = "missing 'authorization' metadata" if not supplied else "invalid bearer token"
        return denying(handler, f"{reason}; expected 'authorization: Bearer <token>'")
