"""bnserve.Monitor: the drift monitor's state of a served version over gRPC (the HTTP twin is GET .../drift)."""

from __future__ import annotations

from bnserve.protos import monitor_pb2 as pb
from bnserve.protos import monitor_pb2_grpc
from bnserve.server.dataplane import DataPlane
from bnserve.server.grpc_errors import grpc_errors
from bnserve.server.monitor import DriftStatus

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Monitor"].full_name


def drift_response(status: DriftStatus) -> pb.DriftResponse:
    return pb.DriftResponse(
        name=status.name,
        version=status.version,
        monitored=status.monitored,
        reason=status.reason,
        window=status.window,
        calibrated_window=status.calibrated_window,
        sample_rate=status.sample_rate,
        windows=status.windows,
        samples_in_window=status.samples_in_window,
        dropped=status.dropped,
        skipped=status.skipped,
        max_share=status.max_share,
        alarm=status.alarm,
        layers=[
            pb.LayerDrift(
                layer=layer.layer,
                name=layer.name,
                threshold=layer.threshold,
                has_score=layer.score is not None,
                score=layer.score or 0.0,
                alarm=layer.alarm,
                history=layer.history,
            )
            for layer in status.layers
        ],
    )


class MonitorServicer(monitor_pb2_grpc.MonitorServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    @grpc_errors
    async def Drift(self, request, context):
        return drift_response(self.dataplane.drift(request.name, request.version))
