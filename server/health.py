"""grpc.health.v1.Health answering from the data plane's readiness, the one answer every protocol gives.

Check asks DataPlane at the moment of the call, as ServerReady, /v2/health/ready and the status page do.
Watch streams need a push: ``refresh()`` writes the same answers into the stock servicer's table whenever
readiness can change (a load, an unload, a poll that changed something, the start of the drain)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from bnserve.server.dataplane import DataPlane

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth(health_aio.HealthServicer):
    """Service "" is the server's readiness; a model's name is that model's readiness (NOT_FOUND for a name the
    repository does not hold)."""

    def __init__(self, dataplane: DataPlane):
        super().__init__()
        self.dataplane = dataplane

    def status(self, service: str):
        if self.dataplane.loading:  # no model is known yet, and none is ready
            return NOT_SERVING
        if service == "":
            return SERVING if self.dataplane.server_ready() else NOT_SERVING
        if service not in self.dataplane.model_names():
            return None
        return SERVING if self.dataplane.model_ready(service) else NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def refresh(self) -> None:
        """Push the current answers to Watch streams (and drop models that left the repository)."""
        if self.dataplane.draining:
            await self.enter_graceful_shutdown()
            return
        names = set(self.dataplane.model_names())
        for service in [s for s in self._server_status if s and s not in names]:
            del self._server_status[service]
        for service in ("", *sorted(names)):
            await self.set(service, self.status(service))
