"""`make bench`, users' own models: keras.applications through `bnserve export`, against tf2onnx's own
conversion of the same Keras model. Writes docs/own-models.md.

For each application (tests/helpers/applications.py: weights=None, 32x32x3, trained-looking statistics):
1. the wall time of `bnserve export MODEL.keras --data D.npz` (fold, SavedModel, ONNX, certificate, golden
   samples, drift monitor, publish), one run;
2. the ops left in model.onnx against tf2onnx's conversion of the Keras model in inference mode (opset 17);
3. in-process ONNX Runtime samples/s of both files at batch 1 and 32, with graph optimisations on
   (ORT_ENABLE_ALL) and off (ORT_DISABLE_ALL), the four variants interleaved, median of --repeats;
4. for ResNet50: served (gRPC, h2load, c=8, one image a request) against in-process ONNX Runtime at batch 8 on
   the folded file, interleaved, median of --repeats.

    python bench/own_models.py [--models resnet50,mobilenetv2] [--repeats 3] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import collections
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from bench.loadgen import median_result, model_infer_body, run_load  # noqa: E402
from bench.run import platform_line  # noqa: E402
from tests.helpers.applications import (  # noqa: E402
    APPLICATIONS,
    INPUT_SHAPE,
    application_images,
    application_model,
)
from tests.servers import start_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17


def tf2onnx_file(model, path: Path) -> None:
    """tf2onnx's own conversion of the Keras model in inference mode, as a user without bnserve runs it."""
    import tensorflow as tf
    import tf2onnx

    tf2onnx.logging.set_level(logging.ERROR)
    signature = [tf.TensorSpec([None, *INPUT_SHAPE], tf.float32, name="images")]
    function = tf.function(lambda images: model(images, training=False), input_signature=signature)
    converted, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    onnx.save(converted, str(path))


