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
    MonitorSpec,
    calibrate_thresholds,
)
from bnserve.core.errors import BnserveError, UserError
from bnserve.core.golden import GOLDEN, golden_inputs, write_golden
from bnserve.core.images import ImageMapping
from bnserve.core.parity import (
    REFERENCE_EVALUATOR_SAMPLES,
    allowed_error,
    certificate,
    format_table,
    measure,
    parity_inputs,
)
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
from bnserve.exporter.folded import (
    FoldedModule,
    FoldPlan,
    MonitorModule,
    ReferenceModule,
    batch_norm_layers,
    check_layers,
    monitored_layers,
    never_updated,
    plan_folding,
    precise_statistics,
    set_statistics,
    stored_statistics,
)
from bnserve.exporter.graph import LayerGraph, layer_graph
from bnserve.exporter.options import (
    MIN_ADAPT_SAMPLES,
    AdaptData,
    check_export_options,
    load_adapt_data,
    statistics_kind,
)
from bnserve.exporter.source import (
    ModelSource,
    is_keras_file,
    keras_source,
    parse_input_range,
    run_source,
)
from bnserve.trainer.rundir import check_has_checkpoint


class ParityError(BnserveError):
    """An artifact disagrees with the reference beyond the tolerance: nothing is published."""


@dataclass(frozen=True)
class ExportRequest:
    source: Path
    """A run directory written by ``bnserve train``, or a Keras 3 model file (.keras, .h5)."""
    repository: Path
    name: str
    version: int | None = None
    opset: int = 17
    tolerance: float = 1e-4
    statistics: str = "ema"
    """"ema": the stored statistics (EMA shadows, or Keras's moving mean and variance); "precise": the
    mean of batch moments over one pass of the training data (a run's, or --data); "adapt:PATH": the
    same over unlabeled target inputs (bnserve.exporter.options.load_adapt_data)."""
    data: Path | None = None
    """A Keras file's --data D.npz (x, optional y and labels); a run has its own data."""
    input_range: str | None = None
    """A Keras file's --input-range LO,HI, required without --data."""
    batch_size: int = 64
    """Batch size of a Keras file's --stats precise|adapt pass (a run uses its training batch size)."""


@contextmanager
def progress(step: str, log: Callable[[str], None]):
    started = time.perf_counter()
    log(f"{step} ...")
    yield
    log(f"{step}: done in {time.perf_counter() - started:.1f} s")


def screen_adapt_data(statistics_flag: str, adapt: AdaptData, train_range) -> Screened:
    """The adapt inputs without the samples that are not finite or lie far outside the training range
    (bnserve.exporter.adapt.screen_samples); refused when fewer than MIN_ADAPT_SAMPLES are left."""
    screened = screen_samples(adapt.images, adapt.labels, train_range)
    if len(screened.images) < MIN_ADAPT_SAMPLES:
        raise UserError(
            f"--stats {statistics_flag!r}: {len(screened.images)} of {len(adapt.images)} samples are "
            f"usable ({screened.non_finite} hold NaN or infinite values, {screened.out_of_range} lie "
            f"beyond {RANGE_FACTOR:g} x the training range {train_range[0]:g}..{train_range[1]:g} "
            f"past either end); expected at least {MIN_ADAPT_SAMPLES}"
        )
    return screened


TRAINING_DISTRIBUTION_DROP = 0.05
"""A held-out accuracy this much below the frozen statistics' is worth a warning, never a refusal."""


class Predictor:
    """The unfolded model in inference mode (bnserve.exporter.folded.ReferenceModule): its logits, classes
    and accuracy, in batches of 512, with whatever statistics its BN layers hold at the call."""

    def __init__(self, plan_or_graph):
        self.module = ReferenceModule(plan_or_graph)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self.module.logits(images[i : i + 512]).numpy() for i in range(0, len(images), 512)]
        )

    def classes(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(images), axis=1)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.classes(images) == labels))


