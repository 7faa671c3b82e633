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
from bnserve.core.drift import (
    CLEAN_WINDOWS,
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    DEFAULT_WINDOW,
    MONITOR_MODEL,
    MonitoredLayer,
    MonitorSpec,
    calibrate_thresholds,
)
from bnserve.core.errors import BnserveError, UserError
from bnserve.core.golden import GOLDEN, golden_inputs, write_golden
from bnserve.core.parity import (
    REFERENCE_EVALUATOR_SAMPLES,
    certificate,
    format_table,
    measure,
    parity_inputs,
)
from bnserve.core.records import RunRecord
from bnserve.core.repository import (
    INPUT_NAME,
    MANIFEST,
    ONNX_MODEL,
    OUTPUT_NAMES,
    SAVED_MODEL,
    SIGNATURE,
    BatchNormProvenance,
    Manifest,
    TensorSpec,
    check_new_version,
    discard,
    publish,
    read_manifest,
    staging_dir,
    write_json,
)
from bnserve.exporter.adapt import (
    RANGE_FACTOR,
    Screened,
    adapted_refusal,
    refuse,
    screen_samples,
)
from bnserve.exporter.artifacts import (
    assert_no_batch_norm,
    write_monitor_onnx,
    write_onnx,
    write_onnx_metadata,
    write_saved_model,
)
from bnserve.exporter.fold import bn_scale_shift
from bnserve.exporter.folded import FoldedModule, MonitorModule, fold_network
from bnserve.exporter.options import (
    MIN_ADAPT_SAMPLES,
    AdaptData,
    check_export_options,
    load_adapt_data,
    statistics_kind,
)
from bnserve.trainer.checkpoint import restore_trained_model
from bnserve.trainer.data import Dataset, load_dataset, split
from bnserve.trainer.model import NetworkParameters, make_predict
from bnserve.trainer.rundir import check_has_checkpoint, read_run_record


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
    """"ema": the shadow averages; "precise": the mean of batch moments over one pass of the training data;
    "adapt:PATH": the same over unlabeled target inputs (bnserve.exporter.options.load_adapt_data)."""


@contextmanager
def progress(step: str, log: Callable[[str], None]):
    started = time.perf_counter()
    log(f"{step} ...")
    yield
    log(f"{step}: done in {time.perf_counter() - started:.1f} s")


