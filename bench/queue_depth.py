"""What the autoscaling gauges read under load: bnserve_queue_depth and bnserve_inflight_requests of one
replica at rising concurrency, beside its throughput, for an overhead-bound and a compute-bound model.
Writes docs/scaling.md (the HPA/KEDA target of the README's "Run on Kubernetes" comes from it).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import model_infer_body, run_load  # noqa: E402
from bench.run import COMPUTE_MODEL, bnserve, platform_line, sample  # noqa: E402
from tests.servers import start_server  # noqa: E402

CONCURRENCIES = (1, 8, 32, 64)
SCRAPE_EVERY_S = 0.25
"""Often enough for a median over a run, rarely enough not to slow the server it measures."""


def gauges(port: int, model: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = []
    for name in ("bnserve_queue_depth", "bnserve_inflight_requests"):
        found = re.search(rf'{name}\{{model="{model}",version="1"\}} (\S+)', text)
        values.append(float(found.group(1)) if found else 0.0)
    return values[0], values[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scaling.md")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        repository = work / "repository"
        bnserve("train", "--out", str(work / "digits-run"))
        bnserve(
            "export", str(work / "digits-run"), "--repository", str(repository), "--name", "digits"
        )
        bnserve("train", "--out", str(work / "conv6-run"), *COMPUTE_MODEL)
        bnserve(
            "export", str(work / "conv6-run"), "--repository", str(repository), "--name", "conv6"
        )
        server = start_server(repository, "--metrics-port", "0")
        port = next(
            int(m.group(1))
            for line in server.log
            if (m := re.search(r"metrics on http://127\.0\.0\.1:(\d+)", line))
        )
        try:
            for model, shape in (("digits", (8, 8, 1)), ("conv6", (32, 32, 3))):
                body = model_infer_body(model, sample(shape, 1))
                for concurrency in CONCURRENCIES:
                    readings, done = [], threading.Event()

                    def scrape(model=model, readings=readings, done=done):
                        while not done.wait(SCRAPE_EVERY_S):
                            readings.append(gauges(port, model))

                    scraper = threading.Thread(target=scrape)
                    scraper.start()
                    result = run_load(
                        server.port, body, concurrency, args.seconds, server.process.pid
                    )
                    done.set()
                    scraper.join()
                    queue = [q for q, _ in readings[2:]] or [0.0]
                    inside = [i for _, i in readings[2:]] or [0.0]
                    rows.append((model, concurrency, result, queue, inside))
        finally:
            server.stop()
    lines = [
        "# What the autoscaling gauges read under load",
        "",
        f"Produced by `make bench` (`python bench/queue_depth.py --seconds {args.seconds:g}`) in "
        f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} cores ({platform_line()}). One server "
        "(one replica), h2load with 1-sample ModelInfer requests at each concurrency for "
        f"{args.seconds:g} s, the gauges scraped every {SCRAPE_EVERY_S:g} s meanwhile (the first two "
        "readings left out).",
        "",
        "| model | concurrency | req/s | p50 ms | bnserve_queue_depth median | max | "
        "bnserve_inflight_requests median |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, concurrency, result, queue, inside in rows:
        lines.append(
            f"| {model} | {concurrency} | {result.throughput:,.0f} | {result.p50_ms:.2f} | "
            f"{statistics.median(queue):.1f} | {max(queue):.0f} | {statistics.median(inside):.1f} |"
        )
    lines += [
        "",
        "The gauges count requests the data plane holds: decoded, waiting for a model call or computing. "
        "For a compute-bound model they track the load. For an overhead-bound one (digits) the event loop "
        "saturates first and waiting requests sit in gRPC's own queues, before any gauge counts them: "
        "there the request rate or CPU is the better signal to scale on.",
    ]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
