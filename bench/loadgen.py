"""Driving a gRPC server with h2load (nghttp2's C load generator) and reading what it measured.

h2load sends the same framed ModelInfer request over HTTP/2 with many streams in flight, logs every
request's duration (microseconds) and uses little CPU itself; its CPU time and the server's are read
from the kernel around the run so the report can show which side was the bottleneck.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    throughput: float
    """Successful requests per second."""
    p50_ms: float
    p99_ms: float
    client_cores: float
    """CPU seconds h2load used per wall second."""
    server_cores: float
    """CPU seconds the server process(es) used per wall second."""


def model_infer_body(model: str, images: np.ndarray) -> bytes:
    """One gRPC message frame (flag byte, big-endian length, ModelInferRequest) with raw FP32 contents."""
    from bnserve.protos import inference_pb2 as pb

    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="images", datatype="FP32", shape=images.shape
            )
        ],
        raw_input_contents=[np.ascontiguousarray(images, np.float32).tobytes()],
    )
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and all its descendants still alive."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return total
    return total + sum(process_cpu_seconds(int(child)) for child in children)


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Native thread id -> (kernel thread name, utime + stime in seconds) for every thread of ``pid``."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            threads[int(task.name)] = (
                (task / "comm").read_text().strip(),
                (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            )
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
    return threads


def idle_cpu_seconds() -> float:
    """Idle + iowait seconds of the whole machine since boot, all cores together (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / CLOCK_TICKS


def python_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, read with ``py-spy dump`` (the bench extra). Threads that
    ONNX Runtime or gRPC core start are not Python threads and are absent."""
    output = subprocess.run(
        [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        int(tid): name
        for tid, name in re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', output, re.MULTILINE)
    }


def h2load_command() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise RuntimeError("h2load not found: `make bench` installs Debian's nghttp2-client")
    return path


def main_phase_seconds(output: str, warmup_s: float) -> float:
    """The seconds h2load measured in, from its output: its "finished in" time less the warm-up.

    With ``--warm-up-time`` h2load counts requests (done, succeeded, its own req/s) and logs durations
    for the main phase only, while "finished in" also spans the warm-up: 2.50 s for 0.5 s of warm-up and
    ``-D 2000ms``, with "8779 succeeded" and "4389.50 req/s" = 8779 / 2.0. Dividing by the whole time read
    every throughput before 2026-12-07 low by seconds / (seconds + warm-up), 0.8 for 2 s runs."""
    finished = re.search(r"finished in ([\d.]+)(m?s)", output)
    if finished is None:
        raise ValueError(f"no 'finished in' line in h2load's output:\n{output[-2000:]}")
    total = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return total - warmup_s


def run_load(
    port: int,
    body: bytes,
    concurrency: int,
    seconds: float,
    server_pid: int | None,
    warmup_s: float = 0.5,
    cpu: str | None = None,
) -> LoadResult:
    """``concurrency`` streams in flight over min(concurrency, 4) connections for ``seconds``; ``cpu``
    pins h2load to those cores (``taskset -c``)."""
    connections = min(concurrency, 4)
    arguments = [
        "-c",
        str(connections),
        "-m",
        str(concurrency // connections),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    return drive(
        arguments,
        f"http://127.0.0.1:{port}{MODEL_INFER_PATH}",
        body,
        concurrency,
        seconds,
        server_pid,
        warmup_s,
        cpu,
        r"(\d+) succeeded",
    )


def run_http_load(
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    server_pid: int | None,
    warmup_s: float = 0.5,
    cpu: str | None = None,
) -> LoadResult:
    """HTTP/1.1 POSTs: ``concurrency`` connections with one request in flight each (as HTTP/1.1 clients
    work), for ``seconds``. Only 2xx answers count as successes."""
    arguments = [
        "--h1",
        "-c",
        str(concurrency),
        "-m",
        "1",
        *[argument for key, value in headers.items() for argument in ("-H", f"{key}: {value}")],
    ]
    return drive(
        arguments,
        f"http://127.0.0.1:{port}{path}",
        body,
        concurrency,
        seconds,
        server_pid,
        warmup_s,
        cpu,
        r"(\d+) 2xx",
    )


def drive(
    arguments: list[str],
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    server_pid: int | None,
    warmup_s: float,
    cpu: str | None,
    successes: str,
) -> LoadResult:
    """One h2load run of ``seconds`` with the protocol's ``arguments``, the CPU both sides used around it, and
    the successes its output reports (``successes``: the regex of that count)."""
    with tempfile.TemporaryDirectory() as work:
        body_path, log_path = Path(work) / "body.bin", Path(work) / "requests.log"
        body_path.write_bytes(body)
        command = [
            h2load_command(),
            "-D",
            f"{round(seconds * 1000)}ms",
            f"--warm-up-time={round(warmup_s * 1000)}ms",
            "-t",
            "1",
            *arguments,
            "-d",
            str(body_path),
            f"--log-file={log_path}",
            url,
        ]
        if cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = process_cpu_seconds(server_pid) if server_pid else 0.0
        started = time.perf_counter()
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - started
        server_used = process_cpu_seconds(server_pid) - server_before if server_pid else 0.0
        after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        durations_us = np.array(
            [int(line.split("\t")[2]) for line in log_path.read_text().splitlines() if line]
        )
    succeeded = int(re.search(successes, output).group(1))
    measured = main_phase_seconds(output, warmup_s)
    client_used = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    return LoadResult(
        concurrency,
        succeeded,
        measured,
        succeeded / measured,
        float(np.percentile(durations_us, 50)) / 1000,
        float(np.percentile(durations_us, 99)) / 1000,
        client_used / wall,
        server_used / wall,
    )


def median_result(results: list[LoadResult]) -> LoadResult:
    """The repeat with the median throughput (its own latencies, so the row stays one real run)."""
    return sorted(results, key=lambda r: r.throughput)[len(results) // 2]
