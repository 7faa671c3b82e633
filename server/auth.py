"""Bearer-token authentication, one check for every port: the gRPC interceptor, the HTTP middleware and the
/metrics endpoint all ask BearerToken."""

from __future__ import annotations

import hmac

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class BearerToken:
    """``authorization: Bearer <token>``, compared in constant time (hmac.compare_digest)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def refusal(self, supplied: str | bytes | None, name: str, carrier: str) -> str | None:
        """None when ``supplied`` (the value of ``name``, a gRPC "metadata" entry or an HTTP "header") carries
        the token; else why not."""
        supplied = (supplied or "").encode() if not isinstance(supplied, bytes) else supplied
        if hmac.compare_digest(supplied, self._expected):
            return None
        reason = f"missing '{name}' {carrier}" if not supplied else "invalid bearer token"
        return f"{reason}; expected '{name}: Bearer <token>'"


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
    return factory(
        streaming if handler.response_streaming else unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC must carry ``authorization: Bearer <token>``; with ``health_without_auth`` the health service
    stays open for probes."""

    def __init__(self, token: BearerToken, health_without_auth: bool):
        self._token = token
        self._open_prefixes = (HEALTH_PREFIX,) if health_without_auth else ()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._open_prefixes):
            return handler
        supplied = next(
            (
                value
                for key, value in handler_call_details.invocation_metadata or ()
                if key == "authorization"
            ),
            None,
        )
        refusal = self._token.refusal(supplied, "authorization", "metadata")
        return handler if refusal is None else denying(handler, refusal)
