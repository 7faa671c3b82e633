"""The conv net: fixed input standardisation, then (conv -> shadow BN -> ReLU) blocks, pooling, logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from bnserve.trainer.bn import ShadowBatchNormalization, add_step_counter
from bnserve.trainer.config import TrainConfig


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network before restoring a checkpoint."""

    input_shape: tuple[int, int, int]
    """Image shape H, W, C (NHWC, batch dimension excluded)."""
    num_classes: int
    input_mean: tuple[float, ...]
    """Per-channel mean of the training images, subtracted inside the model."""
    input_std: tuple[float, ...]
    """Per-channel standard deviation of the training images, divided inside the model."""
    widths: tuple[int, ...] = (32, 64, 64)
    """Output channels of each conv block."""
    strides: tuple[int, ...] = (1, 2, 1)
    """Stride of each conv block (same length as widths)."""
    kernel_size: int = 3
    conv_bias: bool = False
    """A conv followed by BN needs no bias (beta absorbs it); kept as an option for the exporter."""
    bn_scale: bool = True
    """Whether BN layers learn gamma."""
    decay: float = TrainConfig.decay
    epsilon: float = TrainConfig.epsilon
    warmup: bool = True
    """Use num_updates = optimizer steps, i.e. decay min(decay, (1 + n) / (10 + n))."""

    def __post_init__(self):
        if len(self.widths) != len(self.strides):
            raise ValueError(
                f"widths {self.widths} and strides {self.strides} must have the same length"
            )
        if (
            len(self.input_mean) != self.input_shape[-1]
            or len(self.input_std) != self.input_shape[-1]
        ):
            raise ValueError("input_mean and input_std need one value per input channel")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelConfig":
        tuples = {"input_shape", "input_mean", "input_std", "widths", "strides"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


class InputStandardization(keras.layers.Layer):
    """y_c = (x_c - mean_c) / std_c with constants taken from the training set (not trained)."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self._mean, self._std = tuple(mean), tuple(std)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.mean = self.add_weight(
            shape=(channels,),
            initializer=keras.initializers.Constant(self._mean),
            trainable=False,
            name="mean",
        )
        self.std = self.add_weight(
            shape=(channels,),
            initializer=keras.initializers.Constant(self._std),
            trainable=False,
            name="std",
        )

    def call(self, x):
        return (x - self.mean) / self.std


class ShadowBNConvNet(keras.Model):
    """images [N,H,W,C] -> standardise -> [conv -> ShadowBN -> ReLU] x L -> global average pool -> logits [N,K]."""

    def __init__(self, config: ModelConfig):
        super().__init__(name="shadow_bn_convnet")
        self.config = config
        # n in the warm-up decay: the optimizer steps whose batch moments the shadows have consumed.
        self.shadow_step = add_step_counter(self, "shadow_step")
        num_updates = self.shadow_step.value if config.warmup else None
        self.standardize = InputStandardization(
            config.input_mean, config.input_std, name="standardize"
        )
        self.convs = [
            keras.layers.Conv2D(
                width,
                config.kernel_size,
                strides=stride,
                padding="same",
                use_bias=config.conv_bias,
                name=f"conv{i}",
            )
            for i, (width, stride) in enumerate(zip(config.widths, config.strides))
        ]
        self.norms = [
            ShadowBatchNormalization(
                config.decay,
                config.epsilon,
                scale=config.bn_scale,
                num_updates=num_updates,
                name=f"bn{i}",
            )
            for i in range(len(config.widths))
        ]
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.head = keras.layers.Dense(config.num_classes, name="logits")

    def build(self, input_shape):
        # Explicit shapes instead of Keras's symbolic trial call, which can abandon a half-built layer
        # and build it a second time (a second set of BN variables and shadows).
        shape = tuple(input_shape)
        self.standardize.build(shape)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        self.head.build((shape[0], shape[-1]))

    def call(self, images, training=None):
        hidden = self.standardize(images)
        for conv, norm in zip(self.convs, self.norms):
            hidden = tf.nn.relu(norm(conv(hidden), training=training))
        return self.head(self.pool(hidden))

    def functional(self) -> keras.Model:
        """The same network as a functional keras.Model over the same layer objects (so the same trained
        variables and shadows): the layer graph that bnserve.exporter.folded folds, as it folds a user's
        own model. ReLU is a layer there, since a functional graph records layers and Keras ops only."""
        images = keras.Input(shape=self.config.input_shape, name="images")
        hidden = self.standardize(images)
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            hidden = keras.layers.ReLU(name=f"relu{index}")(norm(conv(hidden)))
        return keras.Model(images, self.head(self.pool(hidden)), name="shadow_bn_convnet")

    def update_shadow_statistics(self, completed_optimizer_steps) -> tf.Operation:
        """Move every BN layer's shadows towards its recorded batch moments, with n = completed steps."""
        self.shadow_step.assign(tf.cast(completed_optimizer_steps, tf.int64))
        with tf.control_dependencies([self.shadow_step.value.read_value()]):
            return tf.group(*[norm.get_assigner() for norm in self.norms])

    def shadow_variables(self) -> dict[str, dict[str, tf.Variable]]:
        """{bn layer name: {"mean": shadow, "variance": shadow}}; EMA objects are not tracked by checkpoints."""
        return {
            norm.name: {"mean": norm.shadow_mean, "variance": norm.shadow_variance}
            for norm in self.norms
        }

    def parameters(self) -> "NetworkParameters":
        """Everything folding needs, as NumPy arrays: the one view of the network the exporter reads."""
        blocks = []
        for conv, norm, stride in zip(self.convs, self.norms, self.config.strides):
            blocks.append(
                BlockParameters(
                    conv=conv.name,
                    bn=norm.name,
                    kernel=conv.kernel.numpy(),
                    bias=conv.bias.numpy() if conv.use_bias else None,
                    stride=int(stride),
                    gamma=norm.gamma.numpy() if norm.gamma is not None else None,
                    beta=norm.beta.numpy() if norm.beta is not None else None,
                    epsilon=float(norm.epsilon),
                    shadow_mean=norm.shadow_mean.numpy(),
                    shadow_variance=norm.shadow_variance.numpy(),
                )
            )
        return NetworkParameters(
            input_shape=tuple(self.config.input_shape),
            input_mean=self.standardize.mean.numpy(),
            input_std=self.standardize.std.numpy(),
            blocks=tuple(blocks),
            dense_kernel=self.head.kernel.numpy(),
            dense_bias=self.head.bias.numpy(),
            ema_updates=int(self.shadow_step.numpy()),
        )

    def batch_moments(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{bn layer name: (mean, biased variance)} of the last batch seen in training mode."""
        return {
            norm.name: (norm.batch_mean.numpy(), norm.batch_variance.numpy()) for norm in self.norms
        }

    def set_statistics(self, statistics: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Point the shadows at ``statistics`` (e.g. precise BN); the checkpoint on disk is not touched."""
        for norm in self.norms:
            mean, variance = statistics[norm.name]
            norm.shadow_mean.assign(np.asarray(mean, np.float32))
            norm.shadow_variance.assign(np.asarray(variance, np.float32))


@dataclass(frozen=True)
class BlockParameters:
    """One conv -> BN block: kernel in TF's HWIO layout (out-channels last), BN parameters and shadows."""

    conv: str
    bn: str
    kernel: np.ndarray
    bias: np.ndarray | None
    stride: int
    gamma: np.ndarray | None
    beta: np.ndarray | None
    epsilon: float
    shadow_mean: np.ndarray
    shadow_variance: np.ndarray


@dataclass(frozen=True)
class NetworkParameters:
    """The whole network as NumPy arrays (``ShadowBNConvNet.parameters()``)."""

    input_shape: tuple[int, ...]
    input_mean: np.ndarray
    input_std: np.ndarray
    blocks: tuple[BlockParameters, ...]
    dense_kernel: np.ndarray
    dense_bias: np.ndarray
    ema_updates: int

    def shadow_statistics(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {block.bn: (block.shadow_mean, block.shadow_variance) for block in self.blocks}


def make_predict(model: ShadowBNConvNet, use_batch_statistics: bool):
    """``logits = predict(images)``: inference mode (shadows) or normalised with each batch's own moments."""
    signature = [tf.TensorSpec([None, *model.config.input_shape], tf.float32)]
    return tf.function(
        lambda images: model(images, training=use_batch_statistics), input_signature=signature
    )


def build_model(config: ModelConfig) -> ShadowBNConvNet:
    """Create the network and its variables (shadows included) eagerly, outside any tf.function."""
    model = ShadowBNConvNet(config)
    model(np.zeros((1, *config.input_shape), np.float32), training=False)
    return model