def precise_statistics(
    model, images_all: np.ndarray, batch_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Population statistics re-estimated with frozen weights ("precise BN"; on target data, AdaBN).

    One pass over ``images_all`` in batches of ``batch_size`` in training mode; per BN layer,
    mean = sum_b n_b m_b / N and variance = sum_b n_b v_b / N, with m_b, v_b batch b's moments.
    """
    forward = make_predict(model, use_batch_statistics=True)
    sums: dict[str, list] = {}
    samples = len(images_all)
    for start in range(0, samples, batch_size):
        images = images_all[start : start + batch_size]
        forward(images)
        for name, (mean, variance) in model.batch_moments().items():
            total = sums.setdefault(name, [0.0, 0.0])
            total[0] += len(images) * mean.astype(np.float64)
            total[1] += len(images) * variance.astype(np.float64)
    return {
        name: (total_mean / samples, total_variance / samples)
        for name, (total_mean, total_variance) in sums.items()
    }


def screen_adapt_data(statistics_flag: str, adapt: AdaptData, config: dict) -> Screened:
    """The adapt inputs without the samples that are not finite or lie far outside the training range
    (bnserve.exporter.adapt.screen_samples); refused when fewer than MIN_ADAPT_SAMPLES are left."""
    train, _ = split(load_dataset(config["data"]), config["seed"], config["heldout_fraction"])
    train_range = (float(train.images.min()), float(train.images.max()))
    screened = screen_samples(adapt.images, adapt.labels, train_range)
    if len(screened.images) < MIN_ADAPT_SAMPLES:
        raise UserError(
            f"--stats {statistics_flag!r}: {len(screened.images)} of {len(adapt.images)} samples are "
            f"usable ({screened.non_finite} hold NaN or infinite values, {screened.out_of_range} lie "
            f"beyond {RANGE_FACTOR:g} x the training range {train_range[0]:g}..{train_range[1]:g} "
            f"past either end); expected at least {MIN_ADAPT_SAMPLES}"
        )
    return screened


def adapted_statistics(
    request: ExportRequest,
    model,
    adapt: AdaptData,
    screened: Screened,
    frozen: dict[str, tuple[np.ndarray, np.ndarray]],
    heldout: Dataset,
    batch_size: int,
    accuracies: dict[str, float],
    log: Callable[[str], None],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """``--stats adapt:PATH``: re-estimate the statistics on the screened target inputs, and refuse them
    when a guard says so (bnserve.exporter.adapt); returns them and their manifest provenance."""
    for skipped in adapt.skipped:
        log(f"warning: --stats {request.statistics!r}: skipped the shard {skipped}")
    dropped = screened.non_finite + screened.out_of_range
    if dropped:
        log(
            f"adapt inputs: dropped {dropped} of {len(adapt.images)} samples ({screened.non_finite} not "
            f"finite, {screened.out_of_range} beyond {RANGE_FACTOR:g} x the training range past either "
            "end)"
        )
    images, labels = screened.images, screened.labels
    frozen_predictions = predicted_classes(model, images)
    before = labelled_accuracy(model, images, labels) if labels is not None else None
    with progress(f"re-estimating BN statistics on {len(images)} target inputs", log):
        statistics = precise_statistics(model, images, batch_size)
        model.set_statistics(statistics)
    after = labelled_accuracy(model, images, labels) if labels is not None else None
    reason = adapted_refusal(
        frozen, statistics, frozen_predictions, predicted_classes(model, images), before, after
    )
    if reason is not None:
        raise refuse(request.statistics, reason)
    accuracies["adapt"] = heldout_accuracy(model, heldout)
    log(
        f"held-out accuracy on the training distribution: {accuracies['ema']:.4f} with the frozen "
        f"statistics, {accuracies['adapt']:.4f} adapted"
    )
    if accuracies["adapt"] < accuracies["ema"] - TRAINING_DISTRIBUTION_DROP:
        log(
            "warning: the adapted statistics lose accuracy on the training distribution, as expected "
            "when the target data really shifted; serve this version only for the shifted traffic"
        )
    source = dict(adapt.source) | {
        "dropped_non_finite": screened.non_finite,
        "dropped_out_of_range": screened.out_of_range,
        "skipped_shards": list(adapt.skipped),
    }
    if before is not None:
        source |= {"accuracy_before": before, "accuracy_after": after}
        log(
            f"accuracy on the target data's labels: {before:.4f} with the frozen statistics, "
            f"{after:.4f} adapted"
        )
    return statistics, source


TRAINING_DISTRIBUTION_DROP = 0.05
"""A held-out accuracy this much below the frozen statistics' is worth a warning, never a refusal."""


def predicted_classes(model, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            np.argmax(model(images[i : i + 512], training=False).numpy(), axis=1)
            for i in range(0, len(images), 512)
        ]
    )


def heldout_accuracy(model, heldout: Dataset) -> float:
    return labelled_accuracy(model, heldout.images, heldout.labels)


def labelled_accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    logits = np.concatenate(
        [model(images[i : i + 512], training=False).numpy() for i in range(0, len(images), 512)]
    )
    return float(np.mean(np.argmax(logits, 1) == labels))


def monitored_layers(network: NetworkParameters, statistics: dict) -> list[MonitoredLayer]:
    """Layer 0 (the input standardisation: s = 1/std, t = -mean/std, frozen M = mean, V = std^2, with the first
    BN's epsilon so that a constant input channel stays finite) and each folded block (s, t of its BN, frozen M, V
    the folded statistics), as bnserve.core.drift defines them."""
    mean, std = (
        np.asarray(network.input_mean, np.float64),
        np.asarray(network.input_std, np.float64),
    )
    first_epsilon = network.blocks[0].epsilon if network.blocks else 1e-3
    layers = [
        MonitoredLayer(
            "input", tuple(1 / std), tuple(-mean / std), tuple(mean), tuple(std**2), first_epsilon
        )
    ]
    for block in network.blocks:
        bn_mean, bn_variance = statistics[block.bn]
        scale, shift = bn_scale_shift(bn_mean, bn_variance, block.epsilon, block.gamma, block.beta)
        layers.append(
            MonitoredLayer(
                f"{block.conv}+{block.bn}",
                tuple(scale),
                tuple(shift),
                tuple(np.asarray(bn_mean, np.float64)),
                tuple(np.asarray(bn_variance, np.float64)),
                block.epsilon,
            )
        )
    return layers


