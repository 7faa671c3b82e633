"""One general folder over a Keras layer graph: every BN leaves the graph, folded or as one multiply-add.

``plan_folding`` reads a LayerGraph (bnserve.exporter.graph) and decides, for every call of a BN layer
(keras ``BatchNormalization``, ``synchronized=True`` too, or bnserve's ``ShadowBatchNormalization``) with
inference form y = s * z + t (bnserve.exporter.fold.bn_scale_shift):

- **into its producer** (bnserve.exporter.fold.fold_into_producer) when z is the output of a Conv1D/2D/3D
  (grouped too), DepthwiseConv1D/2D, SeparableConv1D/2D (into the pointwise kernel), Conv1D/2D/3DTranspose
  or Dense layer that is called once, whose activation is linear, and whose output nothing else reads;
- **forward into the next Dense** (bnserve.exporter.fold.fold_into_next_dense) when its output is read by
  one Dense layer only, called once (a BN after pooling or Flatten);
- otherwise **one per-channel multiply-add** x * s + t: after Add, Concatenate, an activation or pooling, on
  a conv output read elsewhere too, and before a convolution (zero padding makes a forward fold inexact).

Per-channel affine preprocessing (``Rescaling``, ``Normalization``, the trainer's ``InputStandardization``)
becomes one multiply-add as well, and a chain of them becomes one.

``FoldedModule`` runs the folded graph; ``MonitorModule`` gives, for every BN call, the per-sample,
per-channel moments of the tensor that is s * z + t (or z itself for a forward fold), from which
bnserve.core.drift recovers the BN input's moments exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from bnserve.core.drift import MonitoredLayer, output_names
from bnserve.core.errors import UserError
from bnserve.core.repository import INPUT_NAME
from bnserve.exporter.fold import (
    OUTPUT_AXIS_DEPTHWISE,
    OUTPUT_AXIS_LAST,
    OUTPUT_AXIS_TRANSPOSED,
    bn_scale_shift,
    fold_into_next_dense,
    fold_into_producer,
)
from bnserve.exporter.graph import GraphNode, LayerGraph
from bnserve.trainer.bn import ShadowBatchNormalization
from bnserve.trainer.model import InputStandardization

KERNEL_LAYOUTS: dict[type, tuple[str, str]] = {
    keras.layers.Conv1D: ("kernel", OUTPUT_AXIS_LAST),
    keras.layers.Conv2D: ("kernel", OUTPUT_AXIS_LAST),
    keras.layers.Conv3D: ("kernel", OUTPUT_AXIS_LAST),
    keras.layers.Dense: ("kernel", OUTPUT_AXIS_LAST),
    keras.layers.SeparableConv1D: ("pointwise_kernel", OUTPUT_AXIS_LAST),
    keras.layers.SeparableConv2D: ("pointwise_kernel", OUTPUT_AXIS_LAST),
    keras.layers.Conv1DTranspose: ("kernel", OUTPUT_AXIS_TRANSPOSED),
    keras.layers.Conv2DTranspose: ("kernel", OUTPUT_AXIS_TRANSPOSED),
    keras.layers.Conv3DTranspose: ("kernel", OUTPUT_AXIS_TRANSPOSED),
    keras.layers.DepthwiseConv1D: ("kernel", OUTPUT_AXIS_DEPTHWISE),
    keras.layers.DepthwiseConv2D: ("kernel", OUTPUT_AXIS_DEPTHWISE),
}
"""Layers a BN folds into: the weight that holds the output channels, and where they are in it."""

BN_LAYERS = (keras.layers.BatchNormalization, ShadowBatchNormalization)
AFFINE_PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization, InputStandardization)
REFUSED_LAYERS = {
    "Lambda": "its Python function cannot be read, so nothing about it can be certified",
    "TFSMLayer": "it wraps a SavedModel whose graph bnserve cannot fold",
}
BNSERVE_LAYERS = (ShadowBatchNormalization, InputStandardization)


@dataclass(frozen=True)
class BatchNormCall:
    """One call of a BN layer and what the folder did with it."""

    node: int
    layer: str
    how: str
    """"into" (folded into ``target``), "forward" (folded into the Dense ``target`` after it) or
    "multiply-add"."""
    target: str | None
    scale: np.ndarray
    shift: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float
    monitored: int
    """The tensor the drift monitor reads: s * z + t ("into", "multiply-add") or z ("forward")."""

    @property
    def label(self) -> str:
        if self.how == "into":
            return f"{self.target}+{self.layer}"
        if self.how == "forward":
            return f"{self.layer}>{self.target}"
        return self.layer


@dataclass
class FoldPlan:
    graph: LayerGraph
    calls: list[BatchNormCall]
    replacements: dict[int, object] = field(default_factory=dict)
    """node index -> the layer that runs in its place (a clone with folded weights)."""
    affine: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """node index -> (s, t): the node computes x * s + t."""
    identity: set[int] = field(default_factory=set)
    """Nodes whose output is their input: a BN folded forward, or preprocessing merged into the next."""
    logits: int = 0
    """The tensor served as ``logits``."""
    logits_from: str = "model output"
    """"model output", or which softmax's input the logits are."""

    @property
    def folded(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.calls if c.how != "multiply-add")

    @property
    def preprocessing(self) -> tuple[str, ...]:
        """The per-channel affine preprocessing layers left as a multiply-add."""
        return tuple(
            self.graph.nodes[i].name
            for i in self.affine
            if self.graph.nodes[i].index not in self.bn_nodes
        )

    @property
    def bn_nodes(self) -> set[int]:
        return {c.node for c in self.calls}

    @property
    def multiply_adds(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.calls if c.how == "multiply-add")


