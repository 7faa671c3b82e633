"""Start-up refusals of `bnserve serve`."""

import pytest

from tests.helpers.cli import assert_user_error, bnserve
from tests.servers import start_server


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
