"""Batch normalisation whose inference statistics are EMA shadows of the batch moments."""

from __future__ import annotations

import keras
import tensorflow as tf

from bnserve.trainer.config import TrainConfig


class ShadowBatchNormalization(keras.layers.Layer):
    """Per-channel batch normalisation (channels last) with EMA shadow statistics.

    Training mode (``training=True``), per channel c over every axis but the last (N, H, W):

        m_c = mean(x_c)                  v_c = mean((x_c - m_c)^2)      (biased, ``tf.nn.moments``)
        y_c = gamma_c * (x_c - m_c) / sqrt(v_c + epsilon) + beta_c

    and m, v are assigned to the non-trainable variables ``batch_mean`` / ``batch_variance``.

    Inference mode (``training=False``) reads only the shadows:

        y_c = gamma_c * (x_c - shadow_mean_c) / sqrt(shadow_variance_c + epsilon) + beta_c

    The shadows are ``tf.train.ExponentialMovingAverage`` averages of ``batch_mean`` and
    ``batch_variance``, starting from their initial values (mean 0, variance 1). They move only when
    the op returned by ``get_assigner()`` runs, which the training step does after the optimizer step:

        shadow = d * shadow + (1 - d) * value
        d = decay                                  when num_updates is None
        d = min(decay, (1 + n) / (10 + n))         with n the value of the ``num_updates`` variable

    gamma is 1 when ``scale=False`` and beta is 0 when ``center=False``.
    """

    def __init__(
        self,
        decay: float = TrainConfig.decay,
        epsilon: float = TrainConfig.epsilon,
        center: bool = True,
        scale: bool = True,
        num_updates: tf.Variable | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if epsilon <= 0.0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self._num_updates = num_updates

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = (
            self.add_weight(shape=(channels,), initializer="ones", name="gamma")
            if self.scale
            else None
        )
        self.beta = (
            self.add_weight(shape=(channels,), initializer="zeros", name="beta")
            if self.center
            else None
        )
        # Under tf.distribute every replica assigns the same all-reduced moments: keep the first.
        self.batch_mean = self.add_weight(
            shape=(channels,),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="batch_mean",
        )
        self.batch_variance = self.add_weight(
            shape=(channels,),
            initializer="ones",
            trainable=False,
            aggregation="only_first_replica",
            name="batch_variance",
        )
        self.ema = tf.train.ExponentialMovingAverage(
            self.decay, num_updates=self._num_updates, name=f"{self.name}_ema"
        )
        # The first apply creates the shadows equal to the variables' current values; the update it
        # also performs moves nothing (value == shadow). init_scope keeps them out of any tf.function.
        with tf.init_scope():
            self.ema.apply(self._moment_variables())

    def _moment_variables(self) -> list[tf.Variable]:
        # ExponentialMovingAverage.apply takes tf.Variables: Keras 3 variables expose theirs as .value.
        return [self.batch_mean.value, self.batch_variance.value]

    @property
    def shadow_mean(self) -> tf.Variable:
        return self.ema.average(self.batch_mean.value)

    @property
    def shadow_variance(self) -> tf.Variable:
        return self.ema.average(self.batch_variance.value)

    def batch_moments(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-channel mean and biased variance over every axis but the last, of the *global* batch.

        On one device: ``tf.nn.moments``. With several replicas in sync (tf.distribute), each replica's
        per-channel sum S_r, sum of squares Q_r and count n_r are all-reduced (SUM), and

            mean = sum_r S_r / sum_r n_r        variance = sum_r Q_r / sum_r n_r - mean^2

        exactly the moments of the concatenated batch; every replica gets the same values, and the
        all-reduce passes gradients through, so training equals one device on the global batch.
        """
        axes = list(range(len(x.shape) - 1))
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return tf.nn.moments(x, axes=axes)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
        total, squares, count = context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes), count],
        )
        mean = total / count
        return mean, tf.maximum(squares / count - tf.square(mean), 0.0)

    def call(self, x, training=None):
        if training:
            mean, variance = self.batch_moments(x)
            self.batch_mean.assign(mean)
            self.batch_variance.assign(variance)
        else:
            mean, variance = self.shadow_mean, self.shadow_variance
        return tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, self.epsilon)

    def get_assigner(self) -> tf.Operation:
        """The op moving the shadows towards the recorded batch moments (run it after the optimizer step)."""
        return self.ema.apply(self._moment_variables())

    def compute_output_shape(self, input_shape):
        return input_shape