def is_batch_norm(operation) -> bool:
    return isinstance(operation, BN_LAYERS)


def stored_statistics(layer) -> tuple[np.ndarray, np.ndarray]:
    """The statistics a BN layer normalises with in inference mode: Keras's moving mean and variance, or
    the EMA shadows of a ShadowBatchNormalization."""
    if isinstance(layer, ShadowBatchNormalization):
        return layer.shadow_mean.numpy(), layer.shadow_variance.numpy()
    return np.asarray(layer.moving_mean.numpy()), np.asarray(layer.moving_variance.numpy())


def set_statistics(graph: LayerGraph, statistics: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Point every BN layer at ``statistics`` ({layer name: (mean, variance)}) in memory, so that the
    unfolded model in inference mode (the certificate's reference) uses them too; no file is touched."""
    for layer in batch_norm_layers(graph).values():
        mean, variance = statistics[layer.name]
        if isinstance(layer, ShadowBatchNormalization):
            layer.shadow_mean.assign(np.asarray(mean, np.float32))
            layer.shadow_variance.assign(np.asarray(variance, np.float32))
        else:
            layer.moving_mean.assign(np.asarray(mean, np.float32))
            layer.moving_variance.assign(np.asarray(variance, np.float32))


def batch_norm_layers(graph: LayerGraph) -> dict[str, object]:
    layers = {}
    for node in graph.nodes:
        if is_batch_norm(node.operation):
            layers.setdefault(node.operation.name, node.operation)
    return layers


def _weight(layer, name):
    value = getattr(layer, name, None)
    return None if value is None else np.asarray(value.numpy())


def _bn_affine(layer, mean, variance) -> tuple[np.ndarray, np.ndarray]:
    return bn_scale_shift(
        mean, variance, float(layer.epsilon), _weight(layer, "gamma"), _weight(layer, "beta")
    )


def check_layers(graph: LayerGraph, where: str) -> None:
    """Every op is one the folder knows: built-in Keras layers and ops, and bnserve's own layers."""
    for node in graph.nodes:
        operation = node.operation
        kind = type(operation).__name__
        if kind in REFUSED_LAYERS:
            raise UserError(
                f"{where}: layer {node.name!r} is a {kind}: {REFUSED_LAYERS[kind]}; replace it with "
                "built-in Keras layers"
            )
        module = type(operation).__module__
        if not (module.startswith("keras.") or isinstance(operation, BNSERVE_LAYERS)):
            raise UserError(
                f"{where}: layer {node.name!r} is a custom layer ({module}.{kind}) that bnserve does "
                "not know how to fold or certify; express it with built-in Keras layers"
            )
        if is_batch_norm(operation):
            _check_batch_norm(node, where)


def _check_batch_norm(node: GraphNode, where: str) -> None:
    layer = node.operation
    rank = len(node.input_shapes[0])
    axis = getattr(layer, "axis", -1)
    axis = axis if isinstance(axis, int) else (axis[0] if len(axis) == 1 else None)
    if axis is None or axis % rank != rank - 1:
        raise UserError(
            f"{where}: BN layer {layer.name!r} normalises axis {getattr(layer, 'axis', None)} of a "
            f"rank-{rank} tensor; bnserve folds channels-last BN only (axis -1)"
        )
    if getattr(layer, "renorm", False):
        raise UserError(
            f"{where}: BN layer {layer.name!r} uses batch renormalization (renorm=True), which bnserve "
            "does not fold"
        )


def _preprocessing_affine(layer, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with layer(x) = x * s + t per channel, or None when the layer is not per-channel affine.

    Rescaling: s = scale, t = offset.  Normalization: s = 1 / max(sqrt(var), eps_keras), t = -mean * s
    (inverted: s = max(sqrt(var), eps_keras), t = mean).  InputStandardization: s = 1/std, t = -mean/std.
    """
    if isinstance(layer, keras.layers.Rescaling):
        scale = np.asarray(layer.scale, np.float64)
        offset = np.asarray(layer.offset, np.float64)
    elif isinstance(layer, keras.layers.Normalization):
        mean = np.asarray(
            layer.mean.numpy() if hasattr(layer.mean, "numpy") else layer.mean, np.float64
        )
        variance = np.asarray(
            layer.variance.numpy() if hasattr(layer.variance, "numpy") else layer.variance,
            np.float64,
        )
        std = np.maximum(np.sqrt(variance), keras.backend.epsilon())
        scale, offset = (std, mean) if layer.invert else (1.0 / std, -mean / std)
    else:
        std = np.asarray(layer.std.numpy(), np.float64)
        scale, offset = 1.0 / std, -np.asarray(layer.mean.numpy(), np.float64) / std
    vectors = []
    for value in (scale, offset):
        if value.size == 1:
            vectors.append(np.full(channels, float(value.reshape(-1)[0])))
        elif value.shape[-1] == channels and value.size == channels:
            vectors.append(value.reshape(channels))
        else:
            return None
    return vectors[0], vectors[1]


def plan_folding(
    graph: LayerGraph, statistics: dict[str, tuple[np.ndarray, np.ndarray]]
) -> FoldPlan:
    """Decide every BN call's fold (module docstring) with ``statistics`` ({BN layer: (mean, variance)})."""
    plan = FoldPlan(graph, [])
    weights: dict[int, dict[str, np.ndarray]] = {}

    def current(node: GraphNode) -> dict[str, np.ndarray]:
        layer = node.operation
        if node.index not in weights:
            kernel_name, _ = KERNEL_LAYOUTS[type(layer)]
            weights[node.index] = {
                name: _weight(layer, name)
                for name in ("depthwise_kernel", kernel_name, "bias")
                if _weight(layer, name) is not None
            }
        return weights[node.index]

    def single_call(node: GraphNode) -> bool:
        return len(graph.calls_of(node.operation)) == 1

    folded_into: set[int] = set()
    for node in graph.nodes:
        layer = node.operation
        if isinstance(layer, AFFINE_PREPROCESSING):
            affine = _preprocessing_affine(layer, node.input_shapes[0][-1])
            if affine is None:
                continue
            producer = graph.producer(node.inputs[0])
            if (
                producer is not None
                and producer.index in plan.affine
                and isinstance(producer.operation, AFFINE_PREPROCESSING)
                and len(graph.consumers(producer.outputs[0])) == 1
            ):
                # s2 * (s1 x + t1) + t2 = (s2 s1) x + (s2 t1 + t2): one multiply-add for the chain.
                first_scale, first_shift = plan.affine.pop(producer.index)
                plan.identity.add(producer.index)
                affine = (affine[0] * first_scale, affine[0] * first_shift + affine[1])
            plan.affine[node.index] = affine
            continue
        if not is_batch_norm(layer):
            continue
        mean, variance = (np.asarray(v, np.float64) for v in statistics[layer.name])
        scale, shift = _bn_affine(layer, mean, variance)
        epsilon = float(layer.epsilon)
        z, y = node.inputs[0], node.outputs[0]
        producer = graph.producer(z)
        readers = graph.consumers(y)
        if (
            producer is not None
            and type(producer.operation) in KERNEL_LAYOUTS
            and single_call(producer)
            and producer.index not in folded_into
            and len(graph.consumers(z)) == 1
            and not graph.is_output(z)
            and producer.operation.get_config().get("activation") in (None, "linear")
            and producer.index not in plan.identity
        ):
            kernel_name, layout = KERNEL_LAYOUTS[type(producer.operation)]
            held = current(producer)
            held[kernel_name], held["bias"] = fold_into_producer(
                held[kernel_name], held.get("bias"), scale, shift, layout
            )
            folded_into.add(producer.index)
            plan.identity.add(node.index)
            plan.calls.append(
                BatchNormCall(
                    node.index,
                    layer.name,
                    "into",
                    producer.name,
                    scale,
                    shift,
                    mean,
                    variance,
                    epsilon,
                    z,
                )
            )
        elif (
            len(readers) == 1
            and type(readers[0].operation) is keras.layers.Dense
            and single_call(readers[0])
            and not graph.is_output(y)
            and len(node.output_shapes[0]) == 2
        ):
            dense = readers[0]
            held = current(dense)
            held["kernel"], held["bias"] = fold_into_next_dense(
                held["kernel"], held.get("bias"), scale, shift
            )
            plan.identity.add(node.index)
            plan.calls.append(
                BatchNormCall(
                    node.index,
                    layer.name,
                    "forward",
                    dense.name,
                    np.ones_like(scale),
                    np.zeros_like(shift),
                    mean,
                    variance,
                    epsilon,
                    z,
                )
            )
        else:
            plan.affine[node.index] = (scale, shift)
            plan.calls.append(
                BatchNormCall(
                    node.index,
                    layer.name,
                    "multiply-add",
                    None,
                    scale,
                    shift,
                    mean,
                    variance,
                    epsilon,
                    y,
                )
            )
    _choose_logits(plan)
    softmax_dense = (
        graph.producer(plan.logits).index if plan.logits_from.startswith("the Dense") else None
    )
    for index in sorted({*weights, *([softmax_dense] if softmax_dense is not None else [])}):
        plan.replacements[index] = _clone_with(
            graph.nodes[index], weights.get(index), linear=index == softmax_dense
        )
    return plan


def _choose_logits(plan: FoldPlan) -> None:
    """The served logits: a final softmax's input, else the model's output (the manifest says which)."""
    graph = plan.graph
    last = graph.producer(graph.output_id)
    plan.logits = graph.resolve(graph.output_id)
    if last is None:
        return
    layer = last.operation
    activation = layer.get_config().get("activation") if hasattr(layer, "get_config") else None
    if isinstance(layer, keras.layers.Dense) and activation == "softmax":
        plan.logits_from = f"the Dense layer {layer.name!r} without its softmax activation"
    elif isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and activation == "softmax"
    ):
        if getattr(layer, "axis", -1) not in (-1, len(last.input_shapes[0]) - 1):
            return
        plan.logits = graph.resolve(last.inputs[0])
        plan.logits_from = f"the input of the softmax layer {layer.name!r}"


def _clone_with(node: GraphNode, held: dict[str, np.ndarray] | None, linear: bool):
    """A fresh layer of ``node``'s class and config (with a bias; linear when it yields the logits),
    built for the node's input shape and given ``held`` weights (the original's when None)."""
    layer = node.operation
    config = layer.get_config() | {"name": f"{layer.name}_folded"}
    if held is not None:
        config["use_bias"] = True
    if linear:
        config["activation"] = "linear"
    clone = type(layer).from_config(config)
    clone.build(node.input_shapes[0])
    held = held or {
        name: _weight(layer, name)
        for name in ("depthwise_kernel", "pointwise_kernel", "kernel", "bias")
        if _weight(layer, name) is not None
    }
    for name, value in held.items():
        getattr(clone, name).assign(np.asarray(value, np.float32))
    return clone


def _call(node: GraphNode, operation, args, kwargs):
    if getattr(operation, "_call_has_training_arg", False):
        kwargs = {**kwargs, "training": False}
    return operation(*args, **kwargs)


def _multiply_add(x, scale: np.ndarray, shift: np.ndarray, name: str):
    return tf.add(
        tf.multiply(x, tf.constant(scale, tf.float32), name=f"{name}_scale"),
        tf.constant(shift, tf.float32),
        name=f"{name}_shift",
    )


def run_folded(plan: FoldPlan, images, targets: list[int]) -> dict:
    """The folded graph on ``images``: {tensor id: value} for ``targets`` (ids resolved)."""

    def call(node: GraphNode, args, kwargs):
        if node.index in plan.identity:
            return args[0]
        if node.index in plan.affine:
            scale, shift = plan.affine[node.index]
            kind = "bn" if is_batch_norm(node.operation) else "preprocessing"
            return _multiply_add(args[0], scale, shift, f"bnserve_{kind}_{node.index}")
        return _call(node, plan.replacements.get(node.index, node.operation), args, kwargs)

    return plan.graph.run(images, call, targets)


class ReferenceModule(tf.Module):
    """``logits(images)``: the certificate's reference, the unfolded model in inference mode (every layer
    as Keras runs it, BN included) up to the logits; a final softmax Dense runs with its own weights and a
    linear activation."""

    def __init__(self, plan: FoldPlan):
        super().__init__(name="bnserve_reference")
        self._plan = plan
        self._logits_node = plan.graph.producer(plan.logits)
        self._linear = (
            _clone_with(self._logits_node, None, linear=True)
            if plan.logits_from.startswith("the Dense")
            else None
        )
        shape = plan.graph.input_shape[1:]
        self.logits = tf.function(
            self._logits,
            input_signature=[tf.TensorSpec([None, *shape], tf.float32)],
            autograph=False,
        )

    def _logits(self, images):
        def call(node: GraphNode, args, kwargs):
            linear = self._linear is not None and node is self._logits_node
            return _call(node, self._linear if linear else node.operation, args, kwargs)

        return self._plan.graph.run(images, call, [self._plan.logits])[self._plan.logits]


class FoldedModule(tf.Module):
    """The exported graph. ``serve(images)`` returns {"logits": [N,K], "probabilities": softmax(logits)}."""

    def __init__(self, plan: FoldPlan):
        super().__init__(name="bnserve_folded")
        self._plan = plan
        # Tracked so that tf.saved_model.save finds every variable the graph reads.
        # (only the layers that run: a folded BN or conv left in would ship its unfolded weights too).
        self.layers = [
            node.operation
            for node in plan.graph.nodes
            if node.index not in plan.identity
            and node.index not in plan.affine
            and node.index not in plan.replacements
        ]
        self.replacements = list(plan.replacements.values())
        shape = plan.graph.input_shape[1:]
        self.serve = tf.function(
            self._forward,
            input_signature=[tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)],
            autograph=False,
        )

    def _forward(self, images):
        logits = run_folded(self._plan, images, [self._plan.logits])[self._plan.logits]
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}


