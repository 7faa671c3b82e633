"""Compute-bound serving A/B: conv6, and ResNet50 (keras.applications, the users'-own-models issue's model),
served under several execution configurations against in-process ONNX Runtime at the same batch on the same cores, measured interleaved (one round = every configuration once, the
in-process baseline first and last), so that the machine's drift within minutes falls on both sides of every
ratio. Writes docs/compute-bound.md.

Each served figure's ratio is taken against the mean of the in-process figures just before and just after it
in the same round; the table reports the median over rounds of those ratios, and the median throughput.

The ceiling. A served request costs at least what the model costs per sample in-process plus what the serving
stack alone costs per request: the no-op grpc.aio server's CPU per request (bench/noop_server.py, same requests,
same round) and, on shared cores, the load generator's. With K cores for server (and client, when shared):

    served_max = K / (m + f + g),   m = u / r (core-seconds per sample in-process, u its cores used at rate r),
    f = no-op server cores / no-op req/s,   g = h2load cores / no-op req/s (0 when the client has its own core)

and the best ratio any one-process Python front end on grpc.aio can reach is served_max / r (r: the mean of the
round's in-process runs before and after, as for every ratio here). It assumes perfect overlap and nothing
above the no-op per request (no decoding, batching, encoding), so it is an upper bound.

The peers. ResNet50 is also served by KServe and MLServer (bench/peers.py) in every round, for the issue's
rows c=1 >= 1.1x and c=8 >= 1.5x the best peer; each round's ratio is bnserve's default over the faster peer.

The budget. The default server's c=8 run is measured the same way (CPU per thread, by role) and the ceiling's
terms are replaced by what was measured one at a time (budget_bounds): the model's cost inside the server for
m, bnserve's front end for f, and the cores left unused. The gap from the ceiling to the measured ratio so
splits into what the model loses inside the server, what the front end costs above the no-op, and idle cores.
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

from bench.loadgen import (  # noqa: E402
    LoadResult,
    model_infer_body,
    python_thread_names,
    run_load,
    thread_cpu_seconds,
)
from bench.run import (  # noqa: E402
    COMPUTE_MODEL,
    bnserve,
    cpu_seconds_by_role,
    platform_line,
    sample,
)
from bnserve.server.settings import SETTING_FIELDS, flag_default  # noqa: E402
from tests.servers import ServerProcess, start_listening, start_server  # noqa: E402

SHAPE = (32, 32, 3)
"""conv6's input, and ResNet50's here (tests/helpers/applications.py INPUT_SHAPE)."""
DEFAULT = "default (1 instance, the pool)"
LONG_CALLS_OFF = "default, long-call handling off (--long-call-us 0)"
MONITOR_OFF = "default, drift monitor off (--monitor-sample-rate 0)"
MONITOR_TARGET = 0.95
"""The issue's "nothing regresses" bound: the drift monitor at its default rate costs at most 5% of throughput."""
CONFIGURATIONS = {
    "conv6": {
        DEFAULT: [],
        LONG_CALLS_OFF: ["--long-call-us", "0"],
        MONITOR_OFF: ["--monitor-sample-rate", "0"],
        "2 instances, 1 intra-op thread each": ["--instances", "2", "--intra-op-threads", "1"],
        "2 instances, the pool each": ["--instances", "2"],
        "1 instance, 1 intra-op thread": ["--intra-op-threads", "1"],
        "model process (shared memory), experimental": ["--model-processes"],
    },
    # ~9 ms a batch of 4 on 2 cores: the configurations that matter for a long call only.
    "resnet50": {
        DEFAULT: [],
        LONG_CALLS_OFF: ["--long-call-us", "0"],
        MONITOR_OFF: ["--monitor-sample-rate", "0"],
    },
}


