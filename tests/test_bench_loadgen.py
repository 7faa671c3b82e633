"""bench/loadgen.py's reading of h2load's output (nghttp2 1.52, Debian's nghttp2-client): every throughput in
docs/ comes through it."""

import re

import pytest

from bench.loadgen import main_phase_seconds

# Captured from `h2load -D 2000ms --warm-up-time=500ms -t 1 -c 4 -m 2 ...` against `bnserve serve` (digits).
WITH_WARMUP = """\
finished in 2.50s, 4389.50 req/s, 869.20KB/s
requests: 8779 total, 8779 started, 8779 done, 8779 succeeded, 0 failed, 0 errored, 0 timeout
"""
# The same command without --warm-up-time (conv6).
WITHOUT_WARMUP = """\
finished in 2.00s, 1437.00 req/s, 285.69KB/s
requests: 2874 total, 2882 started, 2874 done, 2874 succeeded, 0 failed, 0 errored, 0 timeout
"""


def own_rate(output: str) -> float:
    return float(re.search(r"([\d.]+) req/s", output).group(1))


def succeeded(output: str) -> int:
    return int(re.search(r"(\d+) succeeded", output).group(1))


@pytest.mark.parametrize(("output", "warmup_s"), [(WITH_WARMUP, 0.5), (WITHOUT_WARMUP, 0.0)])
def test_throughput_is_h2load_own_main_phase_rate(output, warmup_s):
    # h2load counts the main phase only; its "finished in" includes the warm-up. Dividing the count by the
    # whole time read 0.8 of the rate for 2 s runs after 0.5 s of warm-up.
    seconds = main_phase_seconds(output, warmup_s)
    assert seconds == pytest.approx(2.0)
    assert succeeded(output) / seconds == pytest.approx(own_rate(output), rel=1e-3)


def test_milliseconds_are_read_as_such():
    assert main_phase_seconds("finished in 812.25ms, 100.00 req/s, 1KB/s\n", 0.0) == pytest.approx(
        0.81225
    )


def test_output_without_the_finished_line_is_an_error_that_shows_it():
    with pytest.raises(ValueError, match="no 'finished in' line") as error:
        main_phase_seconds("client could not connect to host: connection refused\n", 0.5)
    assert "connection refused" in str(error.value)
