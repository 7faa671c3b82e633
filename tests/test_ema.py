"""The EMA rule of DESIGN.md, on the BN layer's own shadows."""

import numpy as np
import pytest
import tensorflow as tf

from bnserve.trainer.bn import ShadowBatchNormalization
from tests.reference import ema_decay, ema_update


def batch_with_variance(variance: float) -> np.ndarray:
    """A [2,1,1,1] batch of mean 0 and biased variance exactly ``variance``."""
    root = np.sqrt(variance)
    return np.array([-root, root], np.float32).reshape(2, 1, 1, 1)


def test_worked_example_variance_shadow_1_2_3_4():
    # The variance variable starts at 1 (its initial value) and then takes 2, 3, 4.
    layer = ShadowBatchNormalization(decay=0.9)
    layer.build((None, 1, 1, 1))
    shadows = []
    for variance in (2.0, 3.0, 4.0):
        layer(batch_with_variance(variance), training=True)
        layer.get_assigner()
        shadows.append(float(layer.shadow_variance.numpy()[0]))
    np.testing.assert_allclose(shadows, [1.1, 1.29, 1.561], rtol=1e-6)


def test_worked_example_matches_the_numpy_oracle():
    shadow, expected = 1.0, []
    for value in (2.0, 3.0, 4.0):
        shadow = float(ema_update(shadow, value, 0.9))
        expected.append(shadow)
    np.testing.assert_allclose(expected, [1.1, 1.29, 1.561], rtol=1e-12)


def test_shadows_start_at_initial_values_and_move_only_on_assign():
    layer = ShadowBatchNormalization()
    layer.build((None, 2, 2, 3))
    np.testing.assert_array_equal(layer.shadow_mean.numpy(), np.zeros(3))
    np.testing.assert_array_equal(layer.shadow_variance.numpy(), np.ones(3))
    layer(np.full((4, 2, 2, 3), 5.0, np.float32), training=True)
    np.testing.assert_array_equal(
        layer.shadow_mean.numpy(), np.zeros(3)
    )  # forward pass alone: no move
    np.testing.assert_array_equal(layer.batch_mean.numpy(), np.full(3, 5.0))


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_warmup_decay_follows_num_updates(step):
    counter = tf.Variable(step, dtype=tf.int64)
    layer = ShadowBatchNormalization(decay=0.99, num_updates=counter)
    layer.build((None, 1, 1, 1))
    layer(np.array([1.0, 3.0], np.float32).reshape(2, 1, 1, 1), training=True)
    layer.get_assigner()
    expected = ema_update(0.0, 2.0, ema_decay(0.99, step))
    np.testing.assert_allclose(layer.shadow_mean.numpy(), [expected], rtol=1e-6)
