"""Operations: polling and hot reload, refusals, graceful shutdown, limits, fuzzing, TLS, tokens, metrics."""

import asyncio
import re
import shutil
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from tests.certs import make_certificates
from tests.helpers.serving import (
    POLL,
    index,
    infer_request,
    metric,
    publish_copy,
    rss_mb,
    scrape,
    served_versions,
    stub_for,
    wait_for,
)
from tests.helpers.versions import with_slow_model
from tests.servers import start_server


def test_a_new_version_takes_over_and_the_old_one_is_released(repository, source):
    server = start_server(repository, "--poll-seconds", POLL)
    channel, stub = stub_for(server.url)
    try:
        assert served_versions(stub) == ["1"]
        publish_copy(source, repository, "m", 2)
        wait_for(lambda: served_versions(stub) == ["2"], what="version 2")
        assert stub.ModelInfer(infer_request()).model_version == "2"
        assert index(stub)[("m", "1")][0] == "UNLOADED"
        assert any("loaded model 'm' version 2" in line for line in server.log)
        assert any("unloaded model 'm' version 1" in line for line in server.log)
    finally:
        channel.close()
        assert server.stop() == 0


def truncate_onnx(directory):
    path = directory / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(directory):
    path = directory / "model.onnx"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_truncated_and_tampered_versions_are_refused_while_the_previous_serves(repository, source):
    server = start_server(repository, "--poll-seconds", POLL, "--metrics-port", "0")
    channel, stub = stub_for(server.url)
    try:
        publish_copy(source, repository, "m", 2, mutate=truncate_onnx)
        publish_copy(source, repository, "m", 3, mutate=flip_a_byte)
        wait_for(
            lambda: index(stub).get(("m", "3"), ("",))[0] == "UNAVAILABLE", what="version 3 refused"
        )
        states = index(stub)
        assert states[("m", "2")][0] == "UNAVAILABLE"
        assert re.search(
            r"'model\.onnx' has \d+ bytes, the manifest says \d+", states[("m", "2")][1]
        )
        assert "'model.onnx' has sha256" in states[("m", "3")][1]
        assert served_versions(stub) == ["1"]
        assert stub.ModelInfer(infer_request()).model_version == "1"
        metrics = scrape(server)
        assert metric(metrics, "bnserve_load_failures_total", model="m") == 2
        assert any("refused model 'm' version 3" in line for line in server.log)
    finally:
        channel.close()
        assert server.stop() == 0


def test_a_half_copied_directory_is_loaded_only_once_complete(repository, source):
    server = start_server(repository, "--poll-seconds", POLL)
    channel, stub = stub_for(server.url)
    try:
        partial = repository / "m" / "2"
        partial.mkdir()
        shutil.copy(
            source / "manifest.json", partial / "manifest.json"
        )  # a copy in progress, not a publication
        wait_for(
            lambda: index(stub).get(("m", "2"), ("",))[0] == "UNAVAILABLE",
            what="partial version refused",
        )
        assert "missing" in index(stub)[("m", "2")][1]
        assert served_versions(stub) == ["1"]
        for entry in source.iterdir():  # the rest of the copy arrives
            if entry.is_dir():
                shutil.copytree(entry, partial / entry.name)
            elif entry.name != "manifest.json":
                shutil.copy(entry, partial / entry.name)
        wait_for(lambda: served_versions(stub) == ["2"], what="completed version 2")
    finally:
        channel.close()
        assert server.stop() == 0


def test_explicit_load_and_unload_with_polling_off(repository, source):
    server = start_server(repository, "--model-control", "explicit")
    channel, stub = stub_for(server.url)
    try:
        publish_copy(source, repository, "m", 2)
        time.sleep(1.0)
        assert served_versions(stub) == ["1"]  # nobody looks without polling
        stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name="m"))
        assert served_versions(stub) == ["2"]
        stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name="m"))
        assert served_versions(stub) == []
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(infer_request())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        assert server.stop() == 0


