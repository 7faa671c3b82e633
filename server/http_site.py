"""The HTTP port itself: the listening site with its connection cap and TLS handshake timeout, the TLS
context, and start-up. The routes and handlers are bnserve.server.rest."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from bnserve.core.errors import UserError
from bnserve.server.controller import RepositoryController
from bnserve.server.dataplane import DataPlane
from bnserve.server.errors import RateLimitedLog
from bnserve.server.rest import JSON, HttpFront
from bnserve.server.settings import ServerSettings

log = logging.getLogger("bnserve.server")


def ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The same certificate, key and client CA as the gRPC port (files checked by ServerSettings)."""
    if settings.tls_cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's protocol of one connection, with the errors aiohttp raises itself (a request line or header
    it cannot parse, before any handler runs) answered like every other error, JSON ``{"error": ...}``, and
    logged in one line at most once a second instead of a traceback each (a client can send them at will)."""

    parse_errors = RateLimitedLog(log, 1.0, "unparsable requests")

    def log_exception(self, *args, **kwargs) -> None:
        exc = kwargs.get("exc_info")
        self.parse_errors.log(logging.INFO, "HTTP: a request could not be read (%s)", describe(exc))

    def handle_error(self, request, status=500, exc=None, message=None) -> web.StreamResponse:
        super().handle_error(
            request, status, exc, message
        )  # logs (above); raises if bytes were sent
        text = "internal error" if status == 500 else f"request: cannot be read ({describe(exc)})"
        response = web.Response(
            body=json.dumps({"error": text}).encode(), status=status, content_type=JSON
        )
        response.force_close()
        return response


def describe(exc: BaseException | None) -> str:
    """aiohttp's multi-line parser messages ("400, message:\n  Bad status line ...") on one line."""
    if exc is None:
        return "no details"
    return (
        " ".join(str(exc).replace(f"{getattr(exc, 'code', '')}, message:", "").split())
        or type(exc).__name__
    )


class RefusedConnection(asyncio.Protocol):
    """What a connection beyond --max-connections gets: closed at once, before a byte is read."""

    def connection_made(self, transport) -> None:
        transport.abort()


class CappedSite(web.BaseSite):
    """A TCP site holding at most ``max_connections`` connections (the gRPC port's --max-connections), with
    --handshake-seconds as the TLS handshake timeout: aiohttp's own TCPSite has neither. A TLS connection
    counts once its handshake is done (asyncio makes the HTTP protocol's connection then); until then the
    handshake timeout bounds how long it can stay."""

    def __init__(
        self, runner: web.AppRunner, settings: ServerSettings, ssl_context: ssl.SSLContext | None
    ):
        super().__init__(
            runner, ssl_context=ssl_context, backlog=min(settings.max_connections, 4096)
        )
        self.settings = settings
        self.refused = 0
        self.refusal_log = RateLimitedLog(log, 10.0)

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self.settings.host}:{self.settings.http_port}"

    def protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        if len(server.connections) >= self.settings.max_connections:
            self.refused += 1
            self.refusal_log.log(
                logging.WARNING,
                "HTTP: refusing connections beyond --max-connections %d (%d refused so far)",
                self.settings.max_connections,
                self.refused,
            )
            return RefusedConnection()
        # As web.Server() makes its handler, with the error answers above (aiohttp < 4 is pinned).
        return JsonErrorRequestHandler(server, loop=server._loop, **server._kwargs)

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self.protocol,
            self.settings.host,
            self.settings.http_port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_port=self.settings.share_port or None,
            ssl_handshake_timeout=self.settings.handshake_seconds if self._ssl_context else None,
        )


async def start_http(
    dataplane: DataPlane, controller: RepositoryController, settings: ServerSettings
) -> tuple[web.AppRunner, int]:
    """Serve HTTP on settings.host:settings.http_port; returns the runner (cleanup() stops it) and the port."""
    app = HttpFront(dataplane, controller, settings).application()
    # access_log None: a line per request would cost more than the request; errors are logged (rate-limited).
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=settings.connection_idle_seconds,
        shutdown_timeout=settings.grace_seconds,
        handle_signals=False,
    )
    await runner.setup()
    site = CappedSite(runner, settings, ssl_context(settings))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(
            f"--http-port {settings.http_port}: cannot listen on {settings.host}:{settings.http_port} "
            f"({exc.strerror})"
        ) from None
    return runner, runner.addresses[0][1]
