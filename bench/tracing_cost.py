"""What tracing costs: the same repository served without and with --otlp-endpoint (spans exported to a
collector stub in this process), interleaved, digits at c=1 and c=32. Writes docs/tracing.md.

Without the flag no OpenTelemetry module is imported and the request path checks one attribute that is
None; the "off" rows are the server every other benchmark measures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import median_result, model_infer_body, run_load  # noqa: E402
from bench.run import bnserve, platform_line, sample  # noqa: E402
from tests.servers import start_server  # noqa: E402

CONCURRENCIES = (1, 32)


def collector() -> tuple[grpc.Server, str, list]:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[int] = [0]
    lock = threading.Lock()

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            with lock:
                received[0] += sum(
                    len(s.spans) for r in request.resource_spans for s in r.scope_spans
                )
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"http://127.0.0.1:{port}", received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tracing.md")
    args = parser.parse_args()
    started = time.perf_counter()
    stub_server, endpoint, received = collector()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        repository = work / "repository"
        bnserve("train", "--out", str(work / "digits-run"))
        bnserve(
            "export", str(work / "digits-run"), "--repository", str(repository), "--name", "digits"
        )
        servers = {
            "tracing off": start_server(repository),
            "tracing on, every request": start_server(
                repository, "--otlp-endpoint", endpoint, "--trace-sample-rate", "1"
            ),
            "tracing on, default rate 0.01": start_server(repository, "--otlp-endpoint", endpoint),
        }
        body = model_infer_body("digits", sample((8, 8, 1), 1))
        runs: dict = {}
        try:
            for _ in range(args.repeats):
                for name, server in servers.items():
                    for concurrency in CONCURRENCIES:
                        runs.setdefault((name, concurrency), []).append(
                            run_load(
                                server.port, body, concurrency, args.seconds, server.process.pid
                            )
                        )
        finally:
            for server in servers.values():
                server.stop()
    stub_server.stop(0)
    results = {key: median_result(value) for key, value in runs.items()}
    lines = [
        "# What tracing costs",
        "",
        f"Produced by `make bench` (`python bench/tracing_cost.py --seconds {args.seconds:g} --repeats "
        f"{args.repeats}`) in {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores "
        f"({platform_line()}). Two servers of the same digits repository side by side, h2load 1-sample "
        f"ModelInfer, interleaved, each figure the median of {args.repeats} runs of {args.seconds:g} s. "
        f"The collector stub received {received[0]:,} spans.",
        "",
        "| server | concurrency | req/s | vs off | p50 ms | p99 ms | server CPU (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, concurrency), r in results.items():
        base = results[("tracing off", concurrency)]
        lines.append(
            f"| {name} | {concurrency} | {r.throughput:,.0f} | {r.throughput / base.throughput:.2f} | "
            f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.server_cores:.2f} |"
        )
    lines += [
        "",
        "Off, no OpenTelemetry module is imported and each request checks one attribute that is None: the "
        "off rows are the server of every other benchmark. On, every request gets five spans built after "
        "it is answered and exported in batches by the SDK's processor thread; that work shares the GIL "
        "with the event loop, which is what the ratio shows; at the default --trace-sample-rate 0.01 an "
        "unsampled request pays one random draw.",
    ]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
