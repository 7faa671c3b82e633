"""The fold function against the NumPy reference BN (inference form) applied after a real conv."""

import numpy as np
import pytest
import tensorflow as tf

from bnserve.exporter.fold import bn_scale_shift, fold_conv_bn
from tests.reference import batch_norm_inference
from tests.tolerance import assert_same_function


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


def test_fold_into_conv1d_conv3d_grouped_and_separable_match_numpy():
    """OUTPUT_AXIS_LAST covers every kernel whose last axis is the output channel: Conv1D, Conv3D, a grouped
    Conv2D (kernel [kh, kw, in / groups, out]; group g makes outputs g * out / groups onwards) and a separable conv's
    pointwise kernel. Each folded layer equals the layer followed by s * z + t, computed independently."""
    from bnserve.exporter.fold import OUTPUT_AXIS_LAST, fold_into_producer

    rng = np.random.default_rng(11)

    def check(run, kernel, bias, layout=OUTPUT_AXIS_LAST):
        z = run(kernel) + (0 if bias is None else bias)
        scale, shift = _affine(rng, z.shape[-1])
        folded_kernel, folded_bias = fold_into_producer(kernel, bias, scale, shift, layout)
        y = run(folded_kernel.astype(np.float64)) + folded_bias
        np.testing.assert_allclose(y, z * scale + shift, atol=1e-5 * (1 + np.abs(z).max()))

    x1 = rng.normal(size=(2, 9, 3))
    check(lambda k: tf.nn.conv1d(x1, k, 1, "SAME").numpy(), rng.normal(size=(3, 3, 5)), None)
    x3 = rng.normal(size=(2, 4, 4, 4, 2))
    check(
        lambda k: tf.nn.conv3d(x3, k, [1, 1, 1, 1, 1], "VALID").numpy(),
        rng.normal(size=(2, 2, 2, 2, 4)),
        rng.normal(size=4),
    )
    # Grouped, 2 groups: input channels 0..1 make outputs 0..2, channels 2..3 make outputs 3..5.
    x = rng.normal(size=(2, 5, 5, 4))

    def grouped(k):
        halves = [
            tf.nn.conv2d(x[..., 2 * g : 2 * g + 2], k[..., 3 * g : 3 * g + 3], 1, "SAME").numpy()
            for g in range(2)
        ]
        return np.concatenate(halves, axis=-1)

    check(grouped, rng.normal(size=(3, 3, 2, 6)), rng.normal(size=6))
    # Separable: depthwise (multiplier 2), then the pointwise kernel [1, 1, 8, 5] takes the BN.
    depthwise = rng.normal(size=(3, 3, 4, 2))
    check(
        lambda k: tf.nn.separable_conv2d(x, depthwise, k, [1, 1, 1, 1], "SAME").numpy(),
        rng.normal(size=(1, 1, 8, 5)),
        rng.normal(size=5),
    )


def _keras_producer_models():
    """One small model per producer kind, each producer followed directly by a BN that folds into it."""
    import keras

    def model(shape, producer, flatten):
        images = keras.Input(shape)
        x = keras.layers.BatchNormalization(name="bn")(producer(images))
        return keras.Model(images, keras.layers.Dense(3)(flatten()(x)))

    layers = keras.layers
    return {
        "conv1d": model((9, 3), lambda t: layers.Conv1D(5, 3, padding="same")(t), layers.Flatten),
        "conv3d": model((4, 4, 4, 2), lambda t: layers.Conv3D(4, 2)(t), layers.Flatten),
        "grouped": model((5, 5, 4), lambda t: layers.Conv2D(6, 3, groups=2)(t), layers.Flatten),
        "separable": model(
            (5, 5, 4), lambda t: layers.SeparableConv2D(5, 3, depth_multiplier=2)(t), layers.Flatten
        ),
        "transposed": model(
            (4, 4, 3), lambda t: layers.Conv2DTranspose(4, 3, strides=2)(t), layers.Flatten
        ),
        "dense": model((6,), lambda t: layers.Dense(7, use_bias=False)(t), layers.Identity),
    }


@pytest.mark.parametrize(
    "kind", ["conv1d", "conv3d", "grouped", "separable", "transposed", "dense"]
)
def test_each_keras_producer_takes_its_bn_and_equals_keras(kind):
    import keras

    from bnserve.exporter.folded import (
        FoldedModule,
        batch_norm_layers,
        plan_folding,
        stored_statistics,
    )
    from bnserve.exporter.graph import layer_graph

    keras.utils.set_random_seed(3)
    model = _keras_producer_models()[kind]
    bn = model.get_layer("bn")
    rng = np.random.default_rng(3)
    channels = bn.moving_mean.shape[0]
    bn.moving_mean.assign(rng.normal(0, 0.5, channels).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.3, 2.0, channels).astype(np.float32))
    bn.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
    bn.beta.assign(rng.normal(0, 0.3, channels).astype(np.float32))
    graph = layer_graph(model, kind)
    statistics = {name: stored_statistics(bn) for name, bn in batch_norm_layers(graph).items()}
    plan = plan_folding(graph, statistics)
    assert [call.how for call in plan.calls] == ["into"], plan.calls
    x = rng.normal(size=(4, *model.input_shape[1:])).astype(np.float32)
    folded = FoldedModule(plan).serve(tf.constant(x))["logits"].numpy()
    assert_same_function(folded, model(x, training=False).numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"center": False},
        {"scale": False},
        {"center": False, "scale": False, "epsilon": 0.1},
        {"synchronized": True},
    ],
    ids=["no-center", "no-scale", "neither-eps0.1", "synchronized"],
)
def test_keras_bn_options_fold_and_equal_keras(options):
    import keras

    from bnserve.exporter.folded import (
        FoldedModule,
        batch_norm_layers,
        plan_folding,
        stored_statistics,
    )
    from bnserve.exporter.graph import layer_graph

    keras.utils.set_random_seed(4)
    images = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(5, 3)(images)
    x = keras.layers.BatchNormalization(name="bn", **options)(x)
    model = keras.Model(images, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(4)
    bn.moving_mean.assign(rng.normal(0, 0.5, 5).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.3, 2.0, 5).astype(np.float32))
    for weight in (bn.gamma, bn.beta):
        if weight is not None:
            weight.assign(rng.uniform(0.5, 1.5, 5).astype(np.float32))
    graph = layer_graph(model, "options")
    statistics = {
        name: stored_statistics(layer) for name, layer in batch_norm_layers(graph).items()
    }
    plan = plan_folding(graph, statistics)
    assert [call.how for call in plan.calls] == ["into"]
    x = rng.normal(size=(4, 6, 6, 2)).astype(np.float32)
    folded = FoldedModule(plan).serve(tf.constant(x))["logits"].numpy()
    assert_same_function(folded, model(x, training=False).numpy(), rtol=1e-5)
