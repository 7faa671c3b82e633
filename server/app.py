"""Assembling the gRPC server: every service on one port, polling, start-up, signals, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from bnserve.core.errors import UserError
from bnserve.protos import inference_pb2, monitor_pb2_grpc
from bnserve.server import grpc_monitor, grpc_tfserving, tfserving_documents
from bnserve.server.auth import BearerToken, TokenAuthInterceptor
from bnserve.server.controller import RepositoryController
from bnserve.server.dataplane import DataPlane
from bnserve.server.grpc_v2 import GenericHandlersOnly, InferenceServicer, add_inference_service
from bnserve.server.health import ReadinessHealth
from bnserve.server.metrics import serve_metrics
from bnserve.server.models import ModelRegistry
from bnserve.server.settings import ServerSettings

log = logging.getLogger("bnserve.server")


FILES_BESIDE_CONNECTIONS = 256
"""Descriptors the process needs besides its connections: models, logs, the repository scan, metrics."""


def fit_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit to hold max_connections plus FILES_BESIDE_CONNECTIONS, as far as the
    hard limit allows (logged when it does not: then the connection cap is what protects the process)."""
    needed = max_connections + FILES_BESIDE_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning(
                "open-file limit %d (hard) is below --max-connections %d + %d: lower --max-connections",
                hard,
                max_connections,
                FILES_BESIDE_CONNECTIONS,
            )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    settings: ServerSettings
    dataplane: DataPlane
    controller: RepositoryController
    metrics_port: int | None = None
    http: object | None = None
    """The aiohttp AppRunner of the HTTP port (None without one)."""
    http_port: int | None = None

    @property
    def registry(self) -> ModelRegistry:
        return self.controller.registry

    async def stop(self, cut_drain: asyncio.Event | None = None) -> None:
        """Readiness false on every protocol and health NOT_SERVING; keep serving new requests for
        --drain-seconds (endpoints are being removed) or until ``cut_drain`` is set (a second signal);
        then refuse them (UNAVAILABLE), let in-flight ones finish within --grace-seconds, stop."""
        self.dataplane.begin_drain()
        await self.controller.health.refresh()
        if self.settings.drain_seconds:
            cut = cut_drain or asyncio.Event()
            try:
                await asyncio.wait_for(cut.wait(), self.settings.drain_seconds)
                log.info("second signal: drain cut short, finishing in-flight requests")
            except TimeoutError:
                pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace_seconds
        await self.dataplane.drain(self.settings.grace_seconds)
        if (
            self.http is not None
        ):  # closes the listener and idle connections; open requests have drained
            await self.http.cleanup()
        await self.server.stop(max(0.0, deadline - loop.time()))
        await self.controller.stop()
        await self.dataplane.stop()


