"""OpenTelemetry traces (--otlp-endpoint): a real server exporting over OTLP/gRPC to a collector stub that
records what it receives (the OTLP TraceService of opentelemetry-proto, served in this process)."""

import threading
import time
from concurrent import futures

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from tests.helpers.cli import assert_user_error, bnserve
from tests.helpers.serving import infer_request
from tests.servers import free_port, start_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector():
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.endpoint = f"http://127.0.0.1:{port}"
    yield servicer
    server.stop(0)


def attributes(span) -> dict:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def test_each_inference_request_is_one_span_with_its_four_phases_and_the_callers_parent(
    repository, collector
):
    server = start_server(repository, "--otlp-endpoint", collector.endpoint, "--trace-sample-rate",
                          "1", http=True)  # fmt: skip
    try:
        with grpc.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(
                infer_request(batch=3), metadata=[("traceparent", TRACEPARENT)], timeout=30
            )
            bad = infer_request()
            bad.inputs[0].datatype = "FP64"
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(bad, timeout=30)
            # Probes and metadata: no span.
            stub.ServerLive(v2.ServerLiveRequest(), timeout=10)
            stub.ModelMetadata(v2.ModelMetadataRequest(name="m"), timeout=10)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1],
                            "data": [1.0] * 64}]}  # fmt: skip
        answer = requests.post(f"{server.http_url}/v2/models/m/infer", json=body, timeout=30,
                               headers={"traceparent": TRACEPARENT})  # fmt: skip
        assert answer.status_code == 200
        requests.get(f"{server.http_url}/v2/health/ready", timeout=10)
        tf = requests.post(f"{server.http_url}/v1/models/m:predict",
                           json={"instances": [[[[0.0]] * 8] * 8]}, timeout=30)  # fmt: skip
        assert tf.status_code == 200, tf.text
    finally:
        assert server.stop() == 0  # the final flush exports what is buffered
    roots = [s for s in collector.spans if s.name == "bnserve.infer"]
    assert len(roots) == 4, [s.name for s in collector.spans]  # 2 gRPC, 2 HTTP; no probe
    by_id = {s.span_id: s for s in collector.spans}
    children = {}
    for span in collector.spans:
        if span.parent_span_id in by_id:
            children.setdefault(span.parent_span_id, []).append(span)
    traced_grpc, failed, traced_http, plain = roots
    for root in (traced_grpc, traced_http):
        assert root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == PARENT_ID
    assert attributes(traced_grpc) == {"bnserve.protocol": "grpc", "bnserve.model": "m",
                                       "bnserve.version": "1", "bnserve.request_rows": 3,
                                       "bnserve.batch_rows": 3}  # fmt: skip
    assert attributes(traced_http)["bnserve.protocol"] == "http"
    assert plain.trace_id.hex() != TRACE_ID and not plain.parent_span_id  # a root of its own
    assert failed.status.code == 2 and failed.status.message == "INVALID_ARGUMENT"  # ERROR
    for root in (traced_grpc, traced_http, plain):
        phases = sorted(children[root.span_id], key=lambda s: s.start_time_unix_nano)
        assert [p.name for p in phases] == ["decode", "queue", "compute", "encode"]
        assert phases[0].start_time_unix_nano == root.start_time_unix_nano
        assert phases[-1].end_time_unix_nano == root.end_time_unix_nano
        for earlier, later in zip(phases, phases[1:]):
            assert earlier.end_time_unix_nano <= later.start_time_unix_nano
    assert [p.name for p in children.get(failed.span_id, [])] == ["decode"]


def test_a_collector_that_does_not_answer_logs_one_warning_and_serving_goes_on(repository):
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_server(repository, "--otlp-endpoint", dead, "--trace-sample-rate", "1",
                          "--grace-seconds", "1")  # fmt: skip
    try:
        with grpc.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            for round in range(3):
                for _ in range(20):
                    stub.ModelInfer(infer_request(), timeout=30)
                time.sleep(1.5)  # past the export interval: the processor tries again
    finally:
        started = time.monotonic()
        assert server.stop() == 0
    assert time.monotonic() - started < 15
    warnings = [line for line in server.log if "spans could not be exported" in line]
    assert len(warnings) == 1, server.log[-20:]
    assert not any("Traceback" in line for line in server.log), server.log[-20:]


def test_an_endpoint_that_is_not_a_url_is_refused_in_one_line(repository):
    result = bnserve("serve", "--repository", repository, "--otlp-endpoint", "collector:4317")
    assert_user_error(result, "--otlp-endpoint 'collector:4317': expected http://HOST:PORT")


def test_sampling_follows_the_callers_flag_and_else_the_rate(repository, collector):
    """--trace-sample-rate 0: untraced unless the caller's traceparent says sampled (01); one saying
    not sampled (00) is not traced even at rate 1."""
    server = start_server(repository, "--otlp-endpoint", collector.endpoint,
                          "--trace-sample-rate", "0")  # fmt: skip
    try:
        with grpc.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(10):
                stub.ModelInfer(infer_request(), timeout=30)
            stub.ModelInfer(infer_request(), metadata=[("traceparent", TRACEPARENT)], timeout=30)
            unsampled = TRACEPARENT[:-2] + "00"
            stub.ModelInfer(infer_request(), metadata=[("traceparent", unsampled)], timeout=30)
    finally:
        assert server.stop() == 0
    roots = [s for s in collector.spans if s.name == "bnserve.infer"]
    assert len(roots) == 1 and roots[0].trace_id.hex() == TRACE_ID