def adapted_statistics(
    request: ExportRequest,
    graph: LayerGraph,
    predictor: Predictor,
    source: ModelSource,
    adapt: AdaptData,
    screened: Screened,
    frozen: dict[str, tuple[np.ndarray, np.ndarray]],
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
    frozen_predictions = predictor.classes(images)
    before = predictor.accuracy(images, labels) if labels is not None else None
    with progress(f"re-estimating BN statistics on {len(images)} target inputs", log):
        statistics = precise_statistics(graph, images, source.batch_size)
        set_statistics(graph, statistics)
    after = predictor.accuracy(images, labels) if labels is not None else None
    reason = adapted_refusal(
        frozen, statistics, frozen_predictions, predictor.classes(images), before, after
    )
    if reason is not None:
        raise refuse(request.statistics, reason)
    if source.heldout_labels is not None:
        accuracies["adapt"] = predictor.accuracy(source.heldout, source.heldout_labels)
        log(
            f"held-out accuracy on the training distribution: {accuracies['ema']:.4f} with the frozen "
            f"statistics, {accuracies['adapt']:.4f} adapted"
        )
        if accuracies["adapt"] < accuracies["ema"] - TRAINING_DISTRIBUTION_DROP:
            log(
                "warning: the adapted statistics lose accuracy on the training distribution, as "
                "expected when the target data really shifted; serve this version only for the "
                "shifted traffic"
            )
    provenance = dict(adapt.source) | {
        "dropped_non_finite": screened.non_finite,
        "dropped_out_of_range": screened.out_of_range,
        "skipped_shards": list(adapt.skipped),
    }
    if before is not None:
        provenance |= {"accuracy_before": before, "accuracy_after": after}
        log(
            f"accuracy on the target data's labels: {before:.4f} with the frozen statistics, "
            f"{after:.4f} adapted"
        )
    return statistics, provenance


def write_monitor(
    plan: FoldPlan, built: Path, opset: int, clean: np.ndarray, tolerance: float
) -> MonitorSpec:
    """monitor.onnx, checked against its TensorFlow function on ``clean`` (held-out) inputs, and the per-layer
    alarm thresholds calibrated on clean windows of those inputs (bnserve.core.drift.calibrate_thresholds).
    Layer 0's frozen moments are ``clean``'s per-channel mean and variance."""
    module = MonitorModule(plan)
    write_monitor_onnx(module, built / MONITOR_MODEL, opset)
    session = onnxruntime.InferenceSession(
        str(built / MONITOR_MODEL), providers=["CPUExecutionProvider"]
    )
    moments = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: clean}))
    )
    reference = {
        name: value.numpy() for name, value in module.moments(tf.constant(clean[:256])).items()
    }
    for name, expected in reference.items():
        scale = max(1.0, float(np.max(np.abs(expected))))
        error = float(np.max(np.abs(moments[name][: len(expected)] - expected)))
        if error > tolerance * scale:
            raise ParityError(
                f"monitor.onnx output {name!r} differs by {error:.3g} from its TensorFlow function "
                f"(tolerance {tolerance:g} x {scale:.3g}): nothing published"
            )
    axes = tuple(range(clean.ndim - 1))
    input_mean = clean.mean(axis=axes, dtype=np.float64)
    input_variance = clean.var(axis=axes, dtype=np.float64)
    layers, _ = calibrate_thresholds(moments, monitored_layers(plan, input_mean, input_variance))
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


def reference_agreement(
    plan: FoldPlan, source: ModelSource, reference: np.ndarray, images: np.ndarray, tolerance
) -> float:
    """The certificate's reference (logits from the graph walk) against the original model's own output
    in inference mode: equal logits, or, when the model ends in a softmax, equal probabilities. Guards the
    reference itself: a walk that ran a layer differently from Keras fails here, before any artifact.
    The allowance is the certificate's, sized by the logits' magnitude for both (softmax halves an error,
    bnserve.core.parity)."""
    original = np.asarray(source.inference(images))
    mine = reference if plan.logits_from == "model output" else tf.nn.softmax(reference).numpy()
    error = float(np.max(np.abs(mine - original)))
    scale = float(np.max(np.abs(reference)))
    if error > allowed_error(tolerance, scale):
        raise ParityError(
            f"the certificate's reference differs by {error:.3g} from the Keras model's own output in "
            f"inference mode (allowed {allowed_error(tolerance, scale):.3g}: tolerance {tolerance:g} x "
            f"max(1, logit scale {scale:.3g})): nothing published"
        )
    return error


