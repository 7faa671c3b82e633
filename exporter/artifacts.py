"""Writing the folded network as a SavedModel and as ONNX, and checking both hold no BN."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
import tensorflow as tf
import tf2onnx
from absl import logging as absl_logging

from bnserve.core.repository import INPUT_NAME, OUTPUT_NAMES, SIGNATURE, Manifest
from bnserve.exporter.folded import FoldedModule

BATCH_DIM = "batch"


def write_saved_model(module: FoldedModule, path: Path) -> None:
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve})


def write_onnx(module: FoldedModule, path: Path, opset: int) -> onnx.ModelProto:
    """Convert ``module.serve`` with tf2onnx; the batch dimension is named "batch"; full checker pass."""
    # tf2onnx's graph freezing logs harmless TensorFlow warnings at WARNING level on every export.
    tf2onnx.logging.set_level(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    model, _ = tf2onnx.convert.from_function(
        module.serve, input_signature=module.serve.input_signature, opset=opset
    )
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([INPUT_NAME], list(OUTPUT_NAMES)):
        raise RuntimeError(
            f"tf2onnx produced inputs/outputs {names}, expected {[INPUT_NAME]}/{list(OUTPUT_NAMES)}"
        )
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return model


def write_monitor_onnx(module, path: Path, opset: int) -> list[str]:
    """Convert ``module.moments`` (bnserve.exporter.folded.MonitorModule) with tf2onnx; returns its output names."""
    tf2onnx.logging.set_level(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    model, _ = tf2onnx.convert.from_function(
        module.moments, input_signature=module.moments.input_signature, opset=opset
    )
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return [o.name for o in model.graph.output]


def onnx_metadata(manifest: Manifest) -> dict[str, str]:
    """What an ONNX consumer who gets model.onnx alone needs, from the manifest: metadata_props entries
    (string values; JSON where structured), readable with onnxruntime's ``get_modelmeta().custom_metadata_map``."""
    spec = manifest.inputs[0]
    return {
        "bnserve.class_labels": json.dumps(list(manifest.class_labels)),
        "bnserve.input": json.dumps(
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": list(spec.shape),
                "layout": "NHWC",
                "range": list(manifest.input_range),
                "values": manifest.input_values,
            }
        ),
        "bnserve.outputs": json.dumps({o.name: list(o.shape) for o in manifest.outputs}),
        "bnserve.batch_normalization": json.dumps(manifest.batch_normalization.to_json()),
        "bnserve.heldout_accuracy": json.dumps(manifest.heldout_accuracy),
        "bnserve.logits": json.dumps(manifest.source.get("logits", "model output")),
        "bnserve.core.parity": json.dumps(
            {
                "tolerance": manifest.parity["tolerance"],
                "passed": manifest.parity["passed"],
                "max_abs": {name: r["max_abs"] for name, r in manifest.parity["artifacts"].items()},
            }
        ),
        "bnserve.version": manifest.versions["bnserve"],
    }


def onnx_doc_string(manifest: Manifest) -> str:
    spec, bn = manifest.inputs[0], manifest.batch_normalization
    low, high = manifest.input_range
    labels = list(manifest.class_labels)
    return (
        f"A batch-normalised conv net exported by bnserve {manifest.versions['bnserve']}: input {spec.name!r} "
        f"FP32 {list(spec.shape)} (NHWC) of raw values in [{low:g}, {high:g}] ({manifest.input_values}); outputs "
        f"'logits' and 'probabilities' over {len(labels)} classes {labels}. Of its {bn.layers} BN calls, "
        f"{len(bn.folded)} are folded into the layer next to them and {len(bn.multiply_add)} are one "
        f"per-channel multiply-add, with the {bn.statistics} statistics (EMA decay {bn.decay}, warm-up "
        f"{'on' if bn.warmup else 'off'}, {bn.ema_updates} updates, epsilon {'per layer' if bn.epsilon is None else bn.epsilon}), so the graph holds no "
        f"BatchNormalization op. Certified against the unfolded model in inference mode to "
        f"{manifest.parity['tolerance']:g} x max(1, max |logit|) (max abs logit error); metadata_props hold the details."
    )


def write_onnx_metadata(path: Path, manifest: Manifest) -> None:
    """Replace model.onnx's metadata_props and doc_string with the manifest's facts (numbers unchanged)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in onnx_metadata(manifest).items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = onnx_doc_string(manifest)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def saved_model_op_types(path: Path) -> set[str]:
    """Every op type in the SavedModel's graphs, function library included."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in saved.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def onnx_op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def assert_no_batch_norm(saved_model: Path, onnx_model: Path) -> None:
    """Exported artifacts hold no BN op: the statistics must be folded, not merely carried along."""
    tf_bn = sorted(op for op in saved_model_op_types(saved_model) if "BatchNorm" in op)
    onnx_bn = sorted(op for op in onnx_op_types(onnx_model) if "BatchNormalization" in op)
    if tf_bn or onnx_bn:
        raise RuntimeError(
            f"batch-norm ops left in the artifacts: SavedModel {tf_bn}, ONNX {onnx_bn}"
        )