def in_process(
    version_dir: Path, batch: int, pin: str | None, seconds: float, threads: int
) -> tuple[float, float]:
    """Samples/s of in-process ONNX Runtime at ``batch`` (a subprocess, under ``taskset`` when pinned):
    ``threads`` 0 is the server's pool for a heavy model (cpu_pool_threads), else that many threads."""
    code = (
        "import sys, json, time; sys.path.insert(0, %r); import onnxruntime, numpy as np; "
        "from bnserve.server.backends.onnx import cpu_pool_threads, session_options; "
        "from bench.run import sample, timed_rate; "
        "s = onnxruntime.InferenceSession(%r, session_options(%d or cpu_pool_threads()), "
        "providers=['CPUExecutionProvider']); x = sample(%r, %d); "
        "c = time.process_time(); w = time.perf_counter(); "
        "r = timed_rate(lambda: s.run(None, {'images': x}), %d, %r, 1); "
        "print(json.dumps([r, (time.process_time() - c) / (time.perf_counter() - w)]))"
        % (str(ROOT), str(version_dir / "model.onnx"), threads, SHAPE, batch, batch, seconds)
    )
    command = (["taskset", "-c", pin] if pin else []) + [sys.executable, "-c", code]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate, cores = json.loads(output.strip().splitlines()[-1])
    return float(rate), float(cores)


def start(repository: Path, flags: list[str], pin: str | None) -> ServerProcess:
    return start_server(repository, "--model-control", "none", *flags, pin=pin)


def measure(
    repository: Path,
    model: str,
    pin: str | None,
    client_pin: str | None,
    seconds: float,
    rounds: int,
    work: Path,
) -> dict:
    body = model_infer_body(model, sample(SHAPE, 1))
    version = repository / model / "1"
    servers = {name: start(repository, flags, pin) for name, flags in CONFIGURATIONS[model].items()}
    prefix = ["taskset", "-c", pin] if pin else []
    noop = start_listening([*prefix, sys.executable, str(ROOT / "bench" / "noop_server.py")])
    peers = start_peers(model, version, work, pin) if model in PEER_MODELS else {}
    budgets: list[dict[str, float]] = []
    peer_rates: dict[tuple[str, int], list[float]] = {}
    served: dict[tuple[str, int], list[float]] = {}
    batches: dict[tuple[str, int], list[float]] = {}
    cores: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    baselines: dict[str, list[float]] = {"pool": [], "1 thread": []}
    try:
        # Warmed first: opening monitor.onnx's session (~0.3 s of CPU for ResNet50) is not a cost per request.
        default = servers[DEFAULT]
        run_load(default.port, body, 8, seconds, default.process.pid, cpu=client_pin)
        cpu_before = thread_cpu_seconds(default.process.pid)
        names = python_thread_names(default.process.pid)  # after the warm-up: its threads exist
        cores_for_both = 1 if pin else (os.cpu_count() or 1)
        for _ in range(rounds):
            before, used = in_process(version, 8, pin, seconds, 0)
            baselines["pool"].append(before)
            baselines["1 thread"].append(in_process(version, 8, pin, seconds, 1)[0])
            floor = run_load(noop.port, body, 8, seconds, noop.process.pid, cpu=client_pin)
            figures = {}
            for name, server in servers.items():
                for concurrency in (1, 8):
                    calls_before = model_calls(server.port, model)
                    budgeted = name == DEFAULT and concurrency == 8
                    if budgeted:
                        threads_before, started = (
                            thread_cpu_seconds(server.process.pid),
                            time.perf_counter(),
                        )
                    result = run_load(
                        server.port, body, concurrency, seconds, server.process.pid, cpu=client_pin
                    )
                    if budgeted:
                        wall = time.perf_counter() - started
                        roles = cpu_seconds_by_role(
                            server.process.pid,
                            threads_before,
                            thread_cpu_seconds(server.process.pid),
                            names,
                        )
                        served_run = result
                    calls_after = model_calls(server.port, model)
                    figures[(name, concurrency)] = result.throughput
                    batches.setdefault((name, concurrency), []).append(
                        (calls_after[0] - calls_before[0])
                        / max(1, calls_after[1] - calls_before[1])
                    )
                    cores.setdefault((name, concurrency), []).append(result.server_cores)
            for name, peer in peers.items():
                for concurrency in (1, 8):
                    result = run_load(
                        peer.port, body, concurrency, seconds, peer.process.pid, cpu=client_pin
                    )
                    peer_rates.setdefault((name, concurrency), []).append(result.throughput)
            after = in_process(version, 8, pin, seconds, 0)[0]
            baselines["pool"].append(after)
            budget = cpu_budget(used / before, floor, served_run, roles, wall, cores_for_both, pin)
            budget["in-process rate"] = (before + after) / 2
            budgets.append(budget)
            for key, throughput in figures.items():
                served.setdefault(key, []).append(throughput)
                ratios.setdefault(key, []).append(throughput / ((before + after) / 2))
        monitor_share = monitor_cpu_share(default.process.pid, cpu_before)
    finally:
        for server in (*servers.values(), noop, *peers.values()):
            server.stop()
    return {
        "budgets": budgets,
        "peer rates": peer_rates,
        "served": served,
        "ratios": ratios,
        "baselines": baselines,
        "batches": batches,
        "cores": cores,
        "monitor share": monitor_share,
    }


