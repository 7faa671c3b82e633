"""Assembling the gRPC server: every service on one port, start-up, signals, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from protos import inference_pb2, inference_pb2_grpc
from server import grpc_tfserving
from server.dataplane import DataPlane
from server.grpc_v2 import InferenceServicer
from server.models import READY, ModelRegistry
from server.settings import ServerSettings

log = logging.getLogger("bnserve.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    registry: ModelRegistry
    health: health_aio.HealthServicer
    executor: ThreadPoolExecutor

    async def update_health(self) -> None:
        """Overall SERVING; per model SERVING while it has a ready version."""
        await self.health.set("", SERVING)
        names = {state.name for state in self.registry.index()}
        for name in names:
            ready = any(s.state == READY for s in self.registry.states(name))
            await self.health.set(name, SERVING if ready else NOT_SERVING)

    async def stop(self, grace_seconds: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
        self.executor.shutdown(wait=True)


async def create_server(settings: ServerSettings) -> RunningServer:
    """Load the repository, bind ``settings.host:settings.grpc_port`` (0: any free port) and start."""
    registry = ModelRegistry(settings)
    registry.load_all()
    # One thread per model instance that may run at once, plus one for repository loads.
    executor = ThreadPoolExecutor(max_workers=settings.instances + 1, thread_name_prefix="bnserve-infer")
    dataplane = DataPlane(registry, executor, settings.batching_options())
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes)]
    server = grpc.aio.server(options=options)
    health = health_aio.HealthServicer()
    running = RunningServer(server, 0, registry, health, executor)

    def models_changed():
        asyncio.get_running_loop().create_task(running.update_health())

    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane, models_changed), server)
    server.add_generic_rpc_handlers(grpc_tfserving.handlers(grpc_tfserving.TensorFlowServingServicer(dataplane)))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([
        inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ], server)
    running.port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await server.start()
    await running.update_health()
    return running


async def serve(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM, then stop accepting and let in-flight requests finish."""
    running = await create_server(settings)
    log.info("listening on %s:%d (backend %s, %d model versions ready)", settings.host, running.port,
             settings.backend, len(running.registry.served()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight requests (grace %.1f s)", settings.grace_seconds)
    await running.stop(settings.grace_seconds)
    log.info("stopped")
