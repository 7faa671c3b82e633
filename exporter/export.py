"""``bnserve export``: restore, fold, write, certify, publish."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx
from onnx.reference import ReferenceEvaluator

import bnserve
from bnserve.errors import BnserveError
from bnserve.golden import GOLDEN, golden_inputs, write_golden
from bnserve.repository import (INPUT_NAME, MANIFEST, ONNX_MODEL, OUTPUT_NAMES, SAVED_MODEL, SIGNATURE,
                                BatchNormProvenance, Manifest, TensorSpec, check_new_version, discard, publish,
                                read_manifest, staging_dir, write_json)
from exporter.artifacts import assert_no_batch_norm, write_onnx, write_onnx_metadata, write_saved_model
from exporter.options import check_export_options
from exporter.folded import FoldedModule, fold_network
from bnserve.parity import REFERENCE_EVALUATOR_SAMPLES, certificate, format_table, measure, parity_inputs
from trainer.checkpoint import restore_trained_model
from trainer.rundir import check_has_checkpoint
from trainer.data import Dataset, load_dataset, split
from trainer.model import NetworkParameters, make_predict

class ParityError(BnserveError):
    """An artifact disagrees with the reference beyond the tolerance: nothing is published."""


@dataclass(frozen=True)
class ExportRequest:
    run_dir: Path
    repository: Path
    name: str
    version: int | None = None
    opset: int = 17
    tolerance: float = 1e-4
    statistics: str = "ema"
    """"ema": the shadow averages; "precise": the mean of batch moments over one pass of the training data."""


@contextmanager
def progress(step: str, log: Callable[[str], None]):
    started = time.perf_counter()
    log(f"{step} ...")
    yield
    log(f"{step}: done in {time.perf_counter() - started:.1f} s")


def precise_statistics(model, train: Dataset, batch_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Population statistics re-estimated with frozen weights ("precise BN").

    One pass over the training data in batches of ``batch_size`` in training mode; per BN layer,
    mean = sum_b n_b m_b / N and variance = sum_b n_b v_b / N, with m_b, v_b batch b's moments.
    """
    forward = make_predict(model, use_batch_statistics=True)
    sums: dict[str, list] = {}
    for start in range(0, len(train), batch_size):
        images = train.images[start:start + batch_size]
        forward(images)
        for name, (mean, variance) in model.batch_moments().items():
            total = sums.setdefault(name, [0.0, 0.0])
            total[0] += len(images) * mean.astype(np.float64)
            total[1] += len(images) * variance.astype(np.float64)
    return {name: (total_mean / len(train), total_variance / len(train))
            for name, (total_mean, total_variance) in sums.items()}


def heldout_accuracy(model, heldout: Dataset) -> float:
    logits = model(heldout.images, training=False).numpy()
    return float(np.mean(np.argmax(logits, 1) == heldout.labels))


def artifact_runners(version_dir: Path) -> dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """Each artifact as written to disk, loaded by its own consumer."""
    signature = tf.saved_model.load(str(version_dir / SAVED_MODEL)).signatures[SIGNATURE]
    session = onnxruntime.InferenceSession(str(version_dir / ONNX_MODEL), providers=["CPUExecutionProvider"])
    evaluator = ReferenceEvaluator(onnx.load(str(version_dir / ONNX_MODEL)))

    def saved_model(images):
        return {k: v.numpy() for k, v in signature(**{INPUT_NAME: tf.constant(images)}).items()}

    def onnx_runtime(images):
        return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})))

    def onnx_reference(images):
        return dict(zip(OUTPUT_NAMES, evaluator.run(list(OUTPUT_NAMES), {INPUT_NAME: images})))

    return {"saved_model": saved_model, "onnxruntime": onnx_runtime, "onnx_reference": onnx_reference}


