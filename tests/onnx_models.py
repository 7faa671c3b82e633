"""Small hand-built ONNX models with the repository's tensor names, for the server's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(path: Path, nodes, input_shape, output_rows, initializers) -> None:
    graph = helper.make_graph(
        nodes,
        "test-model",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [output_rows, 10])
            for name in ("logits", "probabilities")
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def projection_model(path: Path, input_shape, slice_rows: bool = False) -> None:
    """images -> logits, probabilities: a [features x 10] projection of the flattened image.
    ``slice_rows``: it answers only the first row of any batch (a model that ignores the batch dimension)."""
    features = int(np.prod(input_shape[1:]))
    initializers = [
        numpy_helper.from_array(
            np.linspace(-1, 1, features * 10, dtype=np.float32).reshape(features, 10), "w"
        ),
        numpy_helper.from_array(np.array([-1, features], np.int64), "flat"),
    ]
    nodes = [helper.make_node("Reshape", ["images", "flat"], ["rows"])]
    if slice_rows:
        initializers += [
            numpy_helper.from_array(np.array([0], np.int64), name) for name in ("start", "axis")
        ]
        initializers.append(numpy_helper.from_array(np.array([1], np.int64), "end"))
        nodes.append(helper.make_node("Slice", ["rows", "start", "end", "axis"], ["kept"]))
    nodes += [
        helper.make_node("MatMul", ["kept" if slice_rows else "rows", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    save(path, nodes, input_shape, input_shape[0] if input_shape[0] > 0 else "n", initializers)


def slow_model(path: Path, layers: int = 24, width: int = 512, copies: int = 128) -> None:
    """A digits-shaped model that computes a lot: each image is copied ``copies`` times through ``layers``
    [width x width] matrix products (~2 x copies x layers x width^2 FLOPs a sample), then averaged back."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(np.array([-1, 1, 64], np.int64), "flat"),
        numpy_helper.from_array(np.array([1, copies, 1], np.int64), "tiles"),
        numpy_helper.from_array(rng.normal(0, 0.1, (64, width)).astype(np.float32), "w_in"),
        numpy_helper.from_array(rng.normal(0, 0.1, (width, 10)).astype(np.float32), "w_out"),
    ]
    nodes = [
        helper.make_node("Reshape", ["images", "flat"], ["rows"]),
        helper.make_node("Tile", ["rows", "tiles"], ["copies"]),
        helper.make_node("MatMul", ["copies", "w_in"], ["h0"]),
    ]
    for layer in range(layers):
        initializers.append(
            numpy_helper.from_array(
                (rng.normal(0, 1, (width, width)) / np.sqrt(width)).astype(np.float32), f"w{layer}"
            )
        )
        nodes.append(helper.make_node("MatMul", [f"h{layer}", f"w{layer}"], [f"h{layer + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"h{layers}"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    save(path, nodes, [-1, 8, 8, 1], "n", initializers)
