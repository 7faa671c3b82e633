"""The experimental --model-processes executor: a model's batches computed in child processes fed through
shared memory give the in-process answers, and a child that dies fails its requests as UNAVAILABLE, never
as an internal error, while the server stays up and leaves no shared memory behind."""

from __future__ import annotations

import os
import signal
from concurrent import futures
from pathlib import Path

import grpc
import onnxruntime

from tests.helpers.serving import stub_for, wait_for
from tests.requests import random_images, v2_logits, v2_request
from tests.servers import start_server
from tests.tolerance import assert_same_function

# --inline-compute-us 0: the digits model is light enough to run on the event loop, which never reaches
# the executor.
FLAGS = ("--model-processes", "--instances", "2", "--inline-compute-us", "0")


def model_children(pid: int) -> list[int]:
    """The server's spawned model processes (its resource tracker is a child too, and not one of them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def shared_blocks() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}


def test_model_processes_answer_as_the_model_does_and_clean_up(repository):
    before = shared_blocks()
    reference = onnxruntime.InferenceSession(
        str(repository / "m" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    server = start_server(repository, *FLAGS)
    try:
        channel, stub = stub_for(server.url)
        batches = [random_images(rows, seed=rows) for rows in (1, 3, 5, 8, 2, 7, 4, 6)]
        with futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda images: stub.ModelInfer(v2_request(images), timeout=60), batches)
            )
        for images, answer in zip(batches, answers):
            expected = reference.run(["logits"], {"images": images})[0]
            assert_same_function(v2_logits(answer), expected)
        assert len(model_children(server.process.pid)) == 2
        channel.close()
    finally:
        assert server.stop() == 0
    assert shared_blocks() <= before, "the server left shared memory behind"


def test_a_dead_model_process_fails_its_requests_as_unavailable(repository):
    server = start_server(repository, *FLAGS)
    try:
        channel, stub = stub_for(server.url)
        stub.ModelInfer(v2_request(random_images(2)), timeout=60)
        children = model_children(server.process.pid)
        for child in children:
            os.kill(child, signal.SIGKILL)
        wait_for(lambda: not model_children(server.process.pid), timeout=10, what="children gone")
        codes = []
        for _ in range(3):
            try:
                stub.ModelInfer(v2_request(random_images(2)), timeout=60)
            except grpc.RpcError as error:
                codes.append(error.code())
                assert "model process" in error.details(), error.details()
        assert codes == [grpc.StatusCode.UNAVAILABLE] * 3
        assert server.process.poll() is None
        channel.close()
    finally:
        assert server.stop() == 0
