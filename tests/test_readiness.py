"""One readiness answer on every surface: gRPC v2 ServerReady/ModelReady, grpc.health.v1, HTTP v2
/v2/health/ready and model ready, TensorFlow Serving model status (gRPC and REST) and the status page, asked
at once through a hot reload, a refused model and a SIGTERM drain."""

import asyncio
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from bnserve.protos import tfserving_pb2 as tfs
from tests.helpers.serving import POLL, infer_request, publish_copy, served_versions, wait_for
from tests.helpers.versions import with_slow_model
from tests.servers import free_port, start_server

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


def readiness(url: str, http_url: str, model: str = "m") -> dict:
    """Liveness and readiness as every protocol answers them now."""
    with grpc.insecure_channel(url) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        return {
            "grpc ServerLive": stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live,
            "http live": requests.get(f"{http_url}/v2/health/live", timeout=10).status_code == 200,
            "grpc ServerReady": stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready,
            "health ''": health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
            == SERVING,
            "http ready": requests.get(f"{http_url}/v2/health/ready", timeout=10).status_code
            == 200,
            "grpc ModelReady": stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=10).ready,
            "health model": health.Check(
                health_pb2.HealthCheckRequest(service=model), timeout=10
            ).status
            == SERVING,
            "http model ready": requests.get(
                f"{http_url}/v2/models/{model}/ready", timeout=10
            ).status_code
            == 200,
        }


LIVE_NOT_READY = {"grpc ServerLive": True, "http live": True} | {
    key: False
    for key in ("grpc ServerReady", "health ''", "http ready", "grpc ModelReady", "health model",
                "http model ready")
}  # fmt: skip
READY = {key: True for key in LIVE_NOT_READY}


def test_while_the_repository_loads_every_surface_is_live_and_none_is_ready(repository, source):
    """Slow versions (each load runs the slow model to calibrate) keep the first load busy for seconds:
    the ports answer meanwhile, live and not ready; once loaded, ready everywhere."""
    for version in (1, 2, 3):
        publish_copy(source, repository, "slow", version, mutate=with_slow_model)
    grpc_port, http_port = free_port(), free_port()
    command = [sys.executable, "-m", "bnserve.cli", "serve", "--repository", str(repository),
               "--grpc-port", str(grpc_port), "--http-port", str(http_port),
               "--version-policy", "all"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, listening = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if "listening on" in line:
                listening.set()

    threading.Thread(target=read, daemon=True).start()
    url, http_url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    try:
        wait_for(lambda: any("ports bound" in line for line in lines), timeout=120,
                 what="the ports bound")  # fmt: skip
        while_loading = readiness(url, http_url)
        assert not listening.is_set(), ("the load finished before it could be observed", lines)
        assert while_loading == LIVE_NOT_READY, while_loading
        assert listening.wait(120), lines
        assert readiness(url, http_url) == READY
        assert readiness(url, http_url, "slow") == READY
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, lines


@pytest.mark.parametrize("requires, server_ready", [("all", False), ("any", True)])
def test_ready_requires_governs_a_partly_failed_repository(
    repository, source, requires, server_ready
):
    publish_copy(source, repository, "broken", 1, mutate=flip_a_byte)
    server = start_server(repository, "--ready-requires", requires, http=True)
    try:
        answers = readiness(server.url, server.http_url)
        expected = READY | {key: server_ready for key in ("grpc ServerReady", "health ''",
                                                          "http ready")}  # fmt: skip
        assert answers == expected, answers
        broken = readiness(server.url, server.http_url, "broken")
        assert not any(broken[k] for k in ("grpc ModelReady", "health model", "http model ready"))
    finally:
        assert server.stop() == 0


def test_the_drain_flips_readiness_first_and_serves_for_drain_seconds(repository):
    server = start_server(repository, "--drain-seconds", "3", "--grace-seconds", "5", http=True)
    try:
        assert readiness(server.url, server.http_url) == READY
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(lambda: not readiness(server.url, server.http_url)["grpc ServerReady"],
                 timeout=2, what="readiness false")  # fmt: skip
        assert readiness(server.url, server.http_url) == LIVE_NOT_READY
        with grpc.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            answered = 0
            while time.monotonic() - signalled < 2.0:  # well inside --drain-seconds 3
                stub.ModelInfer(infer_request(), timeout=10)
                answered += 1
            http = requests.post(f"{server.http_url}/v2/models/m/infer",
                                 json=json_infer_body(), timeout=10)  # fmt: skip
            assert http.status_code == 200, http.text
            assert answered > 10
            time.sleep(max(0.0, 3.5 - (time.monotonic() - signalled)))
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(infer_request(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


def test_a_second_signal_ends_the_drain_and_in_flight_requests_still_finish(repository):
    """An operator's second Ctrl-C (or a second SIGTERM) must not wait out a long --drain-seconds."""
    server = start_server(repository, "--drain-seconds", "86400", "--grace-seconds", "5", http=True)
    try:
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: readiness(server.url, server.http_url) == LIVE_NOT_READY,
                 timeout=5, what="readiness false")  # fmt: skip
        with grpc.insecure_channel(server.url) as channel:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), timeout=10)
        second = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - second < 20
        assert any("drain cut short" in line for line in server.log), "\n".join(server.log)
    finally:
        server.stop()


def json_infer_body() -> dict:
    return {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1],
                        "data": [1.0] * 64}]}  # fmt: skip
