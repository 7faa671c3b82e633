"""Dynamic batching, deadlines and --workers through a real server process."""

import asyncio
import time

import grpc
import numpy as np
import onnxruntime
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from bench.loadgen import process_cpu_seconds
from tests.helpers.serving import infer_request, stub_for
from tests.requests import v2_logits, v2_request
from tests.servers import start_server
from tests.tolerance import assert_same_function


def request(x, model="digits"):
    return v2_request(x, model)


logits = v2_logits


@pytest.fixture(scope="module")
def batching_server(exported, tmp_path_factory):
    """A model that computes for milliseconds (tests/onnx_models.slow_model): while one call runs, the rest of a
    client's burst arrives and queues, on any machine, so there is something to coalesce. (With the
    digits model a call can finish before the next request of a Python client's burst has arrived.)"""
    from tests.onnx_models import slow_model
    from tests.test_operations import publish_copy
    from tests.test_parity_at_load import rehash, without_golden

    def slow(directory):
        slow_model(directory / "model.onnx", copies=128)
        without_golden(directory)
        rehash(directory)

    repository = tmp_path_factory.mktemp("batching")
    publish_copy(exported[1], repository, "digits", 1, mutate=slow)
    process = start_server(
        repository,
        "--max-queue-delay-us",
        "20000",
        "--max-batch-size",
        "32",
        "--model-control",
        "none",
    )
    process.repository = repository
    yield process
    assert process.stop() == 0, "\n".join(process.log)