async def create_server(settings: ServerSettings) -> RunningServer:
    """Load the repository, bind ``settings.host:settings.grpc_port`` (0: any free port) and start."""
    registry = ModelRegistry(settings)
    dataplane = DataPlane(registry)
    health = ReadinessHealth(dataplane)
    controller = RepositoryController(settings, registry, dataplane, health)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # gRPC sets SO_REUSEPORT by default: a second server on a busy port would "start" and the
        # kernel would split connections between the two. Only --workers share a port on purpose.
        ("grpc.so_reuseport", 1 if settings.share_port else 0),
        # Connections are a resource like memory: a cap, and no socket held for free.
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_connection_idle_ms", int(settings.connection_idle_seconds * 1000)),
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_seconds * 1000)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    fit_open_files(settings.max_connections)
    token = BearerToken(settings.auth_token) if settings.auth_token else None
    interceptors = [TokenAuthInterceptor(token, settings.health_without_auth)] if token else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    running = RunningServer(server, 0, settings, dataplane, controller)
    add_inference_service(InferenceServicer(dataplane, controller), server)
    server.add_generic_rpc_handlers(
        grpc_tfserving.handlers(grpc_tfserving.TensorFlowServingServicer(dataplane))
    )
    generic_only = GenericHandlersOnly(server)
    monitor_pb2_grpc.add_MonitorServicer_to_server(
        grpc_monitor.MonitorServicer(dataplane), generic_only
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, generic_only)
    # reflection.enable_server_reflection, whose check for a grpc.aio.Server the wrapper would not pass
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            [
                inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                # Listed so tools see every service of the port; their messages are described under the project's
                # own wire-compatible package (bnserve.tfserving), see protos/tfserving.proto.
                *tfserving_documents.SERVICE_NAMES,
                grpc_monitor.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ]
        ),
        generic_only,
    )
    address = f"{settings.host}:{settings.grpc_port}"
    credentials = settings.server_credentials()
    try:
        running.port = (
            server.add_secure_port(address, credentials)
            if credentials
            else server.add_insecure_port(address)
        )
    except RuntimeError:
        raise UserError(
            f"--grpc-port {settings.grpc_port}: port {settings.grpc_port} is in use on {settings.host} "
            "(or this address cannot be bound)"
        ) from None
    if settings.metrics_port is not None:
        try:
            running.metrics_port = serve_metrics(
                settings.metrics_host,
                settings.metrics_port,
                token if settings.metrics_auth else None,
            )
        except OSError as exc:
            await server.stop(0)
            raise UserError(
                f"--metrics-port {settings.metrics_port}: cannot serve metrics on "
                f"{settings.metrics_host}:{settings.metrics_port} ({exc.strerror})"
            ) from None
    if settings.http_port:
        from bnserve.server.http_site import (
            start_http,  # aiohttp is imported only by servers that speak HTTP
        )

        try:
            running.http, running.http_port = await start_http(dataplane, controller, settings)
        except BaseException:
            await server.stop(0)
            raise
    await server.start()
    # The ports answer from here on: live, and not ready on any protocol until the repository is loaded
    # (in the loader thread, so that probes are answered meanwhile).
    await health.refresh()
    log.info(
        "ports bound (gRPC %s:%d%s); loading the repository: live, not ready until it is loaded",
        settings.host,
        running.port,
        f", HTTP {running.http_port}" if running.http_port else "",
    )
    try:
        await asyncio.get_running_loop().run_in_executor(
            controller.loader, controller.load_at_start
        )
    except BaseException:
        await running.stop()
        raise
    dataplane.loading = False
    for name in sorted(set(settings.model_options) - set(registry.model_names())):
        log.warning(
            "--model-option %s: the repository has no model %r (yet); the option applies when it appears",
            name,
            name,
        )
    await health.refresh()
    controller.start()
    return running


def run(settings: ServerSettings) -> None:
    """Serve on the event loop ``settings.event_loop`` names until stopped (serve)."""
    if settings.event_loop == "asyncio":
        asyncio.run(serve(settings))
        return
    try:
        import uvloop
    except ImportError as exc:
        # uvloop has no Windows build, so the dependency is not installed there.
        raise UserError(
            f"--event-loop uvloop: uvloop is not installed ({exc}); install it (pip install uvloop) "
            "or pass --event-loop asyncio"
        ) from None
    uvloop.run(serve(settings))


async def serve(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM, then stop accepting and let in-flight requests finish."""
    running = await create_server(settings)
    # Handlers first: whoever saw the "listening" line may send SIGTERM at once and expect a clean stop.
    stop = asyncio.Event()
    cut_drain = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # The first signal stops; a second one (an operator's second Ctrl-C) ends --drain-seconds early,
        # and the in-flight requests still get --grace-seconds.
        (cut_drain if stop.is_set() else stop).set()

    # SIGHUP (the terminal went away, or an operator's habit) is a graceful stop too: the repository is
    # followed by polling, so there is nothing to reload.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)
    scheme = "TLS" if settings.tls_cert else "plaintext"
    if running.metrics_port is not None:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, running.metrics_port)
    if running.http_port is not None:
        log.info(
            "HTTP on %s://%s:%d (KServe v2 REST /v2, TensorFlow Serving REST /v1)",
            "https" if settings.tls_cert else "http",
            settings.host,
            running.http_port,
        )
    log.info(
        "listening on %s:%d (%s, backend %s, event loop %s, %d model versions ready, polling %s)",
        settings.host,
        running.port,
        scheme,
        settings.backend,
        settings.event_loop,
        len(running.registry.served()),
        f"every {settings.poll_seconds:g} s"
        if settings.polling
        else f"off, model control {settings.model_control}",
    )
    await stop.wait()
    if settings.drain_seconds:
        log.info(
            "stopping: readiness false, still serving for --drain-seconds %g (a second signal ends that), "
            "then finishing in-flight requests (grace %.1f s)",
            settings.drain_seconds,
            settings.grace_seconds,
        )
    else:
        log.info(
            "stopping: health NOT_SERVING, refusing new requests, finishing in-flight ones (grace %.1f s)",
            settings.grace_seconds,
        )
    await running.stop(cut_drain)
    log.info("stopped (pid %d)", os.getpid())
