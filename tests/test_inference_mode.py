"""Inference mode reads only the shadows: batch-composition invariant; decay 0 reproduces training mode."""

import keras
import numpy as np
import tensorflow as tf

from bnserve.trainer.bn import ShadowBatchNormalization
from bnserve.trainer.model import ModelConfig, build_model
from bnserve.trainer.train import make_train_step
from tests.reference import batch_norm_inference
from tests.tolerance import assert_same_function


def trained_model(decay=0.99, steps=5):
    keras.utils.set_random_seed(11)
    config = ModelConfig(
        input_shape=(8, 8, 1), num_classes=10, input_mean=(4.0,), input_std=(5.0,), decay=decay
    )
    model = build_model(config)
    step = make_train_step(model, keras.optimizers.Adam(0.01))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        step(
            rng.uniform(0, 16, (32, 8, 8, 1)).astype(np.float32),
            rng.integers(0, 10, 32).astype(np.int64),
        )
    return model


def sample_alone_and_in_batch(model, training):
    rng = np.random.default_rng(1)
    sample = rng.uniform(0, 16, (1, 8, 8, 1)).astype(np.float32)
    others = rng.uniform(0, 16, (63, 8, 8, 1)).astype(np.float32) * rng.uniform(
        0, 2, (63, 1, 1, 1)
    ).astype(np.float32)
    alone = model(sample, training=training).numpy()[0]
    in_batch = model(np.concatenate([others[:20], sample, others[20:]]), training=training).numpy()[
        20
    ]
    return alone, in_batch


def test_inference_mode_is_batch_composition_invariant():
    alone, in_batch = sample_alone_and_in_batch(trained_model(), training=False)
    assert_same_function(alone, in_batch)


def test_training_mode_is_not_batch_composition_invariant():
    alone, in_batch = sample_alone_and_in_batch(trained_model(), training=True)
    assert np.max(np.abs(alone - in_batch)) > 1e-2


def test_decay_zero_inference_output_equals_training_output_on_that_batch():
    model = trained_model(decay=0.0)
    images = np.random.default_rng(2).uniform(0, 16, (16, 8, 8, 1)).astype(np.float32)
    training_logits = model(images, training=True).numpy()  # records this batch's moments
    model.update_shadow_statistics(model.shadow_step + 1)
    np.testing.assert_allclose(
        model(images, training=False).numpy(), training_logits, rtol=1e-4, atol=1e-5
    )


def test_layer_inference_form_matches_numpy_reference():
    layer = ShadowBatchNormalization(decay=0.5, epsilon=1e-2)
    layer.build((None, 3, 3, 4))
    rng = np.random.default_rng(5)
    layer.gamma.assign(rng.normal(size=4).astype(np.float32))
    layer.beta.assign(rng.normal(size=4).astype(np.float32))
    layer(rng.normal(3.0, 2.0, (8, 3, 3, 4)).astype(np.float32), training=True)
    layer.get_assigner()
    x = rng.normal(size=(5, 3, 3, 4)).astype(np.float32)
    expected = batch_norm_inference(
        x,
        layer.shadow_mean.numpy(),
        layer.shadow_variance.numpy(),
        layer.gamma.numpy(),
        layer.beta.numpy(),
        1e-2,
    )
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_layer_without_gamma_uses_unit_scale():
    layer = ShadowBatchNormalization(scale=False)
    layer.build((None, 1, 1, 2))
    assert layer.gamma is None
    x = tf.constant(np.arange(8, dtype=np.float32).reshape(4, 1, 1, 2))
    expected = batch_norm_inference(x.numpy(), 0.0, 1.0, 1.0, 0.0, 1e-3)
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected, rtol=1e-6)
