"""Batch normalisation whose inference statistics are EMA shadows of the batch moments."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bnserve.trainer.config import TrainConfig


def add_step_counter(owner, name: str):
    """A non-trainable int64 scalar counting optimizer steps (n in the warm-up decay), kept by the first
    replica only under tf.distribute."""
    return owner.add_weight(
        shape=(),
        dtype="int64",
        initializer="zeros",
        trainable=False,
        aggregation="only_first_replica",
        name=name,
    )


@keras.saving.register_keras_serializable(package="bnserve")
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

    In a model of your own, pass ``warmup=True`` for the warm-up decay (the layer then counts its own
    updates in the weight ``shadow_updates``) and add ``ShadowStatistics()`` to ``model.fit``'s callbacks,
    which runs the assigner after every optimizer step. A .keras file saves the shadows with the weights.
    """

    def __init__(
        self,
        decay: float = TrainConfig.decay,
        epsilon: float = TrainConfig.epsilon,
        center: bool = True,
        scale: bool = True,
        num_updates: tf.Variable | None = None,
        warmup: bool = False,
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
        self.warmup = bool(warmup or num_updates is not None)
        self._own_counter = bool(warmup and num_updates is None)

    def get_config(self) -> dict:
        return super().get_config() | {
            "decay": self.decay,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "warmup": self.warmup,
        }

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
        if self._own_counter:
            self.shadow_updates = add_step_counter(self, "shadow_updates")
            self._num_updates = self.shadow_updates.value
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
        """The op moving the shadows towards the recorded batch moments (run it after the optimizer step).
        With its own counter (``warmup=True`` and no ``num_updates``) the counter is advanced first, so n is
        the number of completed optimizer steps, as in the trainer."""
        if not self._own_counter:
            return self.ema.apply(self._moment_variables())
        with tf.control_dependencies([self.shadow_updates.value.assign_add(1)]):
            return self.ema.apply(self._moment_variables())

    # Keras saves a layer's own weights only; the shadows are tf.train.ExponentialMovingAverage slots, so
    # they are appended to what a .keras file stores for this layer and read back from there.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        offset = len(self.weights)
        store[str(offset)] = self.shadow_mean.numpy()
        store[str(offset + 1)] = self.shadow_variance.numpy()

    def load_own_variables(self, store):
        offset = len(self.weights)
        shadows = [store[str(offset)], store[str(offset + 1)]] if str(offset) in store else None
        own = {key: store[key] for key in store.keys() if int(key) < offset}
        super().load_own_variables(own)
        if shadows is not None:
            self.shadow_mean.assign(np.asarray(shadows[0]))
            self.shadow_variance.assign(np.asarray(shadows[1]))


class ShadowStatistics(keras.callbacks.Callback):
    """Moves every ShadowBatchNormalization's shadows after each optimizer step of ``model.fit``
    (warm-up included when the layer has ``warmup=True``): ``fit`` runs the training step, which records
    the batch moments, and this callback then runs each layer's assigner, as the trainer does."""

    def on_train_begin(self, logs=None):
        steps = getattr(self.model, "steps_per_execution", 1) or 1
        if int(steps) != 1:
            raise ValueError(
                f"ShadowStatistics needs steps_per_execution=1 (got {steps}): with more, fit runs several "
                "optimizer steps between callbacks and the shadows would miss their batch moments"
            )
        self._layers = [
            layer
            for layer in self.model._flatten_layers(include_self=False)
            if isinstance(layer, ShadowBatchNormalization)
        ]
        if not self._layers:
            raise ValueError("ShadowStatistics: the model has no ShadowBatchNormalization layer")

    def on_train_batch_end(self, batch, logs=None):
        for layer in self._layers:
            layer.get_assigner()

    def compute_output_shape(self, input_shape):
        return input_shape
