"""ONNX Runtime's I/O binding with preallocated outputs against ``Session.run``, in-process, interleaved: the
A/B of issue #26 ("ONNX Runtime's I/O binding with preallocated outputs"). Writes docs/io-binding.md.

Three ways to make the server's model call (server/backends/onnx.py OnnxBackend.run), same session, same input:

- ``run``: ``session.run(outputs, {"images": images})``, what the server does: ONNX Runtime allocates the outputs
  and hands them back as NumPy arrays.
- ``binding, outputs preallocated``: ``bind_cpu_input`` and ``bind_output(..., buffer_ptr=...)`` into NumPy
  arrays allocated once per batch size, then ``run_with_iobinding``. The binding is built per call, as a
  server must (the input array changes with every batch); the outputs are reused, which a server could only do
  with a pool of them, since the answers of one batch are still being encoded while the next one runs.
- ``binding, bound once``: the same with the binding built once and only the input rebound: the least
  Python a call can cost through the binding API, and not one a server can use as it stands (the next call
  overwrites the outputs the previous batch's answers still point into).
- ``binding, bound once, outputs copied``: what a server could do with one binding per model thread and batch
  size: bound once, the outputs copied out after every call.

Each figure is microseconds per call: the median over rounds of the mean over ``--seconds`` of calls; every
round runs the three ways in turn, so the machine's drift falls on all of them. The session options are the
server's for that model (one intra-op thread for a light model, the pool for a heavy one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

from bench.run import platform_line, sample  # noqa: E402

INPUT = "images"


def latest_version(repository: Path, model: str) -> Path:
    return max(
        (p for p in (repository / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )


def calls(session: onnxruntime.InferenceSession, images: np.ndarray) -> dict:
    """The three ways, each a function of no arguments making one call on ``images``."""
    outputs = [o.name for o in session.get_outputs()]
    shapes = {o.name: [len(images), *o.shape[1:]] for o in session.get_outputs()}
    preallocated = {name: np.empty(shapes[name], np.float32) for name in outputs}

    def run() -> dict:
        return dict(zip(outputs, session.run(outputs, {INPUT: images})))

    def bind(binding) -> None:
        binding.bind_cpu_input(INPUT, images)
        for name, array in preallocated.items():
            binding.bind_output(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)

    def binding_per_call() -> dict:
        binding = session.io_binding()
        bind(binding)
        session.run_with_iobinding(binding)
        return preallocated

    once = session.io_binding()
    bind(once)

    def binding_bound_once() -> dict:
        once.bind_cpu_input(INPUT, images)
        session.run_with_iobinding(once)
        return preallocated

    def binding_bound_once_copied() -> dict:
        once.bind_cpu_input(INPUT, images)
        session.run_with_iobinding(once)
        return {name: array.copy() for name, array in preallocated.items()}

    return {
        "run": run,
        "binding, outputs preallocated": binding_per_call,
        "binding, bound once": binding_bound_once,
        "binding, bound once, outputs copied": binding_bound_once_copied,
    }


def us_per_call(call, seconds: float) -> float:
    call()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        count += 1
    return (time.perf_counter() - started) / count * 1e6


def measure(version_dir: Path, batch: int, seconds: float, rounds: int) -> dict[str, float]:
    from bnserve.server.backends.onnx import OnnxBackend

    session = OnnxBackend(version_dir, "cpu").session  # the server's options for this model
    images = sample(tuple(session.get_inputs()[0].shape[1:]), batch)
    ways = calls(session, images)
    reference = ways["run"]()
    for name, call in ways.items():  # the same answers, or the comparison means nothing
        got = call()
        for output, expected in reference.items():
            np.testing.assert_allclose(got[output], expected, rtol=1e-5, atol=1e-6, err_msg=name)
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, call in ways.items():
            figures[name].append(us_per_call(call, seconds))
    return {name: statistics.median(values) for name, values in figures.items()}


CASES = [("digits", 1), ("digits", 8), ("digits", 32), ("conv6", 1), ("conv6", 8), ("resnet50", 8)]


def measured_rows(repository: Path, seconds: float, rounds: int) -> list:
    rows = []
    for model, batch in CASES:
        figures = measure(latest_version(repository, model), batch, seconds, rounds)
        rows.append((model, batch, figures))
        print(model, batch, {k: round(v, 1) for k, v in figures.items()}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repository",
        type=Path,
        help="an existing repository holding digits, conv6, resnet50 (else built)",
    )
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "io-binding.md")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        repository = args.repository
        if repository is None:
            from bench.compute_bound import export_resnet50
            from bench.run import prepare_models

            repository = prepare_models(Path(directory))
            export_resnet50(Path(directory), repository)
        rows = measured_rows(repository, args.seconds, args.rounds)
    names = list(rows[0][2])
    lines = [
        "# ONNX Runtime I/O binding with preallocated outputs, A/B",
        "",
        f"Produced by `python bench/io_binding.py --seconds {args.seconds} --rounds {args.rounds}` "
        f"in {time.perf_counter() - started:.0f} s on {platform_line()}. Microseconds per model call, in-process, "
        "the server's session options for each model; median over rounds, the ways interleaved in every round "
        "(bench/io_binding.py's docstring says what each way does).",
        "",
        "| model | batch | "
        + " | ".join(f"{n} (us)" for n in names)
        + " | "
        + " | ".join(f"{n} / run" for n in names[1:])
        + " |",
        "|---|---|" + "---|" * (2 * len(names) - 1),
    ]
    for model, batch, figures in rows:
        base = figures["run"]
        lines.append(
            f"| {model} | {batch} | "
            + " | ".join(f"{figures[n]:,.1f}" for n in names)
            + " | "
            + " | ".join(f"{figures[n] / base:.2f}" for n in names[1:])
            + " |"
        )
    usable = "binding, bound once, outputs copied"
    light = [
        (figures["run"] - figures[usable], batch)
        for model, batch, figures in rows
        if model == "digits"
    ]
    heavy = [figures[usable] / figures["run"] for model, _, figures in rows if model != "digits"]
    lines += [
        "",
        f"The way a server could use ({usable}) saves digits {', '.join(f'{us:.1f}' for us, _ in light)} us a "
        f"call at batch {', '.join(str(b) for _, b in light)}; on the compute-bound calls it reads "
        f"{min(heavy):.2f}-{max(heavy):.2f} of `run`, within the spread between rounds. A served digits request "
        "costs some hundreds of microseconds of the event loop (docs/benchmarks.md), and the binding would need "
        "one binding per model thread and batch size, rebound on every call: the server keeps `Session.run`.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