def test_soak_publishing_and_removing_under_load(repository, source):
    """16 clients for ~15 s while 5 versions are published and 3 superseded ones removed."""
    server = start_server(repository, "--poll-seconds", POLL)
    published, removed = {1: time.monotonic()}, {}
    answers, failures = [], []
    stop = threading.Event()

    async def client():
        async with grpc.aio.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = await stub.ModelInfer(infer_request(batch=1 + len(answers) % 4))
                    answers.append((sent, time.monotonic(), int(response.model_version)))
                except grpc.RpcError as exc:
                    failures.append((sent, exc.code(), exc.details()))

    async def clients():
        await asyncio.gather(*(client() for _ in range(16)))

    load = threading.Thread(target=lambda: asyncio.run(clients()))
    load.start()
    channel, stub = stub_for(server.url)
    try:
        for version in range(2, 7):
            time.sleep(2.0)
            publish_copy(source, repository, "m", version)
            published[version] = time.monotonic()
            wait_for(
                lambda: served_versions(stub) == [str(version)], what=f"version {version} serving"
            )
            if version >= 4:  # remove a superseded version while the clients keep going
                old = version - 3
                removed[old] = time.monotonic()
                shutil.rmtree(repository / "m" / str(old))
        time.sleep(2.0)
    finally:
        stop.set()
        load.join(timeout=60)
        final = served_versions(stub)
        channel.close()
        assert server.stop() == 0
    assert not failures, failures[:5]
    # Traffic flowed through every transition: each published version answered (no throughput claim).
    assert {version for _, _, version in answers} == set(published), sorted(
        {v for _, _, v in answers}
    )
    for sent, received, version in answers:
        assert published[version] <= received, (version, received)
        assert version not in removed or sent < removed[version], (version, sent)
    assert final == ["6"] and {version for _, _, version in answers} >= {1, 6}


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(repository):
    server = start_server(repository, "--max-queue-delay-us", "3000000", "--grace-seconds", "10")
    samples = [infer_request(batch=1) for _ in range(16)]

    async def burst():
        async with grpc.aio.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            return await asyncio.gather(
                *(stub.ModelInfer(r) for r in samples), return_exceptions=True
            )

    for _ in range(3):  # concurrent traffic: batches now wait up to 3 s for companions
        assert all(isinstance(r, v2.ModelInferResponse) for r in asyncio.run(burst()))
    results = {}
    in_flight = threading.Thread(target=lambda: results.update(answers=asyncio.run(burst())))
    in_flight.start()
    # All 16 must be inside the server before SIGTERM (a later one is refused, rightly), and the last
    # of them wait for companions up to 3 s: 1 s leaves room on a slow or busy machine.
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    channel, stub = stub_for(server.url)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        status = health.Check(health_pb2.HealthCheckRequest(service="")).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(infer_request())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    except grpc.RpcError as exc:  # the port may already be closed: also a refusal of new work
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
    in_flight.join(timeout=30)
    assert all(isinstance(r, v2.ModelInferResponse) for r in results["answers"]), results["answers"]
    assert server.process.wait(timeout=30) == 0


ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DATATYPES = ["FP32", "FP64", "INT32", "UINT8", "BOOL", "BYTES", "FP16", "", "fp32", "INT64"]