def write_monitor(
    folded,
    network: NetworkParameters,
    statistics: dict,
    built: Path,
    opset: int,
    clean: np.ndarray,
    tolerance: float,
) -> MonitorSpec:
    """monitor.onnx, checked against its TensorFlow function on ``clean`` (held-out) inputs, and the per-layer
    alarm thresholds calibrated on clean windows of those inputs (bnserve.core.drift.calibrate_thresholds)."""
    module = MonitorModule(folded)
    write_monitor_onnx(module, built / MONITOR_MODEL, opset)
    session = onnxruntime.InferenceSession(
        str(built / MONITOR_MODEL), providers=["CPUExecutionProvider"]
    )
    moments = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: clean}))
    )
    reference = {name: value.numpy() for name, value in module.moments(tf.constant(clean)).items()}
    for name, expected in reference.items():
        scale = max(1.0, float(np.max(np.abs(expected))))
        error = float(np.max(np.abs(moments[name] - expected)))
        if error > tolerance * scale:
            raise ParityError(
                f"monitor.onnx output {name!r} differs by {error:.3g} from its TensorFlow function "
                f"(tolerance {tolerance:g} x {scale:.3g}): nothing published"
            )
    layers, _ = calibrate_thresholds(moments, monitored_layers(network, statistics))
    return MonitorSpec(
        MONITOR_MODEL,
        DEFAULT_WINDOW,
        DEFAULT_MARGIN,
        DEFAULT_QUANTILE,
        CLEAN_WINDOWS,
        len(clean),
        tuple(layers),
    )


def artifact_runners(version_dir: Path) -> dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """Each artifact as written to disk, loaded by its own consumer."""
    signature = tf.saved_model.load(str(version_dir / SAVED_MODEL)).signatures[SIGNATURE]
    session = onnxruntime.InferenceSession(
        str(version_dir / ONNX_MODEL), providers=["CPUExecutionProvider"]
    )
    evaluator = ReferenceEvaluator(onnx.load(str(version_dir / ONNX_MODEL)))

    def saved_model(images):
        return {k: v.numpy() for k, v in signature(**{INPUT_NAME: tf.constant(images)}).items()}

    def onnx_runtime(images):
        return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})))

    def onnx_reference(images):
        return dict(zip(OUTPUT_NAMES, evaluator.run(list(OUTPUT_NAMES), {INPUT_NAME: images})))

    return {
        "saved_model": saved_model,
        "onnxruntime": onnx_runtime,
        "onnx_reference": onnx_reference,
    }


def build_manifest(
    request: ExportRequest,
    network: NetworkParameters,
    record: RunRecord,
    checkpoint: str,
    accuracies: dict,
    parity: dict,
    golden: dict,
    input_range: tuple[float, float],
    monitor: MonitorSpec,
    statistics_source: dict | None,
) -> Manifest:
    config, dataset = record.model, record.dataset
    height, width, channels = config["input_shape"]
    classes = config["num_classes"]
    return Manifest(
        inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, height, width, channels)),),
        outputs=tuple(TensorSpec(name, "FP32", (-1, classes)) for name in OUTPUT_NAMES),
        class_labels=dataset.class_names,
        input_values=f"raw values as stored in the data set {dataset.name!r}; normalisation is in the graph",
        input_range=input_range,
        batch_normalization=BatchNormProvenance(
            statistics=statistics_kind(request.statistics),
            decay=config["decay"],
            warmup=config["warmup"],
            ema_updates=network.ema_updates,
            epsilon=config["epsilon"],
            layers=len(network.blocks),
            folded=tuple(f"{block.conv}+{block.bn}" for block in network.blocks),
            input_standardization="multiply-add (x * 1/std + -mean/std)",
            source=statistics_source,
        ),
        heldout_accuracy=accuracies,
        parity=parity,
        golden=golden,
        source={
            "run_dir": str(request.run_dir.resolve()),
            "checkpoint": Path(checkpoint).name,
            "dataset_sha256": dataset.sha256,
        },
        onnx_opset=request.opset,
        versions={
            "bnserve": bnserve.__version__,
            "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        monitor=monitor,
    )