PEER_MODELS = ("resnet50",)
"""Models also served by the peers in the same rounds (the issue's rows for the ResNet-style model: c=1 >= 1.1x
and c=8 >= 1.5x the best peer); conv6's peer rows are bench/run.py's."""
PEER_TARGETS = {1: 1.1, 8: 1.5}


def start_peers(model: str, version: Path, work: Path, pin: str | None) -> dict[str, ServerProcess]:
    """bench/run.py's peers (KServe, MLServer) serving ``version``'s model.onnx, each checked to answer as
    in-process ONNX Runtime does before it is measured."""
    from bench.peers import check_answer, reference_logits, start_peer
    from bench.run import PEERS

    images = sample(SHAPE, 1)
    expected = reference_logits(version, images)
    peers: dict[str, ServerProcess] = {}
    try:
        for name in PEERS:
            peers[name] = start_peer(name, version, model, work, pin)
            check_answer(peers[name].port, model, images, expected)
    except BaseException:
        for peer in peers.values():
            peer.stop()
        raise
    return peers


MODEL_ROLES = ("model threads", "ONNX Runtime pool and other native threads")
BUDGET_ITEMS = {
    "in-process model": "model, in-process at batch 8 (the ceiling's m)",
    "served model": "model, served (the model threads and ONNX Runtime's pool)",
    "no-op stack": "the no-op grpc.aio server's whole process (the ceiling's f)",
    "front end": "bnserve's front end: event loop, gRPC core, drift monitor, other threads",
    "load generator": "load generator (h2load; 0 with its own core)",
    "unused": "cores left unused, or used by other processes",
}
"""What the default server's c=8 load spent per request, in core-microseconds: what CPU it used (by role, from
/proc per thread), what the ceiling's terms are, and what was left unused."""


def cpu_budget(
    model_cost: float,
    floor: LoadResult,
    served: LoadResult,
    roles: dict[str, float],
    wall: float,
    cores: int,
    pin: str | None,
) -> dict[str, float]:
    """BUDGET_ITEMS in core-seconds per request: ``model_cost`` in-process core-seconds per sample, ``floor``
    the no-op's run, ``served`` the default server's c=8 run, ``roles`` its CPU seconds by role
    (cpu_seconds_by_role) over ``wall`` seconds, ``cores`` the budget's K. The load generator counts on shared
    cores only; with the server pinned, its one core is the budget and "unused" is what of it the server did
    not use."""
    per_request = 1 / (wall * served.throughput)
    served_model = sum(roles[role] for role in MODEL_ROLES) * per_request
    front_end = (
        sum(seconds for role, seconds in roles.items() if role not in MODEL_ROLES) * per_request
    )
    generator = 0.0 if pin else served.client_cores / served.throughput
    return {
        "cores": cores,
        "in-process model": model_cost,
        "served model": served_model,
        "no-op stack": floor.server_cores / floor.throughput,
        "front end": front_end,
        "load generator": generator,
        "unused": max(0.0, cores / served.throughput - served_model - front_end - generator),
        "no-op load generator": 0.0 if pin else floor.client_cores / floor.throughput,
    }