def fuzz_request(rng: np.random.Generator) -> v2.ModelInferRequest:
    kind = rng.integers(0, 12)
    batch = int(rng.integers(0, 80))
    shape = [batch, 8, 8, 1]
    if kind == 0:
        shape = [int(d) for d in rng.integers(-2, 12, size=rng.integers(0, 6))]
    if kind == 1:
        shape = [1, 1 << int(rng.integers(20, 62)), 8, 1]
    datatype = DATATYPES[rng.integers(0, len(DATATYPES))] if kind == 2 else "FP32"
    count = max(0, int(np.prod(shape))) if all(d >= 0 for d in shape) and kind != 1 else 64
    values = rng.uniform(-1e6, 1e6, size=min(count, 80 * 64)).astype(np.float32)
    if kind == 3 and len(values):
        values[rng.integers(0, len(values), size=3)] = [np.nan, np.inf, -np.inf]
    raw = values.tobytes()
    if kind == 4:
        raw = raw[: int(rng.integers(0, len(raw) + 1))] + bytes(int(rng.integers(0, 9)))
    tensor = v2.ModelInferRequest.InferInputTensor(name="images", datatype=datatype, shape=shape)
    request = v2.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[raw])
    if kind == 5:
        del request.inputs[:]
        del request.raw_input_contents[:]
    if kind == 6:
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
    if kind == 7:
        request.outputs.add(name=["logits", "nope", "", "probabilities"][rng.integers(0, 4)])
    if kind == 8:
        request.inputs[0].name = ["", "image", "images ", "IMAGES"][rng.integers(0, 4)]
    if kind == 9:
        request.model_name = ["", "../m", "m/../m", "nope", "m\x00"][rng.integers(0, 5)]
        request.model_version = ["", "0", "-1", "../1", "99", "1e3"][rng.integers(0, 6)]
    if kind == 10:
        del request.raw_input_contents[:]
        request.inputs[0].contents.fp32_contents.extend(
            values[: int(rng.integers(0, len(values) + 2))].tolist()
        )
    if kind == 11:
        request.raw_input_contents.append(b"extra")
    return request


def test_fuzzed_requests_get_clean_status_codes(repository):
    server = start_server(repository, "--max-message-bytes", str(1 << 20), "--poll-seconds", "0")
    channel, stub = stub_for(server.url)
    rng = np.random.default_rng(2026)
    codes = {}
    try:
        for case in range(2200):
            if case == 200:
                baseline = rss_mb(server.process.pid)
            request = fuzz_request(rng) if case % 100 != 99 else infer_request()
            if case % 500 == 250:  # oversized message (limit 1 MiB)
                request.raw_input_contents[:] = [bytes(2 << 20)]
            try:
                stub.ModelInfer(request, timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                assert code in ALLOWED, (case, code, exc.details(), request)
                assert exc.details(), case
            codes[code] = codes.get(code, 0) + 1
            if case % 100 == 99:
                assert code == grpc.StatusCode.OK, "a valid request failed during fuzzing"
        assert codes[grpc.StatusCode.OK] >= 22 and codes[grpc.StatusCode.INVALID_ARGUMENT] > 500
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.NOT_FOUND in codes
        assert rss_mb(server.process.pid) - baseline < 50
    finally:
        channel.close()
        assert server.stop() == 0


@pytest.mark.parametrize(
    "name, version",
    [
        ("../m", ""),
        ("m/../m", ""),
        ("..", ""),
        ("m", "../1"),
        ("m", "1/../1"),
        ("/etc", ""),
        ("m", "0x1"),
    ],
)
def test_names_and_versions_cannot_reach_the_file_system(repository, name, version):
    server = start_server(repository, "--model-control", "explicit")
    channel, stub = stub_for(server.url)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(infer_request(model=name, version=version))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        if name != "m":
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name=name))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.ModelInfer(infer_request()).model_version == "1"
    finally:
        channel.close()
        assert server.stop() == 0