def build_manifest(
    request: ExportRequest,
    source: ModelSource,
    plan: FoldPlan,
    accuracies: dict,
    parity: dict,
    golden: dict,
    monitor: MonitorSpec | None,
    statistics_source: dict | None,
    monitor_absent: str | None,
) -> Manifest:
    height, width, channels = plan.graph.input_shape[1:]
    classes = len(source.class_labels)
    epsilons = sorted({call.epsilon for call in plan.calls})
    extra = {"logits": plan.logits_from}
    if (
        len(epsilons) > 1
    ):  # one epsilon per BN call is in the monitor's layers; here the distinct ones
        extra["epsilons"] = epsilons
    if monitor_absent:
        extra["monitor_absent"] = monitor_absent
    return Manifest(
        inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, height, width, channels)),),
        outputs=tuple(TensorSpec(name, "FP32", (-1, classes)) for name in OUTPUT_NAMES),
        class_labels=source.class_labels,
        input_values=source.input_values,
        input_range=source.input_range,
        image_bytes=ImageMapping.from_range(source.input_range) if source.input_range else None,
        batch_normalization=BatchNormProvenance(
            statistics=statistics_kind(request.statistics),
            decay=source.decay,
            warmup=source.warmup,
            ema_updates=source.ema_updates,
            epsilon=epsilons[0] if len(epsilons) == 1 else None,
            layers=len(plan.calls),
            folded=plan.folded,
            input_standardization="multiply-add (x * s + t per channel)"
            if plan.preprocessing
            else "none",
            source=statistics_source,
            multiply_add=plan.multiply_adds,
        ),
        heldout_accuracy=accuracies,
        parity=parity,
        golden=golden,
        source=source.manifest_source | extra,
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


def check_request(request: ExportRequest) -> None:
    """Everything the user can get wrong that is cheap to check, before TensorFlow restores anything."""
    check_export_options(request.opset, request.statistics, request.tolerance)
    check_new_version(request.repository, request.name, request.version)
    if is_keras_file(request.source):
        if not request.source.is_file():
            raise UserError(f"MODEL {str(request.source)!r}: no such file")
        parse_input_range(request.input_range)
        if request.data is not None and not request.data.is_file():
            raise UserError(f"--data {str(request.data)!r}: no such file")
        if request.data is None and statistics_kind(request.statistics) == "precise":
            raise UserError(
                "--stats precise re-estimates the statistics from data: give --data D.npz"
            )
        return
    if request.data is not None or request.input_range is not None:
        raise UserError(
            "--data and --input-range are for a Keras model file; a run directory has its own data"
        )
    if not request.source.is_dir():
        raise UserError(
            f"RUN_DIR {str(request.source)!r}: no such directory (and not a Keras model file: "
            "MODEL names end in .keras, .h5 or .hdf5)"
        )
    check_has_checkpoint(request.source)


def load_source(request: ExportRequest) -> ModelSource:
    if is_keras_file(request.source):
        return keras_source(
            request.source, request.data, parse_input_range(request.input_range), request.batch_size
        )
    return run_source(request.source)


