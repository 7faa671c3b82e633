"""The fold function against the NumPy reference BN (inference form) applied after a real conv."""

import numpy as np
import pytest
import tensorflow as tf

from bnserve.exporter.fold import bn_scale_shift, fold_conv_bn
from tests.reference import batch_norm_inference


def conv(x, kernel, bias):
    y = tf.nn.conv2d(
        x.astype(np.float64), kernel.astype(np.float64), strides=1, padding="SAME"
    ).numpy()
    return y if bias is None else y + bias


CASES = {
    "plain": dict(mean_scale=1.0, variance_low=0.5, variance_high=2.0, epsilon=1e-3),
    "tiny-variance": dict(mean_scale=1.0, variance_low=1e-9, variance_high=1e-7, epsilon=1e-3),
    "large-mean": dict(mean_scale=1e4, variance_low=0.5, variance_high=2.0, epsilon=1e-3),
    "epsilon-1e-5": dict(mean_scale=1.0, variance_low=1e-6, variance_high=1e-4, epsilon=1e-5),
}


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("with_gamma", [True, False], ids=["gamma", "no-gamma"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fold_matches_conv_then_reference_bn(case, with_bias, with_gamma):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 6, 3))
    kernel = rng.normal(size=(3, 3, 3, 5))
    bias = rng.normal(size=5) if with_bias else None
    mean = rng.normal(size=5) * case["mean_scale"]
    variance = rng.uniform(case["variance_low"], case["variance_high"], size=5)
    gamma = rng.normal(size=5) if with_gamma else None
    beta = rng.normal(size=5)
    expected = batch_norm_inference(
        conv(x, kernel, bias),
        mean,
        variance,
        1.0 if gamma is None else gamma,
        beta,
        case["epsilon"],
    )
    folded_kernel, folded_bias = fold_conv_bn(
        kernel, bias, mean, variance, case["epsilon"], gamma, beta
    )
    assert folded_kernel.dtype == np.float32 and folded_bias.dtype == np.float32
    actual = conv(x, folded_kernel, folded_bias)
    # float32 weights: compare relative to the size of the largest term the BN output is made of.
    magnitude = 1.0 + np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * magnitude)


def test_standalone_bn_is_a_multiply_add():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 3, 4))
    mean, variance, gamma, beta = (
        rng.normal(size=4),
        rng.uniform(0.1, 2, 4),
        rng.normal(size=4),
        rng.normal(size=4),
    )
    scale, shift = bn_scale_shift(mean, variance, 1e-3, gamma, beta)
    np.testing.assert_allclose(
        x * scale + shift,
        batch_norm_inference(x, mean, variance, gamma, beta, 1e-3),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((np.zeros((3, 3, 5)), None, np.zeros(5), np.ones(5), 1e-3), "HWIO"),
        ((np.zeros((3, 3, 2, 5)), np.zeros(4), np.zeros(5), np.ones(5), 1e-3), "5 channels"),
        ((np.zeros((3, 3, 2, 5)), None, np.zeros(5), np.ones(5), 0.0), "epsilon"),
        ((np.zeros((3, 3, 2, 5)), None, np.zeros(5), -np.ones(5), 1e-3), "variance"),
    ],
)
def test_fold_rejects_inconsistent_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        fold_conv_bn(*arguments)


def _affine(rng, channels):
    return rng.uniform(0.5, 2.0, channels), rng.normal(size=channels)


def test_fold_into_depthwise_transposed_and_next_dense_match_numpy():
    from bnserve.exporter.fold import (
        OUTPUT_AXIS_DEPTHWISE,
        OUTPUT_AXIS_TRANSPOSED,
        fold_into_next_dense,
        fold_into_producer,
    )

    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 5, 5, 3))
    # Depthwise, multiplier 2: output channel c * 2 + m.
    kernel, bias = rng.normal(size=(3, 3, 3, 2)), rng.normal(size=6)
    scale, shift = _affine(rng, 6)
    z = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME").numpy() + bias
    k2, b2 = fold_into_producer(kernel, bias, scale, shift, OUTPUT_AXIS_DEPTHWISE)
    y = tf.nn.depthwise_conv2d(x, k2.astype(np.float64), [1, 1, 1, 1], "SAME").numpy() + b2
    np.testing.assert_allclose(y, z * scale + shift, atol=1e-5 * (1 + np.abs(z).max()))
    # Transposed conv: kernel [kh, kw, out, in].
    kernel, bias = rng.normal(size=(3, 3, 4, 3)), None
    scale, shift = _affine(rng, 4)
    shape = [2, 10, 10, 4]
    z = tf.nn.conv2d_transpose(x, kernel, shape, 2, "SAME").numpy()
    k2, b2 = fold_into_producer(kernel, bias, scale, shift, OUTPUT_AXIS_TRANSPOSED)
    y = tf.nn.conv2d_transpose(x, k2.astype(np.float64), shape, 2, "SAME").numpy() + b2
    np.testing.assert_allclose(y, z * scale + shift, atol=1e-5 * (1 + np.abs(z).max()))
    # Forward into the next Dense: (s * f + t) W + b.
    features = rng.normal(size=(4, 6))
    kernel, bias = rng.normal(size=(6, 3)), rng.normal(size=3)
    scale, shift = _affine(rng, 6)
    expected = (features * scale + shift) @ kernel + bias
    k2, b2 = fold_into_next_dense(kernel, bias, scale, shift)
    np.testing.assert_allclose(
        features @ k2 + b2, expected, atol=1e-5 * (1 + np.abs(expected).max())
    )