def test_concurrent_requests_are_batched_and_answered_exactly(batching_server):
    samples = np.random.default_rng(8).uniform(0, 16, (32, 1, 8, 8, 1)).astype(np.float32)

    async def send_all():
        async with grpc.aio.insecure_channel(batching_server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            return await asyncio.gather(*(stub.ModelInfer(request(x)) for x in samples))

    responses = asyncio.run(send_all())
    session = onnxruntime.InferenceSession(
        str(batching_server.repository / "digits" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    for x, response in zip(samples, responses):
        # The server ran x inside a batch of others, the session alone: other batch sizes may take other
        # kernels, so the two agree to rounding (tests/README.md), not bit for bit.
        assert_same_function(logits(response), session.run(["logits"], {"images": x})[0])
    with grpc.insecure_channel(batching_server.url) as channel:
        stats = (
            v2_grpc.GRPCInferenceServiceStub(channel)
            .ModelStatistics(v2.ModelStatisticsRequest(name="digits", version="1"))
            .model_stats[0]
        )
    assert stats.inference_count == 32 and stats.execution_count < 32
    assert max(b.batch_size for b in stats.batch_stats) > 1
    with grpc.insecure_channel(batching_server.url) as channel:
        config = (
            v2_grpc.GRPCInferenceServiceStub(channel)
            .ModelConfig(v2.ModelConfigRequest(name="digits"))
            .config
        )
    assert (
        config.dynamic_batching.max_queue_delay_microseconds == 20000
        and config.max_batch_size == 32
    )


def test_an_expired_request_is_dropped_before_compute(serving_repository):
    server = start_server(serving_repository, "--max-queue-size", "1024")
    deadline_s = 0.05
    full = np.zeros((64, 8, 8, 1), np.float32)

    async def backlog_then_lone(url, backlog):
        """``backlog`` full batches queued first, then one request with a deadline that cannot wait that long."""
        async with grpc.aio.insecure_channel(url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            ahead = [
                asyncio.ensure_future(stub.ModelInfer(request(full, model="other")))
                for _ in range(backlog)
            ]
            await asyncio.sleep(0)
            lone = stub.ModelInfer(request(full[:1], model="other"), timeout=deadline_s)
            results = await asyncio.gather(*ahead, lone, return_exceptions=True)
            return results[:-1], results[-1]

    try:
        with grpc.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            started = time.monotonic()
            for _ in range(5):
                stub.ModelInfer(request(full, model="other"))
            batch_s = (
                time.monotonic() - started
            ) / 5  # this machine's time for one full batch: the baseline
            # Enough full batches ahead of it to take forty times its deadline on this machine: the baseline
            # is measured once, and a busy machine that frees up meanwhile must not shrink the margin to
            # nothing (ten times once left the lone request in time after 94 batches on 2 shared cores).
            backlog = min(1000, max(50, int(40 * deadline_s / batch_s)))
            ahead, lone = asyncio.run(backlog_then_lone(server.url, backlog))
            assert all(isinstance(r, v2.ModelInferResponse) for r in ahead), [
                r for r in ahead if isinstance(r, Exception)
            ][:2]
            assert (
                isinstance(lone, grpc.RpcError) and lone.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            ), (lone, backlog)
            time.sleep(
                0.2 + 10 * batch_s
            )  # the lone request was next in the queue: the server has decided on it
            stats = stub.ModelStatistics(
                v2.ModelStatisticsRequest(name="other", version="1")
            ).model_stats[0]
            # Dropped in the queue, never computed: its row is not among those inferred. (It counts as a failure
            # when the server's deadline check sees it first, as nothing when the client's cancel arrives first.)
            assert stats.inference_count == 64 * (5 + backlog), (stats.inference_count, backlog)
            assert stats.inference_stats.fail.count <= 1
    finally:
        assert server.stop() == 0


def test_two_workers_both_answer_and_stop_on_sigterm(serving_repository):
    server = start_server(serving_repository, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while sum("listening on" in line for line in server.log) < 2:
            assert time.monotonic() < deadline, "\n".join(server.log)
            time.sleep(0.1)
        pids = set()
        for _ in range(30):
            # A channel of its own (no shared subchannel) is a new TCP connection, which the kernel
            # hands to either worker.
            with grpc.insecure_channel(
                server.url, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                _, call = v2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata.with_call(
                    v2.ServerMetadataRequest()
                )
                pids.add(dict(call.trailing_metadata())["bnserve-worker-pid"])
        assert len(pids) == 2
    finally:
        assert server.stop() == 0
    assert any("all workers stopped (exit codes [0, 0])" in line for line in server.log)


def test_a_pool_model_spins_only_within_its_calls(repository):
    """ONNX Runtime's pool spins between a call's parallel sections and stops when the call returns
    (force_spinning_stop). Spinning after calls too, ONNX Runtime's default, keeps a pool thread busy for
    ~40 ms after each one (in-process, 2 threads: 39-47 ms of CPU in the 50 ms after), all the time under
    load, starving the event loop that feeds it."""
    server = start_server(
        repository, "--intra-op-threads", "2", "--monitor-sample-rate", "0", "--poll-seconds", "0"
    )
    try:
        channel, stub = stub_for(server.url)
        after_calls = 0.0
        for _ in range(5):
            for _ in range(20):
                stub.ModelInfer(infer_request(batch=64), timeout=30)
            before = process_cpu_seconds(server.process.pid)
            time.sleep(0.05)
            after_calls += process_cpu_seconds(server.process.pid) - before
        channel.close()
        # /proc counts in 10 ms ticks: spinning reads ~0.2 s over the five, an idle server 0-0.03
        assert after_calls < 0.1, f"{after_calls:.2f} s of CPU in 5 x 50 ms after calls"
    finally:
        assert server.stop() == 0


def test_batching_options_per_model(serving_repository):
    server = start_server(
        serving_repository,
        "--model-option",
        "other:max_batch_size=4,dynamic_batching=off,instances=2",
        "--poll-seconds",
        "0",
    )
    try:
        with grpc.insecure_channel(server.url) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            other = stub.ModelConfig(v2.ModelConfigRequest(name="other")).config
            digits = stub.ModelConfig(v2.ModelConfigRequest(name="digits")).config
            assert other.max_batch_size == 4 and not other.HasField("dynamic_batching")
            assert other.instance_group[0].count == 2
            assert digits.max_batch_size == 64 and digits.HasField("dynamic_batching")
            x = np.zeros((5, 8, 8, 1), np.float32)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request(x, model="other"))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "batch size 5, expected 1 to max_batch_size 4" in caught.value.details()
            assert logits(stub.ModelInfer(request(x, model="digits"))).shape == (5, 10)
            assert logits(stub.ModelInfer(request(x[:4], model="other"))).shape == (4, 10)
    finally:
        assert server.stop() == 0