def monitored_layers(
    plan: FoldPlan, input_mean: np.ndarray, input_variance: np.ndarray
) -> list[MonitoredLayer]:
    """Layer 0: the raw input (s = 1, t = 0, frozen M, V the data's per-channel mean and variance, with the
    first BN's epsilon so that a constant input channel stays finite); then every BN call in graph order
    (s, t of its inference form, or 1, 0 when it was folded forward and its input z is read directly;
    frozen M, V the folded statistics), as bnserve.core.drift defines them."""
    channels = len(input_mean)
    epsilon = plan.calls[0].epsilon if plan.calls else 1e-3
    layers = [
        MonitoredLayer(
            "input",
            (1.0,) * channels,
            (0.0,) * channels,
            tuple(float(v) for v in input_mean),
            tuple(float(v) for v in input_variance),
            epsilon,
        )
    ]
    for call in plan.calls:
        layers.append(
            MonitoredLayer(
                call.label,
                tuple(float(v) for v in call.scale),
                tuple(float(v) for v in call.shift),
                tuple(float(v) for v in call.mean),
                tuple(float(v) for v in call.variance),
                call.epsilon,
            )
        )
    return layers


def _channel_moments(value):
    axes = list(range(1, len(value.shape) - 1))
    if not axes:
        return value, tf.square(value)
    return tf.reduce_mean(value, axis=axes), tf.reduce_mean(tf.square(value), axis=axes)


