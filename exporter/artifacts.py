"""Writing the folded network as a SavedModel and as ONNX, and checking both hold no BN."""

from __future__ import annotations

import logging
from pathlib import Path

from absl import logging as absl_logging

import onnx
import tensorflow as tf
import tf2onnx

from bnserve.repository import INPUT_NAME, OUTPUT_NAMES, SIGNATURE
from exporter.folded import FoldedModule

BATCH_DIM = "batch"


def write_saved_model(module: FoldedModule, path: Path) -> None:
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve})


def write_onnx(module: FoldedModule, path: Path, opset: int) -> onnx.ModelProto:
    """Convert ``module.serve`` with tf2onnx; the batch dimension is named "batch"; full checker pass."""
    # tf2onnx's graph freezing logs harmless TensorFlow warnings at WARNING level on every export.
    tf2onnx.logging.set_level(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    model, _ = tf2onnx.convert.from_function(module.serve, input_signature=module.serve.input_signature, opset=opset)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([INPUT_NAME], list(OUTPUT_NAMES)):
        raise RuntimeError(f"tf2onnx produced inputs/outputs {names}, expected {[INPUT_NAME]}/{list(OUTPUT_NAMES)}")
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return model


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
        raise RuntimeError(f"batch-norm ops left in the artifacts: SavedModel {tf_bn}, ONNX {onnx_bn}")
