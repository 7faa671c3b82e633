"""keras.applications models as users bring them (weights=None, small inputs), with BN statistics that a
real training run would leave: not the initial 0/1, and matched to what each layer actually sees.

Random statistics on a 50-layer network blow activations up by orders of magnitude (each BN multiplies
its channel by gamma / sqrt(var) of a variance unrelated to its input), which makes any comparison
meaningless. So each layer's statistics are its input's batch moments on the application's own input
range, measured in one pass with momentum 0 after gamma and beta were set to non-trivial values; then
the moments are perturbed per channel, so that inference mode differs visibly from batch mode.
"""

from __future__ import annotations

import numpy as np

APPLICATIONS = {
    "resnet50": ("ResNet50", {}),
    "mobilenetv2": ("MobileNetV2", {"alpha": 0.35}),
    "densenet121": ("DenseNet121", {}),
    "efficientnetb0": ("EfficientNetB0", {}),
}
"""name -> (keras.applications class, its keyword arguments)."""

INPUT_SHAPE = (32, 32, 3)
"""The smallest input every application accepts: keeps the four exports within the test budget."""

INPUT_RANGE = (0.0, 255.0)
"""Pixel values as the applications take them (EfficientNet rescales by 1/255 itself)."""

CLASSES = 10


def application_images(count: int, seed: int) -> np.ndarray:
    """Smooth random images (a blurred noise field per channel), so that neighbouring pixels correlate as
    in photographs, over INPUT_RANGE."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(*INPUT_RANGE, (count, 8, 8, INPUT_SHAPE[2]))
    fine = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    noise = rng.normal(0, 12.0, fine.shape)
    return np.clip(fine + noise, *INPUT_RANGE).astype(np.float32)


def application_model(name: str, seed: int = 0):
    """The named application, built with weights=None, with trained-looking BN statistics."""
    import keras

    class_name, arguments = APPLICATIONS[name]
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, class_name)(
        weights=None, input_shape=INPUT_SHAPE, classes=CLASSES, **arguments
    )
    # The certificate also runs uniform noise over the input range: measured on both, neither is far
    # outside what the statistics describe (noise alone drives EfficientNet's logits to ~1e3).
    noise = np.random.default_rng(seed).uniform(*INPUT_RANGE, (32, *INPUT_SHAPE))
    images = np.concatenate([application_images(32, seed), noise.astype(np.float32)])
    set_trained_statistics(model, images, seed)
    return model


def batch_norm_layers(model):
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def set_trained_statistics(model, images: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers = batch_norm_layers(model)
    for layer in layers:
        channels = layer.moving_mean.shape[0]
        if layer.gamma is not None:
            layer.gamma.assign(rng.uniform(0.6, 1.4, channels).astype(np.float32))
        if layer.beta is not None:
            layer.beta.assign(rng.normal(0.0, 0.2, channels).astype(np.float32))
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
        channels = layer.moving_mean.shape[0]
        spread = np.sqrt(np.array(layer.moving_variance))
        mean = np.array(layer.moving_mean) + rng.normal(0.0, 0.1, channels) * spread
        variance = np.array(layer.moving_variance) * rng.uniform(0.8, 1.25, channels)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))
