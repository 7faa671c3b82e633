"""After k optimizer steps the shadows equal the EMA of exactly those steps' batch moments."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bnserve.trainer.model import ModelConfig, build_model
from bnserve.trainer.train import make_train_step
from tests.reference import batch_moments, ema_decay, ema_update

STEPS = 6
DECAY = 0.9


def small_model(warmup: bool, decay: float = DECAY):
    keras.utils.set_random_seed(7)
    config = ModelConfig(
        input_shape=(8, 8, 2),
        num_classes=3,
        input_mean=(0.5, -0.5),
        input_std=(2.0, 1.0),
        widths=(4, 5),
        strides=(1, 2),
        decay=decay,
        epsilon=1e-3,
        warmup=warmup,
    )
    return build_model(config)


def batches(count: int, size: int = 16):
    rng = np.random.default_rng(3)
    for _ in range(count):
        yield (
            rng.normal(1.0, 2.0, size=(size, 8, 8, 2)).astype(np.float32),
            rng.integers(0, 3, size=size).astype(np.int64),
        )


def bn_inputs(model, images):
    """Each BN layer's input for ``images`` under the current weights (training-mode forward pass)."""
    hidden, inputs = model.standardize(images), []
    for conv, norm in zip(model.convs, model.norms):
        conv_out = conv(hidden)
        inputs.append(conv_out.numpy())
        hidden = tf.nn.relu(norm(conv_out, training=True))
    return inputs


def shadows(model):
    return [(norm.shadow_mean.numpy(), norm.shadow_variance.numpy()) for norm in model.norms]


def train_and_record(warmup: bool):
    """Run STEPS steps; per step the BN inputs before the step and the shadows after it."""
    model = small_model(warmup)
    # A large learning rate so that the weights, hence the moments, change visibly at every step.
    step = make_train_step(model, keras.optimizers.Adam(0.05))
    history = []
    for images, labels in batches(STEPS):
        before = bn_inputs(model, images)
        step(images, labels)
        history.append((before, bn_inputs(model, images), shadows(model)))
    return model, history


@pytest.mark.parametrize("warmup", [True, False])
def test_shadows_equal_numpy_ema_of_each_steps_moments(warmup):
    _, history = train_and_record(warmup)
    expected = [(np.zeros(4), np.ones(4)), (np.zeros(5), np.ones(5))]
    for t, (inputs_before, _, actual) in enumerate(history, start=1):
        decay = ema_decay(DECAY, t if warmup else None)
        for layer, z in enumerate(inputs_before):
            mean, variance = batch_moments(z)
            expected[layer] = (
                ema_update(expected[layer][0], mean, decay),
                ema_update(expected[layer][1], variance, decay),
            )
            np.testing.assert_allclose(actual[layer][0], expected[layer][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(actual[layer][1], expected[layer][1], rtol=1e-5, atol=1e-6)


def test_shadows_equal_keras_batch_normalization_moving_statistics():
    """The oracle: keras BatchNormalization(momentum=decay) fed the same BN inputs (plain decay)."""
    _, history = train_and_record(warmup=False)
    oracles = [keras.layers.BatchNormalization(momentum=DECAY, epsilon=1e-3) for _ in range(2)]
    for inputs_before, _, actual in history:
        for layer, (oracle, z) in enumerate(zip(oracles, inputs_before)):
            oracle(z, training=True)
            np.testing.assert_allclose(
                actual[layer][0], oracle.moving_mean.numpy(), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(
                actual[layer][1], oracle.moving_variance.numpy(), rtol=1e-5, atol=1e-6
            )


def test_update_of_step_t_uses_step_t_moments_after_the_optimizer_step():
    """Wrong orderings give measurably different shadows, so the exact match above pins the order.

    - update before the optimizer step: n = t - 1 in the warm-up decay;
    - update consuming moments recomputed after the weights moved: post-step moments.
    """
    model, history = train_and_record(warmup=True)
    right = wrong_n = wrong_moments = np.zeros(4)
    for t, (inputs_before, inputs_after, actual) in enumerate(history, start=1):
        mean_before, mean_after = (
            batch_moments(inputs_before[0])[0],
            batch_moments(inputs_after[0])[0],
        )
        right = ema_update(right, mean_before, ema_decay(DECAY, t))
        wrong_n = ema_update(wrong_n, mean_before, ema_decay(DECAY, t - 1))
        wrong_moments = ema_update(wrong_moments, mean_after, ema_decay(DECAY, t))
        np.testing.assert_allclose(actual[0][0], right, rtol=1e-5, atol=1e-6)
        assert np.max(np.abs(actual[0][0] - wrong_n)) > 1e-3
        assert np.max(np.abs(actual[0][0] - wrong_moments)) > 1e-3
    assert int(model.shadow_step.numpy()) == STEPS