def test_tls_with_client_certificates(repository, tmp_path):
    certs = make_certificates(tmp_path)
    server = start_server(
        repository,
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--tls-client-ca",
        str(certs.ca),
        "--poll-seconds",
        "0",
    )
    good = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.client_key.read_bytes(), certs.client_cert.read_bytes()
    )
    try:
        channel, stub = stub_for(server.url, good)
        assert stub.ModelInfer(infer_request()).model_version == "1"
        channel.close()
        for credentials in (
            grpc.ssl_channel_credentials(certs.ca.read_bytes()),  # no client certificate
            grpc.ssl_channel_credentials(
                certs.other_ca.read_bytes(),
                certs.client_key.read_bytes(),
                certs.client_cert.read_bytes(),
            ),  # server not trusted
            None,
        ):  # plaintext
            channel, stub = stub_for(server.url, credentials)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ServerLive(v2.ServerLiveRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()
    finally:
        assert server.stop() == 0


def test_tls_without_client_certificates(repository, tmp_path):
    certs = make_certificates(tmp_path)
    server = start_server(
        repository,
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--poll-seconds",
        "0",
    )
    try:
        channel, stub = stub_for(server.url, grpc.ssl_channel_credentials(certs.ca.read_bytes()))
        assert stub.ServerLive(v2.ServerLiveRequest()).live
        channel.close()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("health_open", [True, False])
def test_bearer_token_authentication(repository, tmp_path, health_open):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    flags = ["--auth-token-file", str(token_file), "--poll-seconds", "0"] + (
        ["--health-without-auth"] if health_open else []
    )
    server = start_server(repository, *flags)
    channel, stub = stub_for(server.url)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        assert (
            stub.ModelInfer(
                infer_request(), metadata=[("authorization", "Bearer s3cret-token")]
            ).model_version
            == "1"
        )
        for metadata, message in (
            ([], "missing 'authorization' metadata"),
            ([("authorization", "Bearer wrong")], "invalid bearer token"),
            ([("authorization", "s3cret-token")], "invalid bearer token"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(infer_request(), metadata=metadata)
            assert (
                caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                and message in caught.value.details()
            )
        if health_open:
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        else:
            with pytest.raises(grpc.RpcError) as caught:
                health.Check(health_pb2.HealthCheckRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (
                health.Check(
                    health_pb2.HealthCheckRequest(),
                    metadata=[("authorization", "Bearer s3cret-token")],
                ).status
                == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        channel.close()
        assert server.stop() == 0


def test_metrics_show_the_requests_and_batches_of_this_test(repository):
    server = start_server(repository, "--metrics-port", "0", "--poll-seconds", "0")
    channel, stub = stub_for(server.url)
    try:
        for batch in (1, 2, 3, 4, 5):
            stub.ModelInfer(infer_request(batch=batch))
        bad = infer_request()
        bad.inputs[0].datatype = "FP64"
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(bad)
        text = scrape(server)
        assert metric(text, "bnserve_requests_total", model="m", version="1", code="OK") == 5
        assert (
            metric(text, "bnserve_requests_total", model="m", version="1", code="INVALID_ARGUMENT")
            == 1
        )
        assert metric(text, "bnserve_batch_size_count", model="m", version="1") == 5
        assert metric(text, "bnserve_batch_size_sum", model="m", version="1") == 15
        assert (
            metric(text, "bnserve_request_seconds_count", model="m", version="1") == 5
        )  # decoded requests
        assert metric(text, "bnserve_compute_seconds_count", model="m", version="1") == 5
        assert metric(text, "bnserve_queue_seconds_count", model="m", version="1") == 5
        assert metric(text, "bnserve_loaded_versions", model="m") == 1
    finally:
        channel.close()
        assert server.stop() == 0


def test_queue_depth_and_inflight_gauges_follow_the_load_and_return_to_zero(repository, source):
    """The autoscaling signals: six concurrent calls to a slow model run one at a time (batching off, one
    instance), so while they run five wait; scraped meanwhile and after."""
    publish_copy(source, repository, "slow", 1, mutate=with_slow_model)
    server = start_server(repository, "--metrics-port", "0", "--poll-seconds", "0",
                          "--model-option", "slow:dynamic_batching=off",
                          "--model-option", "slow:instances=1")  # fmt: skip
    results = {}

    async def six():
        async with grpc.aio.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            return await asyncio.gather(
                *(stub.ModelInfer(infer_request(batch=4, model="slow")) for _ in range(6))
            )

    sender = threading.Thread(target=lambda: results.update(answers=asyncio.run(six())))
    try:
        sender.start()
        wait_for(lambda: 'bnserve_inflight_requests{model="slow",version="1"} 6.0' in scrape(server),
                 timeout=30, what="six requests inside")  # fmt: skip
        text = scrape(server)
        assert metric(text, "bnserve_queue_depth", model="slow", version="1") >= 4
        sender.join(timeout=120)
        assert len(results["answers"]) == 6
        text = scrape(server)
        assert metric(text, "bnserve_queue_depth", model="slow", version="1") == 0
        assert metric(text, "bnserve_inflight_requests", model="slow", version="1") == 0
    finally:
        assert server.stop() == 0