def build_manifest(request: ExportRequest, network: NetworkParameters, record: dict, checkpoint: str,
                   accuracies: dict, parity: dict, golden: dict, input_range: tuple[float, float]) -> Manifest:
    config, dataset = record["model"], record["dataset"]
    height, width, channels = config["input_shape"]
    classes = config["num_classes"]
    return Manifest(
        inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, height, width, channels)),),
        outputs=tuple(TensorSpec(name, "FP32", (-1, classes)) for name in OUTPUT_NAMES),
        class_labels=tuple(dataset["class_names"]),
        input_values=f"raw values as stored in the data set {dataset['name']!r}; normalisation is in the graph",
        input_range=input_range,
        batch_normalization=BatchNormProvenance(
            statistics=request.statistics, decay=config["decay"], warmup=config["warmup"],
            ema_updates=network.ema_updates, epsilon=config["epsilon"], layers=len(network.blocks),
            folded=tuple(f"{block.conv}+{block.bn}" for block in network.blocks),
            input_standardization="multiply-add (x * 1/std + -mean/std)"),
        heldout_accuracy=accuracies,
        parity=parity,
        golden=golden,
        source={"run_dir": str(request.run_dir.resolve()), "checkpoint": Path(checkpoint).name,
                "dataset_sha256": dataset["sha256"]},
        onnx_opset=request.opset,
        versions={"bnserve": bnserve.__version__, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
                  "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def export(request: ExportRequest, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> tuple[int, Path, Manifest]:
    """Fold, write, certify and publish one version; returns (version, directory, manifest)."""
    # Everything the user can get wrong is checked before the slow work and before any write.
    check_export_options(request.opset, request.statistics, request.tolerance)
    check_new_version(request.repository, request.name, request.version)
    check_has_checkpoint(request.run_dir)
    with progress("restoring the checkpoint", log):
        model, record, checkpoint = restore_trained_model(request.run_dir)
        config = record["config"]
        train, heldout = split(load_dataset(config["data"]), config["seed"], config["heldout_fraction"])
    accuracies = {"ema": heldout_accuracy(model, heldout)}
    network = model.parameters()
    statistics = network.shadow_statistics()
    if request.statistics == "precise":
        with progress("re-estimating precise BN statistics", log):
            statistics = precise_statistics(model, train, config["batch_size"])
            model.set_statistics(statistics)
            accuracies["precise"] = heldout_accuracy(model, heldout)
    built = staging_dir(request.repository)
    try:
        module = FoldedModule(fold_network(network, statistics))
        with progress("writing the SavedModel", log):
            write_saved_model(module, built / SAVED_MODEL)
        with progress(f"converting to ONNX (opset {request.opset})", log):
            write_onnx(module, built / ONNX_MODEL, request.opset)
        assert_no_batch_norm(built / SAVED_MODEL, built / ONNX_MODEL)
        with progress("checking parity", log):
            inputs = parity_inputs(heldout.images, float(train.images.min()), float(train.images.max()))
            expected = {key: model(images, training=False).numpy() for key, images in inputs.items()}
            results = [measure(name, run, inputs, expected,
                               REFERENCE_EVALUATOR_SAMPLES if name == "onnx_reference" else None)
                       for name, run in artifact_runners(built).items()]
        log(format_table(results, request.tolerance))
        parity = certificate(results, request.tolerance)
        if not parity["passed"]:
            raise ParityError(f"parity above tolerance {request.tolerance:g}: nothing published")
        golden_sets = golden_inputs(inputs)
        write_golden(built / GOLDEN, golden_sets, {key: expected[key][:len(images)] for key, images in golden_sets.items()},
                     request.tolerance)
        manifest = build_manifest(
            request, network, record, checkpoint, accuracies, parity,
            golden={"file": GOLDEN, "tolerance": request.tolerance,
                    "sets": {key: len(images) for key, images in golden_sets.items()}},
            input_range=(float(train.images.min()), float(train.images.max())))
        write_onnx_metadata(built / ONNX_MODEL, manifest)
        write_json(built / MANIFEST, manifest.to_json())
        version, path = publish(built, request.repository, request.name, request.version)
    except BaseException:
        discard(built)
        raise
    return version, path, read_manifest(path)