class MonitorModule(tf.Module):
    """The drift monitor's graph (monitor.onnx): ``moments(images)`` returns, for layer 0 (the raw input)
    and each BN call l (monitored_layers), the per-sample, per-channel mean over every axis but the batch
    and channel axes of the monitored tensor y and the mean of y^2, named bnserve.core.drift.output_names(l),
    each [N, C]."""

    def __init__(self, plan: FoldPlan):
        super().__init__(name="bnserve_monitor")
        self.folded = FoldedModule(plan)
        self._plan = plan
        shape = plan.graph.input_shape[1:]
        self.moments = tf.function(
            self._moments,
            input_signature=[tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)],
            autograph=False,
        )

    def _moments(self, images):
        plan = self._plan
        targets = [plan.graph.resolve(call.monitored) for call in plan.calls]
        values = run_folded(plan, images, targets) if targets else {}
        outputs = {}
        for index, value in enumerate([images, *(values[t] for t in targets)]):
            mean_name, square_name = output_names(index)
            outputs[mean_name], outputs[square_name] = _channel_moments(value)
        return outputs


class BatchStatisticsModule(tf.Module):
    """``moments(images)``: the model with every BN in training form (normalised with the batch's own
    per-channel mean m and biased variance v of its input, as Keras and ShadowBatchNormalization compute
    them with training=True; every other layer in inference mode) returning each BN layer's (m, v).
    Nothing is assigned: the model's statistics stay as they are."""

    def __init__(self, graph: LayerGraph):
        super().__init__(name="bnserve_batch_statistics")
        self._graph = graph
        shape = graph.input_shape[1:]
        self.moments = tf.function(
            self._moments,
            input_signature=[tf.TensorSpec([None, *shape], tf.float32)],
            autograph=False,
        )

    def _moments(self, images):
        recorded: dict[str, list] = {}

        def call(node: GraphNode, args, kwargs):
            layer = node.operation
            if not is_batch_norm(layer):
                return _call(node, layer, args, kwargs)
            x = args[0]
            mean, variance = tf.nn.moments(x, axes=list(range(len(x.shape) - 1)))
            recorded.setdefault(layer.name, []).append((mean, variance))
            gamma, beta = getattr(layer, "gamma", None), getattr(layer, "beta", None)
            return tf.nn.batch_normalization(
                x,
                mean,
                variance,
                None if beta is None else tf.convert_to_tensor(beta),
                None if gamma is None else tf.convert_to_tensor(gamma),
                layer.epsilon,
            )

        self._graph.run(images, call, [])
        # A BN layer called at several places contributes the mean of its calls' moments.
        return {
            name: (
                tf.add_n([m for m, _ in calls]) / len(calls),
                tf.add_n([v for _, v in calls]) / len(calls),
            )
            for name, calls in recorded.items()
        }