def budget_bounds(budget: dict[str, float]) -> list[tuple[str, float]]:
    """The chain from the ceiling to the measured ratio (to the budget's "in-process rate", the round's mean
    of the in-process runs before and after, as the ratios use it), one term of the budget
    replaced at a time: with K = the budget's "cores",

        ceiling        = K / (m + f + g0) / r                 (m in-process model, f no-op, g0 its h2load)
        served model   = K / (m_s + f + g0) / r               (m_s the model's cost inside the server)
        front end      = K / (m_s + e + g) / r                (e bnserve's front end, g h2load against it)
        measured       = K / (m_s + e + g + u) / r            (u the cores left unused per request)

    The last equals the measured rate over r, because the core-seconds per request add up to K / rate."""
    m, m_s, e, g, u = (
        budget[k]
        for k in ("in-process model", "served model", "front end", "load generator", "unused")
    )
    f, g0, in_process_rate, cores = (
        budget["no-op stack"],
        budget["no-op load generator"],
        budget["in-process rate"],
        budget["cores"],
    )
    return [
        ("ceiling (in-process model, the no-op's stack)", cores / (m + f + g0) / in_process_rate),
        ("with the model's cost as served", cores / (m_s + f + g0) / in_process_rate),
        (
            "with bnserve's front end instead of the no-op's (no core left unused)",
            cores / (m_s + e + g) / in_process_rate,
        ),
        ("measured (with the unused cores)", cores / (m_s + e + g + u) / in_process_rate),
    ]


def monitor_cpu_share(pid: int, before: dict[int, tuple[str, float]]) -> float:
    """The drift monitor thread's share of the server's CPU since ``before`` (thread_cpu_seconds): with the
    server's cores busy, about the share of throughput it costs, and steadier than a throughput ratio."""
    after = thread_cpu_seconds(pid)
    # Read after the runs: the monitor's thread starts with the first sampled batch.
    used = cpu_seconds_by_role(pid, before, after, python_thread_names(pid))
    return used["drift monitor"] / max(sum(used.values()), 1e-9)


def model_calls(port: int, model: str) -> tuple[int, int]:
    """(samples inferred, model calls) of ``model`` so far, from the server's ModelStatistics; warm-up included,
    so a run's mean batch is the difference of two readings over calls."""
    import grpc

    from bnserve.protos import inference_pb2 as pb
    from bnserve.protos import inference_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stats = (
            inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            .ModelStatistics(pb.ModelStatisticsRequest(name=model, version="1"), timeout=10)
            .model_stats[0]
        )
    return int(stats.inference_count), int(stats.execution_count)


def _work_line(fragment: str) -> str:
    """The end of py-spy's name for the line of ModelThreads._work holding ``fragment`` (its path differs
    between a checkout and an installed wheel)."""
    import inspect

    from bnserve.server.execution import ModelThreads

    lines, first = inspect.getsourcelines(ModelThreads._work)
    number = first + next(i for i, line in enumerate(lines) if fragment in line)
    return f"execution.py:{number})"


# Leaf frames (any marker of a state). uvloop's call_soon_threadsafe is compiled, so py-spy shows the
# calling line of ModelThreads._work there; asyncio's shows its own Python frame, _write_to_self. The share
# differs by more than the name: asyncio's self-pipe send() releases the GIL and must take it back from the
# busy loop, while uvloop wakes the loop with uv_async_send (an eventfd write) holding the GIL throughout,
# so under uvloop the hand-back has no GIL wait in it and reads ~0.
MODEL_THREAD_STATES = {
    "in Session.run (computing, or taking the GIL back after it)": ("Session.run",),
    "handing the result to the loop (call_soon_threadsafe: waking the loop; on asyncio, taking the GIL back too)": (
        "_write_to_self",
        _work_line("call_soon_threadsafe("),
    ),
    "waiting for the next batch": (_work_line("self._jobs.get()"),),
}


def where_the_model_thread_waits(
    repository: Path, pin: str | None, client_pin: str | None, seconds: float
) -> dict[str, float]:
    """py-spy samples (idle ones too) of the default server's model thread during a c=8 load: the share of
    wall time it spends in each state of MODEL_THREAD_STATES (the rest: other Python lines)."""
    import shutil
    import threading

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    body = model_infer_body("conv6", sample(SHAPE, 1))
    server = start(repository, [], pin)
    with tempfile.TemporaryDirectory() as directory:
        raw = Path(directory) / "raw.txt"
        try:
            run_load(server.port, body, 8, 1.0, server.process.pid, cpu=client_pin)  # threads exist
            load = threading.Thread(
                target=run_load,
                args=(server.port, body, 8, seconds + 2, server.process.pid),
                kwargs={"cpu": client_pin},
            )
            load.start()
            time.sleep(1)
            subprocess.run(
                [py_spy, "record", "-p", str(server.process.pid), "-d", str(round(seconds)), "-r",
                 "200", "-f", "raw", "-o", str(raw), "--threads", "--idle", "--nonblocking"],
                capture_output=True, check=True,
            )  # fmt: skip
            load.join()
        finally:
            server.stop()
        counts = dict.fromkeys(MODEL_THREAD_STATES, 0)
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            if "bnserve-model" not in stack.split(";")[0]:
                continue
            total += int(samples)
            leaf = stack.split(";")[-1]
            for state, markers in MODEL_THREAD_STATES.items():
                if any(marker in leaf for marker in markers):
                    counts[state] += int(samples)
                    break
    return {state: count / max(total, 1) for state, count in counts.items()}


