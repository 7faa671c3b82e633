"""Instructions per request: the servers' CPU cost counted by callgrind, unaffected by a busy or drifting host.

Wall-clock rates on a shared 2-core machine move by up to 1.7x within minutes, so a change of a few
microseconds per request cannot be told from noise by timing. The instructions a server executes per request
barely move (repeats agree within ~1.5%). Each server runs under ``valgrind --tool=callgrind
--instr-atstart=no``; once it listens and has answered a warm-up, instrumentation is switched on for
``--requests`` ModelInfer requests from h2load at concurrency 1 and the counts dumped. The figure is every
thread's instructions (event loop, gRPC, model, drift monitor) divided by the requests h2load saw succeed.

Only concurrency 1 is reported: valgrind runs one thread at a time and slows the server ~50x but not h2load,
so at higher concurrency the batches it forms say nothing about a real run. Instructions are not time (a
cache miss costs no instruction); the wall-clock tables in docs/benchmarks.md are the throughput figures.

    python bench/instructions.py            # writes docs/instructions.md (~15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import MODEL_INFER_PATH, h2load_command, model_infer_body  # noqa: E402
from bench.run import prepare_digits, sample  # noqa: E402
from tests.servers import ServerProcess, start_listening, start_server  # noqa: E402

STARTUP_S = 900
"""Seconds a server may take to listen under callgrind (~50x slower than at full speed)."""
SUMMARY = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def h2load(port: int, body: Path, requests: int) -> int:
    """``requests`` ModelInfer requests, one at a time; returns how many succeeded."""
    result = subprocess.run(
        [
            h2load_command(),
            "-n",
            str(requests),
            "-c",
            "1",
            "-m",
            "1",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://127.0.0.1:{port}{MODEL_INFER_PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(re.search(r"(\d+) succeeded", result.stdout).group(1))


def control(server: ServerProcess, *arguments: str) -> None:
    subprocess.run(
        ["callgrind_control", *arguments, str(server.process.pid)],
        check=True,
        capture_output=True,
    )


def instructions_per_request(
    launch: Callable[[tuple[str, ...]], ServerProcess], body: Path, requests: int, out: Path
) -> tuple[float, int]:
    """(instructions per request, requests counted) of the server that ``launch(prefix)`` starts under
    callgrind (``prefix``: the valgrind command to run it under)."""
    server = launch(
        ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p")
    )
    try:
        # warm-up: first calls, caches, the inline-or-thread calibration
        h2load(server.port, body, 300)
        control(server, "--zero")
        control(server, "--instr=on")
        succeeded = h2load(server.port, body, requests)
        control(server, "--instr=off")
        control(server, "--dump")
        dumps = sorted(out.parent.glob(f"{out.name}.{server.process.pid}.*"))
        deadline = time.monotonic() + 60
        while not dumps and time.monotonic() < deadline:
            time.sleep(0.5)
            dumps = sorted(out.parent.glob(f"{out.name}.{server.process.pid}.*"))
        counted = max(int(m) for m in SUMMARY.findall(dumps[-1].read_text()))
    finally:
        server.stop(timeout=300)
    return counted / succeeded, succeeded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "instructions.md")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: `make bench` installs Debian's valgrind")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        repository = prepare_digits(work)
        body = work / "digits.bin"
        body.write_bytes(model_infer_body("digits", sample((8, 8, 1), 1)))
        noop = [sys.executable, str(ROOT / "bench" / "noop_server.py"), "--port", "0"]
        floor = [*noop, "--model", str(repository / "digits" / "1")]

        def bnserve(*flags: str) -> Callable[[tuple[str, ...]], ServerProcess]:
            return lambda prefix: start_server(
                repository, "--model-control", "none", *flags, timeout=STARTUP_S, prefix=prefix
            )

        servers = [
            (
                "no-op (grpc.aio, constant response)",
                lambda prefix: start_listening([*prefix, *noop], STARTUP_S),
            ),
            (
                "no-op + one model call a request (the floor)",
                lambda prefix: start_listening([*prefix, *floor], STARTUP_S),
            ),
            ("bnserve, defaults", bnserve()),
            ("bnserve, --monitor-sample-rate 0", bnserve("--monitor-sample-rate", "0")),
        ]
        rows = []
        for index, (name, launch) in enumerate(servers):
            per_request, counted = instructions_per_request(
                launch, body, args.requests, work / f"callgrind-{index}"
            )
            rows.append((name, per_request, counted))
            print(f"{name}: {per_request / 1000:,.0f}k instructions a request", flush=True)
    noop_ir, floor_ir = rows[0][1], rows[1][1]
    lines = [
        "# Instructions per request",
        "",
        f"Produced by `make bench` (`python bench/instructions.py --requests {args.requests}`) in "
        f"{time.perf_counter() - started:.0f} s. Digits model, 1-sample ModelInfer requests with raw FP32 "
        "contents from h2load, one at a time; every thread of the server counted by callgrind (see the module "
        "docstring of bench/instructions.py for the method and why only concurrency 1).",
        "",
        "| server | instructions a request | vs no-op | vs floor | requests counted |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {ir / 1000:,.0f}k | {(ir - noop_ir) / 1000:+,.0f}k | {(ir - floor_ir) / 1000:+,.0f}k "
            f"| {counted:,} |"
            for name, ir, counted in rows
        ],
        "",
        "The floor runs the same model.onnx once a request on the event loop and answers a prepared response: "
        "the least any server that calls the model once a request can do. bnserve's difference to it is the "
        "price of its request path (validation, batching, statistics, metrics, the drift monitor), paid on "
        "the one event loop thread that bounds throughput on a server with spare cores.",
        "",
        "The drift monitor's share (the last two rows) is overstated here: its samples go to its thread in "
        "batches every 0.2 s, which under callgrind's ~50x slowdown holds one or two samples against ~50 at "
        "full speed, and each batch pays one monitor.onnx call.",
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
