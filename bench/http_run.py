"""`make bench`, HTTP part: bnserve's HTTP port against an HTTP no-op on the same library and the peers' REST.

Every server is driven by the same h2load (HTTP/1.1, one request in flight per connection) with a
1-sample digits infer; each row is also a ratio to the aiohttp no-op and to the best peer's REST
(KServe ModelServer: v2 JSON, v2 binary and its v1 = TF Serving REST protocol; Seldon MLServer: v2
JSON, the only REST form it answers). Writes docs/http-benchmarks.md.

    python bench/http_run.py [--seconds 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.loadgen import LoadResult, median_result, run_http_load  # noqa: E402
from bench.run import MACHINE_CLASSES, Report, bnserve, platform_line, sample, served_count  # noqa: E402
from tests.requests import tf_rest_body, v2_binary_body, v2_http_outputs, v2_json_body  # noqa: E402
from tests.servers import ServerProcess, start_listening, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCIES = (1, 32)
V2 = "/v2/models/digits/infer"
TF = "/v1/models/digits:predict"


def request_formats(images: np.ndarray) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """name -> (path, body, headers) of one 1-sample request in each wire format."""
    binary_body, binary_headers = v2_binary_body(images)
    return {
        "v2 JSON": (
            V2,
            json.dumps(v2_json_body(images)).encode(),
            {"Content-Type": "application/json"},
        ),
        "v2 binary": (V2, binary_body, binary_headers),
        "TF Serving REST": (
            TF,
            json.dumps(tf_rest_body(images)).encode(),
            {"Content-Type": "application/json"},
        ),
    }


# MLServer 1.7 answers the binary extension with a 500 and has no TF Serving REST; KServe serves the latter as
# its "v1 protocol" (bench/peers/kserve_onnx.py handles both).
SERVED_FORMATS = {
    "no-op": ("v2 binary",),
    "no-op + one model call a request": ("v2 binary",),
    "no-op + one model call, on uvloop": ("v2 binary",),
    "bnserve": ("v2 JSON", "v2 binary", "TF Serving REST"),
    "kserve": ("v2 JSON", "v2 binary", "TF Serving REST"),
    "mlserver": ("v2 JSON",),
}


ANALYSIS = [
    "",
    "## Analysis",
    "",
    "- **Where the time of an HTTP infer goes, 2026-12-04** (py-spy on the event loop thread, bnserve v2 binary "
    "at c=32, 2 shared cores, the loop ~95% busy). aiohttp's own work (reading and parsing the request, routing, "
    "writing the answer) took ~40% of the loop, as it does in the floor; bnserve's handler 44%: arming "
    "--body-seconds for a body that had already arrived 6.3% (asyncio.timeout: a timer pushed on the heap, then "
    "cancelled), the JSON header 10% (orjson, the field checks, the raw view), looking up the JSON separator "
    "limit 3.7%, the data plane 10%, the answer 2.5%; the batcher another ~10%.",
    "- **Changed (2026-12-04):** a body already whole is read without arming the timer (one still arriving is "
    "read under it, tests/test_http.py); the separator limit is not looked up for a JSON part of at most "
    "SEPARATOR_SLACK bytes, which cannot exceed any limit; infer and predict are the first routes aiohttp tries "
    "under their prefix; Content-Type is parsed only when it is not exactly an accepted type. Interleaved A/B "
    "against the previous code, servers side by side, 5 rounds of 2 s, medians of the per-round ratios on 2 "
    "shared cores: v2 binary c=32 **1.125** (1.07-1.19), TF Serving REST c=32 1.14 (1.07-1.19), v2 JSON c=32 "
    "1.03 (1.00-1.26); c=1 0.92-1.06, within noise. Answers are written by orjson unless its text holds null "
    "(json_codec.json_document) instead of after a finiteness test of each output (np.isfinite(x).all(): 4.0 us "
    "a digits answer, 5% of the loop for v2 JSON at c=32).",
    "- **Where 0.9 of the floor is still missed.** The floor's handler reads the body, runs the model and "
    "writes a prepared answer. Python calls on the loop thread per v2 binary request at c=1 (cProfile, 2,000 "
    "requests): floor 232, bnserve 433 (gRPC: 320 and 466). The ~200 more are the validation of each JSON "
    "field, the data plane's checks, statistics, metrics, the drift monitor's sampling and the batcher's "
    "bookkeeping, each 1-4% of the loop: no single item is left that is large. The 2026-12-04 run on uvloop "
    "met 0.9 with the server on one core (0.96) and missed it on shared cores (0.77, 0.85 in the run before on "
    "asyncio); the shared-core rows move by 10-20% between runs on this host.",
    "- **uvloop (2026-12-04), measured as the issue asked:** the HTTP port shares the gRPC port's loop, which "
    "is now uvloop by default (`--event-loop`, README). Interleaved A/B, 5 rounds of 2 s, uvloop over asyncio: "
    "v2 binary c=1 / c=32 1.03 / 1.08 on shared cores and 1.03 / 0.95 with the server on one core (a second "
    "5-round A/B of binary c=32 pinned: 1.06); v2 JSON 1.13 / 1.01 shared, 1.02 / 0.93 pinned. Two uvloop "
    "servers against each other, pinned, read 0.85 and 0.88: on HTTP the loop's effect is within that noise, "
    "and gRPC's clearer gain (1.12-1.25 at c=8/32 in both configurations) decided the default. The floor on "
    "uvloop is in the tables above; the targets stay against the floor on asyncio, as they were set. Not "
    "measured: a cache of parsed v2 headers (identical headers are what h2load sends, not what clients with "
    "request ids send).",
]


def start(name: str, repository: Path, work: Path, pin: str | None) -> ServerProcess:
    prefix = ["taskset", "-c", pin] if pin else []
    if name.startswith("no-op"):
        model = ["--model", str(repository / "digits" / "1")] if name != "no-op" else []
        loop = ["--event-loop", "uvloop"] if name.endswith("uvloop") else []
        server = start_listening(
            [*prefix, sys.executable, str(ROOT / "bench" / "noop_http_server.py"), *model, *loop]
        )
        server.http_port = server.port
        return server
    if name == "bnserve":
        return start_server(repository, "--model-control", "none", http=True, pin=pin)
    from bench.peers import check_answer, start_peer

    server = start_peer(name, repository / "digits" / "1", "digits", work, pin)
    check_answer(
        server.port, "digits", sample((8, 8, 1), 1), expected_logits(repository)
    )  # waits until loaded
    return server


def expected_logits(repository: Path) -> np.ndarray:
    from bench.peers import reference_logits

    return reference_logits(repository / "digits" / "1", sample((8, 8, 1), 1))


def check_http_answer(
    server: ServerProcess, path: str, body: bytes, headers: dict, expected: np.ndarray
) -> None:
    """One real request over HTTP first: h2load counts any 2xx, so the answer itself is checked here."""
    response = requests.post(
        f"http://127.0.0.1:{server.http_port}{path}", data=body, headers=headers, timeout=30
    )
    response.raise_for_status()
    if path == TF:
        logits = np.array([row["logits"] for row in response.json()["predictions"]], np.float32)
    else:
        logits = v2_http_outputs(response.content, response.headers)["logits"]
    np.testing.assert_allclose(logits.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def measure(report: Report, work: Path, repository: Path, seconds: float, repeats: int) -> None:
    formats = request_formats(sample((8, 8, 1), 1))
    expected = expected_logits(repository)
    for title, server_pin, client_pin in MACHINE_CLASSES:
        # Every server runs at once (idle while another is loaded) and the runs interleave, server by server
        # within each repeat: this shared machine's speed drifts by up to 1.7x within minutes, and a ratio is
        # only fair when both sides are measured in the same minutes.
        servers: dict[str, ServerProcess] = {}
        runs: dict[tuple[str, str, int], list[LoadResult]] = {
            (name, form, c): []
            for name, served in SERVED_FORMATS.items()
            for form in served
            for c in CONCURRENCIES
        }
        try:
            for name, served in SERVED_FORMATS.items():
                servers[name] = start(name, repository, work, server_pin)
                if not name.startswith("no-op"):
                    for form in served:
                        path, body, headers = formats[form]
                        check_http_answer(servers[name], path, body, headers, expected)
            before = served_count(servers["bnserve"].port)
            for _ in range(repeats):
                for (name, form, c), results_so_far in runs.items():
                    path, body, headers = formats[form]
                    results_so_far.append(
                        run_http_load(
                            servers[name].http_port,
                            path,
                            body,
                            headers,
                            c,
                            seconds,
                            servers[name].process.pid,
                            cpu=client_pin,
                        )
                    )
            # The server's own count: at least what h2load saw answered (warm-up too).
            counted = served_count(servers["bnserve"].port) - before
            reported = sum(
                r.requests for (name, _, _), rs in runs.items() if name == "bnserve" for r in rs
            )
            assert counted >= reported, (
                f"bnserve counted {counted} successes, h2load {reported} 2xx"
            )
        finally:
            for server in servers.values():
                server.stop()
        results: dict[tuple[str, str], dict[int, LoadResult]] = {
            (name, form): {c: median_result(runs[name, form, c]) for c in CONCURRENCIES}
            for name, served in SERVED_FORMATS.items()
            for form in served
        }
        noop = results["no-op", "v2 binary"]
        best_peer = {
            c: max(
                r[c].throughput
                for (name, _), r in results.items()
                if name in ("kserve", "mlserver")
            )
            for c in CONCURRENCIES
        }
        lines = [
            f"### {title}",
            "",
            "| server | format | concurrency | req/s | vs HTTP no-op | vs best peer REST | "
            "p50 ms | p99 ms | server CPU |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (name, form), by_c in results.items():
            for c, r in by_c.items():
                lines.append(
                    f"| {name} | {form} | {c} | {r.throughput:,.0f} | {r.throughput / noop[c].throughput:.2f} | "
                    f"{r.throughput / best_peer[c]:.2f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.server_cores:.2f} |"
                )
        report.add(*lines, "")
        ours = results["bnserve", "v2 binary"][32]
        # Restated 2026-12-03 (#26) against the floor of any server that calls the model once a request.
        floor = results["no-op + one model call a request", "v2 binary"][32].throughput
        for form, factor in (("v2 binary", 0.9), ("v2 JSON", 0.8)):
            measured = results["bnserve", form][32].throughput
            report.target(
                f"[{title}] HTTP {form} c=32: >= {factor} x HTTP floor (aiohttp no-op + one model call)",
                f"{measured:,.0f} / {floor:,.0f} = {measured / floor:.2f}",
                measured >= factor * floor,
            )
        on_uvloop = results["no-op + one model call, on uvloop", "v2 binary"][32].throughput
        report.add(
            f"[{title}] Against that floor on uvloop, bnserve's default loop (no target): v2 binary c=32 "
            f"{ours.throughput / on_uvloop:.2f}x, v2 JSON "
            f"{results['bnserve', 'v2 JSON'][32].throughput / on_uvloop:.2f}x; uvloop's gain on the floor "
            f"itself {on_uvloop / floor:.2f}x.",
            "",
        )
        report.target(
            f"[{title}] HTTP binary c=32: >= 1.5 x best peer REST",
            f"{ours.throughput:,.0f} / {best_peer[32]:,.0f} = {ours.throughput / best_peer[32]:.2f}",
            ours.throughput >= 1.5 * best_peer[32],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "http-benchmarks.md")
    args = parser.parse_args()
    started = time.perf_counter()
    report = Report()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        repository = work / "repository"
        bnserve("train", "--out", str(work / "digits-run"))
        bnserve(
            "export", str(work / "digits-run"), "--repository", str(repository), "--name", "digits"
        )
        measure(report, work, repository, args.seconds, args.repeats)
    header = [
        "# HTTP benchmarks",
        "",
        f"Produced by `make bench` (`python bench/http_run.py --seconds {args.seconds} --repeats {args.repeats}`) in "
        f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} cores ({platform_line()}). Load generator: h2load "
        "`--h1` in a separate process, `concurrency` HTTP/1.1 connections with one 1-sample infer in flight each; "
        f"each figure is the median of {args.repeats} runs of {args.seconds:g} s after 0.5 s of warm-up. The no-op "
        'is aiohttp answering a prepared v2 binary response (bench/noop_http_server.py); "no-op + one model call a '
        "request\" also runs the digits model.onnx on each request's input row (ONNX Runtime, one thread, on the "
        "event loop, no batching): the floor of any server that calls the model once a request; the targets are set "
        "against it on asyncio's loop, and its uvloop row (bnserve's default loop) shows the loop's own share. All "
        "servers run side by side and their runs interleave, so a slow spell weighs on all alike. The peers serve the same "
        'model.onnx (bench/peers/); "vs best peer REST" divides by the fastest peer row at that concurrency, '
        "whatever its format.",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *[
            f"| {name} | {measured} | {'met' if met else '**missed**'} |"
            for name, measured, met in report.targets
        ],
        "",
        "## Results",
        "",
    ]
    args.out.write_text("\n".join(header + report.lines + ANALYSIS) + "\n")


if __name__ == "__main__":
    main()