def export(
    request: ExportRequest, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
) -> tuple[int, Path, Manifest]:
    """Fold, write, certify and publish one version; returns (version, directory, manifest)."""
    # Everything the user can get wrong is checked before the slow work and before any write.
    check_export_options(request.opset, request.statistics, request.tolerance)
    check_new_version(request.repository, request.name, request.version)
    check_has_checkpoint(request.run_dir)
    kind = statistics_kind(request.statistics)
    adapt = None
    screened = None
    if (
        kind == "adapt"
    ):  # the target data is checked (and screened) before TensorFlow restores anything
        record = read_run_record(request.run_dir)
        adapt = load_adapt_data(
            request.statistics, tuple(record.model["input_shape"]), record.model["num_classes"]
        )
        screened = screen_adapt_data(request.statistics, adapt, record.config)
    with progress("restoring the checkpoint", log):
        model, record, checkpoint = restore_trained_model(request.run_dir)
        config = record.config
        train, heldout = split(
            load_dataset(config["data"]), config["seed"], config["heldout_fraction"]
        )
    accuracies = {"ema": heldout_accuracy(model, heldout)}
    network = model.parameters()
    statistics = network.shadow_statistics()
    statistics_source = None
    if kind == "precise":
        with progress(f"re-estimating BN statistics on {len(train.images)} training inputs", log):
            statistics = precise_statistics(model, train.images, config["batch_size"])
            model.set_statistics(statistics)
            accuracies[kind] = heldout_accuracy(model, heldout)
    if kind == "adapt":
        statistics, statistics_source = adapted_statistics(
            request,
            model,
            adapt,
            screened,
            statistics,
            heldout,
            config["batch_size"],
            accuracies,
            log,
        )
    built = staging_dir(request.repository)
    try:
        folded = fold_network(network, statistics)
        module = FoldedModule(folded)
        with progress("writing the SavedModel", log):
            write_saved_model(module, built / SAVED_MODEL)
        with progress(f"converting to ONNX (opset {request.opset})", log):
            write_onnx(module, built / ONNX_MODEL, request.opset)
        assert_no_batch_norm(built / SAVED_MODEL, built / ONNX_MODEL)
        with progress("checking parity", log):
            inputs = parity_inputs(
                heldout.images, float(train.images.min()), float(train.images.max())
            )
            expected = {
                key: model(images, training=False).numpy() for key, images in inputs.items()
            }
            results = [
                measure(
                    name,
                    run,
                    inputs,
                    expected,
                    REFERENCE_EVALUATOR_SAMPLES if name == "onnx_reference" else None,
                )
                for name, run in artifact_runners(built).items()
            ]
        log(format_table(results, request.tolerance))
        parity = certificate(results, request.tolerance)
        if not parity["passed"]:
            raise ParityError(f"parity above tolerance {request.tolerance:g}: nothing published")
        with progress("writing and calibrating the drift monitor", log):
            monitor = write_monitor(
                folded,
                network,
                statistics,
                built,
                request.opset,
                heldout.images.astype(np.float32),
                request.tolerance,
            )
        golden_sets = golden_inputs(inputs)
        write_golden(
            built / GOLDEN,
            golden_sets,
            {key: expected[key][: len(images)] for key, images in golden_sets.items()},
            request.tolerance,
        )
        manifest = build_manifest(
            request,
            network,
            record,
            checkpoint,
            accuracies,
            parity,
            golden={
                "file": GOLDEN,
                "tolerance": request.tolerance,
                "sets": {key: len(images) for key, images in golden_sets.items()},
            },
            input_range=(float(train.images.min()), float(train.images.max())),
            monitor=monitor,
            statistics_source=statistics_source,
        )
        write_onnx_metadata(built / ONNX_MODEL, manifest)
        write_json(built / MANIFEST, manifest.to_json())
        version, path = publish(built, request.repository, request.name, request.version)
    except BaseException:
        discard(built)
        raise
    return version, path, read_manifest(path)
