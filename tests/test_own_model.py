"""A user's own Keras model through `bnserve export MODEL.keras`: folded, certified and published."""

import numpy as np
import onnxruntime
import pytest

from bnserve.core.repository import read_manifest
from bnserve.exporter.artifacts import onnx_op_types, saved_model_op_types
from tests.helpers.cli import assert_user_error, bnserve
from tests.tolerance import assert_same_function


def own_model(path, seed=0, trained_statistics=True):
    """Conv -> BN -> ReLU, a residual Add -> BN (a multiply-add), pooling -> BN -> softmax Dense."""
    import keras

    keras.utils.set_random_seed(seed)
    images = keras.Input(shape=(8, 8, 1), name="pixels")
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(images)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    y = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="dw")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.BatchNormalization(name="bn3")(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization(name="bn4", epsilon=1e-2)(x)
    model = keras.Model(images, keras.layers.Dense(10, activation="softmax", name="out")(x))
    rng = np.random.default_rng(seed)
    if trained_statistics:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                channels = layer.moving_mean.shape[0]
                layer.moving_mean.assign(rng.normal(0, 0.5, channels).astype("float32"))
                layer.moving_variance.assign(rng.uniform(0.3, 2.0, channels).astype("float32"))
                layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
                layer.beta.assign(rng.normal(0, 0.3, channels).astype("float32"))
    model.save(path)
    return model


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    model = own_model(root / "own.keras")
    x = np.random.default_rng(1).uniform(0, 16, (300, 8, 8, 1)).astype(np.float32)
    y = np.argmax(model(x, training=False).numpy(), axis=1)
    np.savez(root / "data.npz", x=x, y=y)
    return root, model, x


def test_own_model_is_folded_certified_and_published(own):
    root, model, x = own
    result = bnserve(
        "export", root / "own.keras", "--repository", root / "repo", "--name", "own",
        "--data", root / "data.npz",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    version_dir = root / "repo" / "own" / "1"
    manifest = read_manifest(version_dir)
    bn = manifest.batch_normalization
    assert bn.folded == ("c1+bn1", "dw+bn2", "bn4>out") and bn.multiply_add == ("bn3",)
    assert "softmax" in manifest.source["logits"] and manifest.monitor is not None
    assert manifest.accuracy == 1.0 and manifest.parity["passed"]
    assert not [op for op in onnx_op_types(version_dir / "model.onnx") if "BatchNorm" in op]
    assert not [op for op in saved_model_op_types(version_dir / "saved_model") if "BatchNorm" in op]
    session = onnxruntime.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    probabilities = session.run(["probabilities"], {"images": x})[0]
    assert_same_function(probabilities, model(x, training=False).numpy(), rtol=1e-4)


def test_never_updated_statistics_are_refused_then_precise_exports(own, tmp_path):
    root, _, _ = own
    own_model(tmp_path / "stale.keras", trained_statistics=False)
    command = ("export", tmp_path / "stale.keras", "--repository", tmp_path / "repo", "--name", "s")
    assert_user_error(
        bnserve(*command, "--data", root / "data.npz"),
        "BN layer 'bn1'",
        "never run with training=True",
        "--stats precise",
    )
    assert not (tmp_path / "repo" / "s").exists()
    result = bnserve(*command, "--data", root / "data.npz", "--stats", "precise")
    assert result.returncode == 0, result.stderr
    assert read_manifest(tmp_path / "repo" / "s" / "1").batch_normalization.statistics == "precise"


def test_without_data_the_input_range_is_required(own, tmp_path):
    root, _, _ = own
    assert_user_error(
        bnserve("export", root / "own.keras", "--repository", tmp_path / "r", "--name", "m"),
        "--input-range LO,HI",
    )
