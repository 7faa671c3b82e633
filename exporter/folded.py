"""The folded network: plain convs with bias, no BN op, no training branch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bnserve.core.repository import INPUT_NAME
from bnserve.exporter.fold import fold_conv_bn
from bnserve.trainer.model import NetworkParameters


@dataclass(frozen=True)
class FoldedConv:
    kernel: np.ndarray
    """HWIO float32, BN folded in."""
    bias: np.ndarray
    stride: int
    source: str
    """Which conv and BN layer this conv came from, e.g. "conv0+bn0"."""


@dataclass(frozen=True)
class FoldedNetwork:
    """images -> images * input_scale + input_shift -> [relu(conv + bias)] x L -> mean over H, W -> dense."""

    input_shape: tuple[int, int, int]
    input_scale: np.ndarray
    input_shift: np.ndarray
    convs: tuple[FoldedConv, ...]
    dense_kernel: np.ndarray
    dense_bias: np.ndarray


def fold_network(
    network: NetworkParameters, statistics: dict[str, tuple[np.ndarray, np.ndarray]]
) -> FoldedNetwork:
    """Fold ``statistics`` ({BN layer name: (mean, variance)}) and each block's BN parameters into its conv.

    The input standardisation (x - m) / s becomes the multiply-add x * (1/s) + (-m/s).
    """
    mean = np.asarray(network.input_mean, np.float64)
    std = np.asarray(network.input_std, np.float64)
    convs = []
    for block in network.blocks:
        bn_mean, bn_variance = statistics[block.bn]
        kernel, bias = fold_conv_bn(
            block.kernel, block.bias, bn_mean, bn_variance, block.epsilon, block.gamma, block.beta
        )
        convs.append(FoldedConv(kernel, bias, block.stride, f"{block.conv}+{block.bn}"))
    return FoldedNetwork(
        input_shape=tuple(network.input_shape),
        input_scale=(1.0 / std).astype(np.float32),
        input_shift=(-mean / std).astype(np.float32),
        convs=tuple(convs),
        dense_kernel=network.dense_kernel.astype(np.float32),
        dense_bias=network.dense_bias.astype(np.float32),
    )


class FoldedModule(tf.Module):
    """The exported graph. ``serve(images)`` returns {"logits": [N,K], "probabilities": softmax(logits)}."""

    def __init__(self, network: FoldedNetwork):
        super().__init__(name="bnserve_folded")
        self.input_scale = tf.Variable(network.input_scale, trainable=False, name="input_scale")
        self.input_shift = tf.Variable(network.input_shift, trainable=False, name="input_shift")
        self.kernels = [
            tf.Variable(c.kernel, trainable=False, name=f"kernel{i}")
            for i, c in enumerate(network.convs)
        ]
        self.biases = [
            tf.Variable(c.bias, trainable=False, name=f"bias{i}")
            for i, c in enumerate(network.convs)
        ]
        self.strides = [c.stride for c in network.convs]
        self.dense_kernel = tf.Variable(network.dense_kernel, trainable=False, name="dense_kernel")
        self.dense_bias = tf.Variable(network.dense_bias, trainable=False, name="dense_bias")
        self.serve = tf.function(
            self._forward,
            input_signature=[
                tf.TensorSpec([None, *network.input_shape], tf.float32, name=INPUT_NAME)
            ],
        )

    def _forward(self, images):
        hidden = images * self.input_scale + self.input_shift
        for kernel, bias, stride in zip(self.kernels, self.biases, self.strides):
            hidden = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(hidden, kernel, stride, "SAME"), bias))
        logits = tf.matmul(tf.reduce_mean(hidden, axis=[1, 2]), self.dense_kernel) + self.dense_bias
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}


class MonitorModule(tf.Module):
    """The drift monitor's graph (monitor.onnx): ``moments(images)`` returns, for the input standardisation
    (layer 0) and each folded conv before its ReLU (layers 1..L), the per-sample, per-channel mean over H x W of
    that layer's output y and the mean of y^2, named as bnserve.core.drift.output_names(layer), each [N, C]."""

    def __init__(self, network: FoldedNetwork):
        super().__init__(name="bnserve_monitor")
        self.folded = FoldedModule(network)
        self.moments = tf.function(
            self._moments,
            input_signature=[
                tf.TensorSpec([None, *network.input_shape], tf.float32, name=INPUT_NAME)
            ],
        )

    def _moments(self, images):
        from bnserve.core.drift import output_names

        folded = self.folded
        outputs = {}
        hidden = images * folded.input_scale + folded.input_shift
        layers = [hidden]
        for kernel, bias, stride in zip(folded.kernels, folded.biases, folded.strides):
            hidden = tf.nn.bias_add(tf.nn.conv2d(hidden, kernel, stride, "SAME"), bias)
            layers.append(hidden)
            hidden = tf.nn.relu(hidden)
        for index, y in enumerate(layers):
            mean_name, square_name = output_names(index)
            outputs[mean_name] = tf.reduce_mean(y, axis=[1, 2])
            outputs[square_name] = tf.reduce_mean(tf.square(y), axis=[1, 2])
        return outputs
