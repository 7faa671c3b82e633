"""One readiness answer on every surface: gRPC v2 ServerReady/ModelReady, grpc.health.v1, HTTP v2
/v2/health/ready and model ready, TensorFlow Serving model status (gRPC and REST) and the status page, asked
at once through a hot reload, a refused model and a SIGTERM drain."""

import asyncio
import signal
import threading
import time

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from bnserve.protos import tfserving_pb2 as tfs
from tests.helpers.serving import POLL, infer_request, publish_copy, served_versions, wait_for
from tests.helpers.versions import with_slow_model
from tests.servers import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING


def flip_a_byte(directory):
    path = directory / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def surfaces(server, model="m") -> dict:
    """Every surface's readiness answer for the server and for ``model``, and the TF Serving states."""
    with grpc.insecure_channel(server.url) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        status_call = channel.unary_unary(
            "/tensorflow.serving.ModelService/GetModelStatus",
            request_serializer=tfs.GetModelStatusRequest.SerializeToString,
            response_deserializer=tfs.GetModelStatusResponse.FromString,
        )
        tf_grpc = status_call(
            tfs.GetModelStatusRequest(model_spec=tfs.ModelSpec(name=model)), timeout=10
        )
        answers = {
            "grpc ServerReady": stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready,
            "health ''": health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
            == SERVING,
            "http /v2/health/ready": requests.get(
                f"{server.http_url}/v2/health/ready", timeout=10
            ).status_code
            == 200,
            "status page": "<span class=ok>ready</span>"
            in requests.get(f"{server.http_url}/", timeout=10).text,
            "grpc ModelReady": stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=10).ready,
            "health model": health.Check(
                health_pb2.HealthCheckRequest(service=model), timeout=10
            ).status
            == SERVING,
            "http model ready": requests.get(
                f"{server.http_url}/v2/models/{model}/ready", timeout=10
            ).status_code
            == 200,
        }
    tf_rest = requests.get(f"{server.http_url}/v1/models/{model}", timeout=10).json()[
        "model_version_status"
    ]
    answers["tf grpc"] = {
        s.version: tfs.ModelVersionStatus.State.Name(s.state) for s in tf_grpc.model_version_status
    }
    answers["tf rest"] = {int(s["version"]): s["state"] for s in tf_rest}
    return answers


def assert_all(answers: dict, server_ready: bool, model_ready: bool, tf_states: dict) -> None:
    expected = {
        key: server_ready
        for key in ("grpc ServerReady", "health ''", "http /v2/health/ready", "status page")
    }
    expected |= {
        key: model_ready for key in ("grpc ModelReady", "health model", "http model ready")
    }
    expected |= {"tf grpc": tf_states, "tf rest": tf_states}
    assert answers == expected


def test_every_surface_gives_the_same_answer_through_reload_refusal_and_drain(repository, source):
    publish_copy(source, repository, "slow", 1, mutate=with_slow_model)
    server = start_server(repository, "--poll-seconds", POLL, "--grace-seconds", "20", http=True)
    try:
        assert_all(surfaces(server), True, True, {1: "AVAILABLE"})

        # Hot reload: version 2 takes over, version 1 is no longer chosen by latest:1.
        publish_copy(source, repository, "m", 2)
        wait_for(
            lambda: (
                served_versions(v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.url)))
                == ["2"]
            ),
            what="version 2 served",
        )
        assert_all(surfaces(server), True, True, {1: "END", 2: "AVAILABLE"})

        # A model whose only version is refused: the server is not ready (strict), m still is; and the
        # refused model is not ready anywhere (health "" said SERVING here before).
        publish_copy(source, repository, "broken", 1, mutate=flip_a_byte)
        wait_for(lambda: not surfaces(server)["grpc ServerReady"], what="the refused model seen")
        assert_all(surfaces(server), False, True, {1: "END", 2: "AVAILABLE"})
        assert_all(surfaces(server, "broken"), False, False, {1: "END"})

        # The drain: requests to the slow model keep the server answering while it drains.
        answers = {}

        async def slow_requests():
            async with grpc.aio.insecure_channel(server.url) as channel:
                stub = v2_grpc.GRPCInferenceServiceStub(channel)
                return await asyncio.gather(
                    *(stub.ModelInfer(infer_request(batch=8, model="slow")) for _ in range(4)),
                    return_exceptions=True,
                )

        in_flight = threading.Thread(
            target=lambda: answers.update(results=asyncio.run(slow_requests()))
        )
        in_flight.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert in_flight.is_alive(), (
            "the slow requests finished before the drain could be observed",
            answers,
        )
        assert_all(surfaces(server), False, False, {1: "END", 2: "UNLOADING"})
        in_flight.join(timeout=30)
        assert all(isinstance(r, v2.ModelInferResponse) for r in answers["results"]), answers[
            "results"
        ]
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