def op_counts(path: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def session(path: Path, optimised: bool) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = (
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimised
        else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def samples_per_second(run, images: np.ndarray, seconds: float) -> float:
    run(images)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(images)
        count += len(images)
    return count / (time.perf_counter() - start)


def runtime_table(folded: Path, unfolded: Path, repeats: int, seconds: float) -> list[dict]:
    """samples/s of every (file, optimisation, batch) variant, interleaved within each repeat."""
    variants = [
        (name, path, optimised, batch)
        for batch in (1, 32)
        for optimised in (True, False)
        for name, path in (("bnserve (folded)", folded), ("tf2onnx", unfolded))
    ]
    sessions = {(path, optimised): session(path, optimised) for _, path, optimised, _ in variants}
    images = {batch: application_images(batch, seed=batch) for batch in (1, 32)}
    measured = collections.defaultdict(list)
    for _ in range(repeats):
        for name, path, optimised, batch in variants:
            runner = sessions[(path, optimised)]
            output = runner.get_outputs()[0].name
            measured[(name, optimised, batch)].append(
                samples_per_second(
                    lambda x, r=runner, o=output: r.run([o], {"images": x}),
                    images[batch],
                    seconds,
                )
            )
    return [
        {
            "file": name,
            "optimised": optimised,
            "batch": batch,
            "samples_per_s": float(np.median(values)),
        }
        for (name, optimised, batch), values in measured.items()
    ]


def served_against_in_process(repository: Path, name: str, repeats: int, seconds: float) -> dict:
    folded = repository / name / "1" / "model.onnx"
    in_process = session(folded, True)
    batch8 = application_images(8, seed=8)
    body = model_infer_body(name, application_images(1, seed=1))
    server = start_server(repository, timeout=300)
    served, local = [], []
    try:
        for _ in range(repeats):
            served.append(run_load(server.port, body, 8, seconds * 2, server.process.pid))
            local.append(
                samples_per_second(
                    lambda x: in_process.run(["logits"], {"images": x}), batch8, seconds
                )
            )
    finally:
        server.stop()
    result = median_result(served)
    return {
        "served_req_s": result.throughput,
        "served_p50_ms": result.p50_ms,
        "in_process_samples_s": float(np.median(local)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(APPLICATIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "own-models.md")
    arguments = parser.parse_args()
    names = arguments.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        repository = work / "repository"
        for name in names:
            model = application_model(name)
            model.save(work / f"{name}.keras")
            np.savez(work / f"{name}.npz", x=application_images(256, seed=1))
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable, "-m", "bnserve.cli", "export", str(work / f"{name}.keras"),
                    "--repository", str(repository), "--name", name,
                    "--data", str(work / f"{name}.npz"),
                ],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            export_s = time.perf_counter() - start
            unfolded = work / f"{name}.tf2onnx.onnx"
            start = time.perf_counter()
            tf2onnx_file(model, unfolded)
            tf2onnx_s = time.perf_counter() - start
            folded = repository / name / "1" / "model.onnx"
            # tf2onnx's file may not run as is: for EfficientNetB0 it leaves the Normalization layer's
            # mean and variance as graph inputs (tf2onnx 1.17, Keras 3). That is reported, not hidden.
            extra = sorted({i.name for i in onnx.load(str(unfolded)).graph.input} - {"images"})
            runtime = (
                extra
                if extra
                else runtime_table(folded, unfolded, arguments.repeats, arguments.seconds)
            )
            rows.append(
                {
                    "name": name,
                    "batch_norms": sum(
                        type(layer).__name__ == "BatchNormalization" for layer in model.layers
                    ),
                    "export_s": export_s,
                    "tf2onnx_s": tf2onnx_s,
                    "ops": (op_counts(folded), op_counts(unfolded)),
                    "runtime": runtime,
                }
            )
            print(f"{name}: export {export_s:.1f} s", file=sys.stderr)
        # Written before the served part as well, so a failure there keeps the tables above.
        arguments.out.write_text(report(rows, None, arguments))
        served = (
            served_against_in_process(repository, "resnet50", arguments.repeats, arguments.seconds)
            if "resnet50" in names
            else None
        )
    arguments.out.write_text(report(rows, served, arguments))
    print(f"wrote {arguments.out}", file=sys.stderr)


def report(rows: list[dict], served: dict | None, arguments) -> str:
    lines = [
        "# Users' own models: keras.applications through `bnserve export`",
        "",
        f"Written by `python bench/own_models.py` (part of `make bench`), {time.strftime('%Y-%m-%d')}, "
        f"{platform_line()}, {len(__import__('os').sched_getaffinity(0))} cores. Each model: "
        "`keras.applications` with `weights=None`, input 32x32x3, 10 classes, BN statistics measured on "
        "its own inputs and perturbed (tests/helpers/applications.py). ONNX Runtime figures are "
        f"medians of {arguments.repeats} interleaved repeats of {arguments.seconds:g} s each.",
        "",
        "## Export and the ops left",
        "",
        "`bnserve export` is the whole path (fold, SavedModel, ONNX, certificate with the pure-Python ONNX "
        "reference evaluator on 193 samples, golden samples, drift monitor calibration, publish); tf2onnx is "
        "its conversion alone, of the unfolded Keras model. Mul+Add counts every Mul and Add node: the "
        "residual Adds of ResNet, MobileNet and EfficientNet and EfficientNet's squeeze-excite Muls are in "
        "both files; the difference is BNs left as a multiply-add.",
        "",
        "| model | BN layers | bnserve export (s) | tf2onnx alone (s) | BN ops left: bnserve / tf2onnx "
        "| Mul+Add: bnserve / tf2onnx | nodes: bnserve / tf2onnx |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mine, theirs = row["ops"]
        lines.append(
            f"| {row['name']} | {row['batch_norms']} | {row['export_s']:.1f} | {row['tf2onnx_s']:.1f} "
            f"| {mine['BatchNormalization']} / {theirs['BatchNormalization']} "
            f"| {mine['Mul'] + mine['Add']} / {theirs['Mul'] + theirs['Add']} "
            f"| {sum(mine.values())} / {sum(theirs.values())} |"
        )
    lines += [
        "",
        "## In-process ONNX Runtime, samples/s",
        "",
        "ONNX Runtime fuses Conv + BN and Conv + Mul/Add itself when optimisations are on, so the folded "
        "file's lead there shows what remains after ORT's own fusions; with them off it shows what any other "
        "consumer of the file gets.",
        "",
        "| model | batch | optimisations | bnserve (folded) | tf2onnx | folded / tf2onnx |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["runtime"] and isinstance(row["runtime"][0], str):
            lines.append(
                f"| {row['name']} | - | - | - | not runnable | tf2onnx's file requires the extra graph "
                f"inputs {', '.join(row['runtime'])} |"
            )
            continue
        table = {
            (r["file"], r["optimised"], r["batch"]): r["samples_per_s"] for r in row["runtime"]
        }
        for batch in (1, 32):
            for optimised in (True, False):
                mine = table[("bnserve (folded)", optimised, batch)]
                theirs = table[("tf2onnx", optimised, batch)]
                lines.append(
                    f"| {row['name']} | {batch} | {'on' if optimised else 'off'} | {mine:,.0f} "
                    f"| {theirs:,.0f} | {mine / theirs:.2f}x |"
                )
    if served:
        lines += [
            "",
            "## ResNet50 served against in-process",
            "",
            "gRPC ModelInfer, one image a request, h2load c=8 (the server batches them), against ONNX Runtime "
            "in this process at batch 8 on the same file, interleaved.",
            "",
            "| served req/s | served p50 (ms) | in-process samples/s | served / in-process |",
            "|---|---|---|---|",
            f"| {served['served_req_s']:,.0f} | {served['served_p50_ms']:.2f} "
            f"| {served['in_process_samples_s']:,.0f} "
            f"| {served['served_req_s'] / served['in_process_samples_s']:.2f} |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