def table(title: str, model: str, figures: dict) -> list[str]:
    pool = statistics.median(figures["baselines"]["pool"])
    one = statistics.median(figures["baselines"]["1 thread"])
    lines = [
        f"### {title}",
        "",
        f"In-process ONNX Runtime at batch 8: {pool:,.0f} samples/s with the server's pool, {one:,.0f} with one "
        "thread (medians over rounds).",
        "",
        "| configuration | c=1 req/s | c=8 req/s | c=8 / in-process batch 8 (pool), same round | c=8 mean "
        "batch | c=8 server CPU (cores) |",
        "|---|---|---|---|---|---|",
    ]
    for name in CONFIGURATIONS[model]:
        c1 = statistics.median(figures["served"][(name, 1)])
        c8 = statistics.median(figures["served"][(name, 8)])
        ratio = figures["ratios"][(name, 8)]
        lines.append(
            f"| {name} | {c1:,.0f} | {c8:,.0f} | {statistics.median(ratio):.2f} "
            f"({min(ratio):.2f}-{max(ratio):.2f}) | {statistics.median(figures['batches'][(name, 8)]):.1f} | "
            f"{statistics.median(figures['cores'][(name, 8)]):.2f} |"
        )
    monitor = [
        on / off
        for on, off in zip(figures["served"][(DEFAULT, 8)], figures["served"][(MONITOR_OFF, 8)])
    ]
    monitor_ratio = statistics.median(monitor)
    lines += [
        "",
        f"The drift monitor at its default rate (`--monitor-sample-rate` {flag_default(SETTING_FIELDS['monitor_sample_rate']):g}, "
        f"`--monitor-max-share` {flag_default(SETTING_FIELDS['monitor_max_share']):g}): c=8 "
        f"with it on answers **{monitor_ratio:.2f}** ({min(monitor):.2f}-{max(monitor):.2f}) of the rate with "
        f"it off, same round (target >= {MONITOR_TARGET}: "
        f"{'met' if monitor_ratio >= MONITOR_TARGET else 'missed'}); over all the default server's runs its "
        f"thread used {figures['monitor share']:.3f} of the server's CPU (per-thread CPU from /proc).",
    ]
    chains = [budget_bounds(b) for b in figures["budgets"]]
    ceilings = [chain[0][1] for chain in chains]
    lines += [
        "",
        f"Ceiling of c=8 / in-process (module docstring: in-process cost per sample plus the no-op grpc.aio "
        f"server's cost per request, same round): **{statistics.median(ceilings):.2f}** "
        f"({min(ceilings):.2f}-{max(ceilings):.2f}).",
    ]
    peers = sorted({name for name, _ in figures["peer rates"]})
    if peers:
        lines += [
            "",
            "Against the peers serving the same model.onnx in the same rounds (h2load, same requests):",
            "",
        ]
        lines += [
            "| concurrency | bnserve (default) req/s | "
            + " | ".join(f"{p} req/s" for p in peers)
            + " | bnserve / best peer, per round | target |",
            "|---|---|" + "---|" * len(peers) + "---|---|",
        ]
        for concurrency, target in PEER_TARGETS.items():
            # Each round's bnserve rate over that round's fastest peer.
            ratios = [
                bnserve / max(peer_rates)
                for bnserve, *peer_rates in zip(
                    figures["served"][(DEFAULT, concurrency)],
                    *(figures["peer rates"][(p, concurrency)] for p in peers),
                )
            ]
            best = statistics.median(ratios)
            lines.append(
                f"| {concurrency} | {statistics.median(figures['served'][(DEFAULT, concurrency)]):,.0f} | "
                + " | ".join(
                    f"{statistics.median(figures['peer rates'][(p, concurrency)]):,.0f}"
                    for p in peers
                )
                + f" | **{best:.2f}** ({min(ratios):.2f}-{max(ratios):.2f}) | >= {target} "
                f"({'met' if best >= target else 'missed'}) |"
            )
    medians = {key: statistics.median(b[key] for b in figures["budgets"]) for key in BUDGET_ITEMS}
    lines += [
        "",
        "Where the default server's c=8 load spent the cores, per request (core-microseconds, CPU per thread "
        "from /proc, medians over rounds), and the ratio to in-process as each term of the ceiling is "
        "replaced by what was measured (`budget_bounds`):",
        "",
        "| per request | core-us |",
        "|---|---|",
        *[f"| {label} | {medians[key] * 1e6:,.0f} |" for key, label in BUDGET_ITEMS.items()],
        "",
        "| c=8 / in-process batch 8 | ratio |",
        "|---|---|",
        *[
            f"| {label} | {statistics.median(c[i][1] for c in chains):.2f} |"
            for i, (label, _) in enumerate(chains[0])
        ],
    ]
    if "model thread" in figures:
        lines += [
            "",
            "Where the default server's model thread spent a c=8 load (py-spy, idle samples included, share "
            "of wall time):",
            "",
            "| model thread | share |",
            "|---|---|",
            *[f"| {state} | {share:.2f} |" for state, share in figures["model thread"].items()],
        ]
    return [*lines, ""]


