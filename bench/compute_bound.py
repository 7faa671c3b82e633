"""Compute-bound serving A/B: conv6 served under several execution configurations against in-process ONNX
Runtime at the same batch on the same cores, measured interleaved (one round = every configuration once, the
in-process baseline first and last), so that the machine's drift within minutes falls on both sides of every
ratio. Writes docs/compute-bound.md.

Each served figure's ratio is taken against the mean of the in-process figures just before and just after it
in the same round; the table reports the median over rounds of those ratios, and the median throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import model_infer_body, run_load  # noqa: E402
from bench.run import COMPUTE_MODEL, bnserve, platform_line, sample  # noqa: E402
from tests.servers import ServerProcess, start_listening  # noqa: E402

SHAPE = (32, 32, 3)
CONFIGURATIONS = {
    "default (1 instance, the pool)": [],
    "2 instances, 1 intra-op thread each": ["--instances", "2", "--intra-op-threads", "1"],
    "2 instances, the pool each": ["--instances", "2"],
    "1 instance, 1 intra-op thread": ["--intra-op-threads", "1"],
}


def in_process(version_dir: Path, batch: int, pin: str | None, seconds: float, threads: int) -> float:
    """Samples/s of in-process ONNX Runtime at ``batch`` (a subprocess, under ``taskset`` when pinned):
    ``threads`` 0 is the server's pool for a heavy model (cpu_pool_threads), else that many threads."""
    code = (
        "import sys, json, time; sys.path.insert(0, %r); import onnxruntime, numpy as np; "
        "from bnserve.server.backends.onnx import cpu_pool_threads, session_options; "
        "from bench.run import sample, timed_rate; "
        "s = onnxruntime.InferenceSession(%r, session_options(%d or cpu_pool_threads()), "
        "providers=['CPUExecutionProvider']); x = sample(%r, %d); "
        "print(json.dumps(timed_rate(lambda: s.run(None, {'images': x}), %d, %r, 1)))"
        % (str(ROOT), str(version_dir / "model.onnx"), threads, SHAPE, batch, batch, seconds)
    )
    command = (["taskset", "-c", pin] if pin else []) + [sys.executable, "-c", code]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(json.loads(output.strip().splitlines()[-1]))


def start(repository: Path, flags: list[str], pin: str | None) -> ServerProcess:
    prefix = ["taskset", "-c", pin] if pin else []
    command = [*prefix, sys.executable, "-m", "bnserve.cli", "serve", "--repository", str(repository)]
    command += ["--grpc-port", "0", "--http-port", "0", "--model-control", "none", *flags]
    return start_listening(command)


def measure(
    repository: Path, pin: str | None, client_pin: str | None, seconds: float, rounds: int
) -> dict:
    body = model_infer_body("conv6", sample(SHAPE, 1))
    version = repository / "conv6" / "1"
    servers = {name: start(repository, flags, pin) for name, flags in CONFIGURATIONS.items()}
    served: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    baselines: dict[str, list[float]] = {"pool": [], "1 thread": []}
    try:
        for _ in range(rounds):
            before = in_process(version, 8, pin, seconds, 0)
            baselines["pool"].append(before)
            baselines["1 thread"].append(in_process(version, 8, pin, seconds, 1))
            figures = {}
            for name, server in servers.items():
                for concurrency in (1, 8):
                    result = run_load(
                        server.port, body, concurrency, seconds, server.process.pid, cpu=client_pin
                    )
                    figures[(name, concurrency)] = result.throughput
            after = in_process(version, 8, pin, seconds, 0)
            baselines["pool"].append(after)
            for key, throughput in figures.items():
                served.setdefault(key, []).append(throughput)
                ratios.setdefault(key, []).append(throughput / ((before + after) / 2))
    finally:
        for server in servers.values():
            server.stop()
    return {"served": served, "ratios": ratios, "baselines": baselines}


def table(title: str, figures: dict) -> list[str]:
    pool = statistics.median(figures["baselines"]["pool"])
    one = statistics.median(figures["baselines"]["1 thread"])
    lines = [
        f"### {title}",
        "",
        f"In-process ONNX Runtime at batch 8: {pool:,.0f} samples/s with the server's pool, {one:,.0f} with one "
        "thread (medians over rounds).",
        "",
        "| configuration | c=1 req/s | c=8 req/s | c=8 / in-process batch 8 (pool), same round |",
        "|---|---|---|---|",
    ]
    for name in CONFIGURATIONS:
        c1 = statistics.median(figures["served"][(name, 1)])
        c8 = statistics.median(figures["served"][(name, 8)])
        ratio = figures["ratios"][(name, 8)]
        lines.append(
            f"| {name} | {c1:,.0f} | {c8:,.0f} | {statistics.median(ratio):.2f} "
            f"({min(ratio):.2f}-{max(ratio):.2f}) |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repository", type=Path, help="an existing repository holding conv6")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "compute-bound.md")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        repository = args.repository
        if repository is None:
            work = Path(directory)
            repository = work / "repository"
            bnserve("train", "--out", str(work / "conv6-run"), *COMPUTE_MODEL)
            bnserve("export", str(work / "conv6-run"), "--repository", str(repository), "--name", "conv6")
        shared = measure(repository, None, None, args.seconds, args.rounds)
        pinned = measure(repository, "0", "1", args.seconds, args.rounds)
    lines = [
        "# Compute-bound serving: where conv6's time goes, A/B",
        "",
        f"Produced by `python bench/compute_bound.py --seconds {args.seconds:g} --rounds {args.rounds}` in "
        f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} cores ({platform_line()}). conv6 is the "
        "synthetic 32x32x3 model of six conv-BN blocks (32-32-64-64-128-128); h2load sends 1-sample ModelInfer "
        "requests; every configuration runs once per round, between two in-process runs, and each ratio is "
        "against the mean of those two.",
        "",
        *table("2 cores shared by server and load generator", shared),
        *table("server pinned to core 0, load generator on core 1", pinned),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