def precise_statistics(
    graph: LayerGraph, images_all: np.ndarray, batch_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Population statistics re-estimated with frozen weights ("precise BN"; on target data, AdaBN).

    One pass over ``images_all`` in batches of ``batch_size`` with every BN in training form
    (BatchStatisticsModule); per BN layer, mean = sum_b n_b m_b / N and variance = sum_b n_b v_b / N,
    accumulated in float64, with m_b, v_b batch b's moments of that layer's input.

    m_b and v_b themselves are float32, as the model computes: for ``--stats adapt`` every sample was first
    screened into the training range's band (exporter.adapt.screen_samples), so with finite weights no
    square can overflow, and moments that still come out non-finite refuse the version
    (exporter.adapt.adapted_refusal) rather than being published.
    """
    module = BatchStatisticsModule(graph)
    sums: dict[str, list] = {}
    samples = len(images_all)
    for start in range(0, samples, batch_size):
        images = images_all[start : start + batch_size]
        for name, (mean, variance) in module.moments(tf.constant(images)).items():
            total = sums.setdefault(name, [0.0, 0.0])
            total[0] += len(images) * mean.numpy().astype(np.float64)
            total[1] += len(images) * variance.numpy().astype(np.float64)
    return {name: (m / samples, v / samples) for name, (m, v) in sums.items()}


def never_updated(graph: LayerGraph) -> list[str]:
    """BN layers whose statistics are still their initial values (mean all 0, variance all 1): the model
    was never run with training=True while it learned, so inference normalises with nothing learned."""
    stale = []
    for name, layer in batch_norm_layers(graph).items():
        mean, variance = stored_statistics(layer)
        if np.all(mean == 0.0) and np.all(variance == 1.0):
            stale.append(name)
    return stale