def export_resnet50(work: Path, repository: Path) -> None:
    """keras.applications ResNet50 (weights=None, 32x32x3, trained-looking statistics), through `bnserve
    export` as a user's own model (as bench/own_models.py does)."""
    import numpy as np

    from tests.helpers.applications import application_images, application_model

    application_model("resnet50").save(work / "resnet50.keras")
    np.savez(work / "resnet50.npz", x=application_images(256, seed=1))
    bnserve(
        "export",
        str(work / "resnet50.keras"),
        "--repository",
        str(repository),
        "--name",
        "resnet50",
        "--data",
        str(work / "resnet50.npz"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(CONFIGURATIONS))
    parser.add_argument(
        "--repository", type=Path, help="an existing repository holding the models (else built)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "compute-bound.md")
    args = parser.parse_args()
    models = args.models.split(",")
    started = time.perf_counter()
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        repository = args.repository or work / "repository"
        if args.repository is None:
            if "conv6" in models:
                bnserve("train", "--out", str(work / "conv6-run"), *COMPUTE_MODEL)
                bnserve(
                    "export",
                    str(work / "conv6-run"),
                    "--repository",
                    str(repository),
                    "--name",
                    "conv6",
                )
            if "resnet50" in models:
                export_resnet50(work, repository)
        for model in models:
            for title, pin, client_pin in (
                ("2 cores shared by server and load generator", None, None),
                ("server pinned to core 0, load generator on core 1", "0", "1"),
            ):
                figures = measure(
                    repository, model, pin, client_pin, args.seconds, args.rounds, work
                )
                if model == "conv6":
                    figures["model thread"] = where_the_model_thread_waits(
                        repository, pin, client_pin, 4
                    )
                sections += table(f"{model}, {title}", model, figures)
    lines = [
        "# Compute-bound serving: where the time goes, A/B",
        "",
        f"Produced by `python bench/compute_bound.py --seconds {args.seconds:g} --rounds {args.rounds}` in "
        f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} cores ({platform_line()}). conv6 is the "
        "synthetic 32x32x3 model of six conv-BN blocks (32-32-64-64-128-128); resnet50 is keras.applications' "
        "ResNet50 (weights=None, 32x32x3, 10 classes) through `bnserve export`; h2load sends 1-sample "
        "ModelInfer requests; every configuration runs once per round, between two in-process runs, and each "
        'ratio is against the mean of those two. "long-call handling off" is the batcher without its '
        "handling of calls of `--long-call-us` (1000) or more (README, Batching): no hand-over to the model "
        'thread, no early start, no regrouping. "drift monitor off" measures what the drift monitor costs '
        "a compute-bound model, whose monitor.onnx costs about a sample of the model per monitored sample. "
        "resnet50 is also served by bench/run.py's peers (KServe, MLServer: the same model.onnx on ONNX "
        "Runtime, their pools held to the server's cores) in the same rounds.",
        "",
        *sections,
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