def export(
    request: ExportRequest, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
) -> tuple[int, Path, Manifest]:
    """Fold, write, certify and publish one version; returns (version, directory, manifest)."""
    check_request(request)
    kind = statistics_kind(request.statistics)
    adapt = screened = None
    if kind == "adapt" and not is_keras_file(request.source):
        # A run's target data is checked (and screened) before TensorFlow restores anything.
        adapt, screened = _run_adapt_data(request)
    # Read without a progress line: a refusal here is the export's one line of output.
    source = load_source(request)
    where = f"MODEL {str(request.source)!r}" if is_keras_file(request.source) else "the run's model"
    graph = layer_graph(source.model, where)
    check_layers(graph, where)
    if not batch_norm_layers(graph):
        log(f"warning: {where} has no BatchNormalization layer: nothing to fold")
    stale = never_updated(graph)
    if stale and kind == "ema":
        raise UserError(
            f"{where}: BN layer {stale[0]!r}"
            + (f" (and {len(stale) - 1} more)" if len(stale) > 1 else "")
            + " still holds its initial statistics (moving mean all 0, variance all 1): the model was "
            "never run with training=True while it learned, so inference mode would normalise with "
            "nothing learned; re-estimate them from data with --stats precise"
            + (" --data D.npz" if is_keras_file(request.source) else "")
        )
    if kind == "adapt" and adapt is None:
        adapt = load_adapt_data(
            request.statistics, tuple(graph.input_shape[1:]), len(source.class_labels)
        )
        screened = screen_adapt_data(request.statistics, adapt, source.input_range)
    predictor = Predictor(plan_folding(graph, _stored(graph)))
    accuracies: dict[str, float] = {}
    if source.heldout_labels is not None:
        accuracies["ema"] = predictor.accuracy(source.heldout, source.heldout_labels)
    statistics = _stored(graph)
    statistics_source = None
    if kind == "precise":
        if source.precise_images is None:
            raise UserError(
                "--stats precise re-estimates the statistics from data: give --data D.npz"
            )
        with progress(f"re-estimating BN statistics on {len(source.precise_images)} inputs", log):
            statistics = precise_statistics(graph, source.precise_images, source.batch_size)
            set_statistics(graph, statistics)
        if source.heldout_labels is not None:
            accuracies[kind] = predictor.accuracy(source.heldout, source.heldout_labels)
    if kind == "adapt":
        statistics, statistics_source = adapted_statistics(
            request, graph, predictor, source, adapt, screened, statistics, accuracies, log
        )
    built = staging_dir(request.repository)
    try:
        plan = plan_folding(graph, statistics)
        log(
            f"folding: {len(plan.calls)} BN calls, {len(plan.folded)} folded into a layer, "
            f"{len(plan.multiply_adds)} kept as a per-channel multiply-add; logits: {plan.logits_from}"
        )
        module = FoldedModule(plan)
        with progress("writing the SavedModel", log):
            write_saved_model(module, built / SAVED_MODEL)
        with progress(f"converting to ONNX (opset {request.opset})", log):
            write_onnx(module, built / ONNX_MODEL, request.opset)
        assert_no_batch_norm(built / SAVED_MODEL, built / ONNX_MODEL)
        low, high = source.input_range
        with progress("checking parity", log):
            rng = np.random.default_rng(0)
            heldout = (
                source.heldout
                if source.heldout is not None
                else rng.uniform(low, high, (256, *graph.input_shape[1:])).astype(np.float32)
            )
            inputs = parity_inputs(heldout, low, high)
            # The reference walks the unfolded layers, so the predictor built before folding is it.
            expected = {key: predictor.logits(images) for key, images in inputs.items()}
            agreement = reference_agreement(
                plan,
                source,
                expected["random_batch_64"],
                inputs["random_batch_64"],
                request.tolerance,
            )
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
        parity = certificate(results, request.tolerance) | {"reference_vs_keras_max_abs": agreement}
        if not parity["passed"]:
            raise ParityError(f"parity above tolerance {request.tolerance:g}: nothing published")
        monitor = None
        monitor_absent = None
        if source.heldout is not None:
            with progress("writing and calibrating the drift monitor", log):
                monitor = write_monitor(plan, built, request.opset, heldout, request.tolerance)
        else:
            monitor_absent = (
                "no --data: the drift monitor's thresholds need clean inputs to calibrate on"
            )
            log(f"published without a drift monitor: {monitor_absent}")
        golden_sets = golden_inputs(inputs)
        write_golden(
            built / GOLDEN,
            golden_sets,
            {key: expected[key][: len(images)] for key, images in golden_sets.items()},
            request.tolerance,
        )
        manifest = build_manifest(
            request,
            source,
            plan,
            accuracies,
            parity,
            golden={
                "file": GOLDEN,
                "tolerance": request.tolerance,
                "sets": {key: len(images) for key, images in golden_sets.items()},
            },
            monitor=monitor,
            statistics_source=statistics_source,
            monitor_absent=monitor_absent,
        )
        write_onnx_metadata(built / ONNX_MODEL, manifest)
        write_json(built / MANIFEST, manifest.to_json())
        version, path = publish(built, request.repository, request.name, request.version)
    except BaseException:
        discard(built)
        raise
    return version, path, read_manifest(path)


def _run_adapt_data(request: ExportRequest) -> tuple[AdaptData, Screened]:
    from bnserve.trainer.data import load_dataset, split
    from bnserve.trainer.rundir import read_run_record

    record = read_run_record(request.source)
    adapt = load_adapt_data(
        request.statistics, tuple(record.model["input_shape"]), record.model["num_classes"]
    )
    config = record.config
    train, _ = split(load_dataset(config["data"]), config["seed"], config["heldout_fraction"])
    train_range = (float(train.images.min()), float(train.images.max()))
    return adapt, screen_adapt_data(request.statistics, adapt, train_range)


def _stored(graph: LayerGraph) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: stored_statistics(layer) for name, layer in batch_norm_layers(graph).items()}
