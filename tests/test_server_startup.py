"""Start-up of `bnserve serve`: its refusals, and the event loops it runs on."""

import subprocess
import sys

import numpy as np
import pytest
import requests

from tests.helpers.cli import assert_user_error, bnserve
from tests.helpers.serving import stub_for
from tests.requests import random_images, v2_json_body, v2_logits, v2_request
from tests.servers import start_server


def test_both_event_loops_serve_the_same_answers_on_both_ports(repository):
    """uvloop (the default) and asyncio (--event-loop asyncio): the start-up line names the loop, gRPC and
    HTTP answer the same logits bit for bit on either, and SIGTERM stops either cleanly."""
    images = random_images(3)
    answers = {}
    for loop, flags in (("uvloop", ()), ("asyncio", ("--event-loop", "asyncio"))):
        server = start_server(repository, *flags, http=True)
        try:
            started = next(line for line in server.log if "listening on" in line)
            assert f"event loop {loop}," in started, started
            channel, stub = stub_for(f"127.0.0.1:{server.port}")
            with channel:
                answers[loop, "gRPC"] = v2_logits(stub.ModelInfer(v2_request(images, "m")))
            response = requests.post(
                f"http://127.0.0.1:{server.http_port}/v2/models/m/infer",
                json=v2_json_body(images),
                timeout=30,
            )
            response.raise_for_status()
            (logits,) = [o for o in response.json()["outputs"] if o["name"] == "logits"]
            answers[loop, "HTTP"] = np.array(logits["data"], np.float32).reshape(logits["shape"])
        finally:
            assert server.stop() == 0, "\n".join(server.log)
    reference = answers["asyncio", "gRPC"]
    assert reference.shape == (3, 10)
    for key, logits in answers.items():
        np.testing.assert_array_equal(logits, reference, err_msg=str(key))


def test_event_loop_uvloop_without_uvloop_installed_is_a_user_error(repository):
    # uvloop has no Windows build, so the dependency is not installed there: the default must say what to do.
    # An import of a module that sys.modules maps to None raises ImportError, as a missing module does.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['uvloop'] = None; from bnserve.cli import main; sys.exit(main())",
            "serve",
            "--repository",
            str(repository),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_user_error(
        result, "--event-loop uvloop: uvloop is not installed", "--event-loop asyncio"
    )


def test_device_gpu_without_a_gpu_stops_at_start_up(serving_repository):
    with pytest.raises(
        RuntimeError, match="--device gpu: ONNX Runtime has no usable CUDA provider"
    ):
        start_server(serving_repository, "--device", "gpu")


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--version-policy", "newest"], ["--version-policy 'newest'", "latest:N"]),
        (["--max-batch-size", "0"], ["--max-batch-size 0"]),
        (["--long-call-us", "-1"], ["--long-call-us -1: expected an integer >= 0"]),
        (
            ["--model-option", "digits:long_call_us=-5"],
            ["--model-option digits:long_call_us -5: expected an integer >= 0"],
        ),
        (["--backend", "torch"], ["--backend", "invalid choice"]),
        (["--event-loop", "trio"], ["--event-loop", "invalid choice: 'trio'", "uvloop", "asyncio"]),
        (["--model-option", "digits"], ["--model-option 'digits'", "NAME:key=value"]),
        (["--model-option", "digits:batch=4"], ["unknown key 'batch'", "max_batch_size"]),
        (
            ["--model-option", "digits:max_batch_size=four"],
            ["max_batch_size expects an integer, got 'four'"],
        ),
        (
            ["--model-option", "digits:max_batch_size=0"],
            ["--model-option digits:max_batch_size 0: expected an integer >= 1"],
        ),
        (
            ["--model-option", "digits:dynamic_batching=maybe"],
            ["dynamic_batching expects on or off"],
        ),
    ],
)
def test_bad_serve_flags(serving_repository, flags, fragments):
    assert_user_error(bnserve("serve", "--repository", serving_repository, *flags), *fragments)


def test_missing_repository(tmp_path):
    assert_user_error(bnserve("serve", "--repository", tmp_path / "absent"), "no such directory")
