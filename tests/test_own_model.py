"""A user's own Keras model through `bnserve export MODEL.keras`: folded, certified and published."""

import numpy as np
import onnxruntime
import pytest

from bnserve.core.repository import read_manifest
from bnserve.exporter.artifacts import onnx_op_types, saved_model_op_types
from tests.helpers.cli import assert_user_error, bnserve
from tests.helpers.drift import send, window_after
from tests.servers import start_server
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
    # bn4 has epsilon 1e-2, the others Keras's 1e-3: no single epsilon to record.
    assert bn.epsilon is None and manifest.source["epsilons"] == [1e-3, 1e-2]
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


def conv_bn(images):
    import keras

    x = keras.layers.Conv2D(4, 3, name="c")(images)
    return keras.layers.BatchNormalization(name="bn")(x)


def head(x, classes=3):
    import keras

    return keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(x))


def lambda_model(path):
    import keras

    images = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(conv_bn(images))
    keras.Model(images, head(x)).save(path)


def custom_layer_model(path):
    import keras

    class Doubler(keras.layers.Layer):
        def call(self, t):
            return t * 2.0

    images = keras.Input((8, 8, 1))
    keras.Model(images, head(Doubler(name="doubler")(conv_bn(images)))).save(path)


def two_inputs_model(path):
    import keras

    left, right = keras.Input((8, 8, 1), name="left"), keras.Input((8, 8, 1), name="right")
    x = conv_bn(keras.layers.Concatenate()([left, right]))
    keras.Model([left, right], head(x)).save(path)


def two_outputs_model(path):
    import keras

    images = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(conv_bn(images))
    keras.Model(images, [keras.layers.Dense(3)(x), keras.layers.Dense(2)(x)]).save(path)


def channels_first_model(path):
    import keras

    images = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(images)
    keras.Model(images, head(keras.layers.BatchNormalization(axis=1, name="bn_first")(x))).save(
        path
    )


def unreadable_file(path):
    path.write_bytes(b"not a model" * 10)


def weights_only_h5(path):
    import h5py

    with h5py.File(path, "w") as archive:
        archive.create_dataset("kernel", data=np.ones(3))


BAD_MODELS = {
    "lambda.keras": (
        lambda_model,
        "layer 'double' is a Lambda: its Python function cannot be read, so nothing about it can "
        "be certified; replace it with built-in Keras layers",
    ),
    "custom.keras": (
        custom_layer_model,
        "layer 'doubler' is a custom layer (tests.test_own_model.Doubler) that bnserve does not know "
        "how to fold "
        "or certify; express it with built-in Keras layers",
    ),
    "two_inputs.keras": (
        two_inputs_model,
        "the model has 2 inputs (left, right); bnserve serves models with one image input",
    ),
    "two_outputs.keras": (
        two_outputs_model,
        "the model has 2 outputs; bnserve serves models with one output (the logits or the "
        "probabilities)",
    ),
    "channels_first.keras": (
        channels_first_model,
        "BN layer 'bn_first' normalises axis 1 of a rank-4 tensor; bnserve folds channels-last BN "
        "only (axis -1)",
    ),
    "unreadable.keras": (
        unreadable_file,
        "is not a Keras model file: neither a .keras zip archive nor an HDF5 .h5 file",
    ),
    "weights.h5": (
        weights_only_h5,
        "holds no model (an HDF5 file without a model_config: weights alone? save the model with "
        "model.save)",
    ),
}


@pytest.mark.parametrize("filename", list(BAD_MODELS))
def test_a_model_bnserve_cannot_fold_gets_one_line_naming_why(filename, tmp_path):
    build, expected = BAD_MODELS[filename]
    build(tmp_path / filename)
    repository = tmp_path / "repo"
    result = bnserve(
        "export", tmp_path / filename, "--repository", repository, "--name", "m",
        "--input-range", "0,16",
    )  # fmt: skip
    assert_user_error(result, f"MODEL {str(tmp_path / filename)!r}", expected)
    assert not list(repository.glob("m/*")) and not list(repository.glob(".staging/*"))


# -- a Sequential CNN trained with model.fit on digits ------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_digits(tmp_path_factory):
    """A Sequential conv net a user would write, trained with fit (which updates the moving statistics),
    its held-out digits as --data (x, y, labels), and a copy whose statistics were never updated."""
    import keras

    from bnserve.trainer.data import load_dataset, split

    root = tmp_path_factory.mktemp("fitted")
    train, heldout = split(load_dataset("digits"), seed=0, heldout_fraction=0.2)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(32, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(train.images, train.labels, batch_size=64, epochs=12, verbose=0)
    model.save(root / "digits_cnn.keras")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
    model.save(root / "never_updated.keras")
    np.savez(
        root / "heldout.npz",
        x=heldout.images,
        y=heldout.labels,
        labels=np.array(heldout.class_names),
    )
    return root, heldout


def test_a_fitted_sequential_cnn_is_served_and_its_drift_monitor_raises_the_alarm(fitted_digits):
    root, heldout = fitted_digits
    repository = root / "repo"
    result = bnserve(
        "export", root / "digits_cnn.keras", "--repository", repository, "--name", "m",
        "--data", root / "heldout.npz",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(repository / "m" / "1")
    assert manifest.accuracy is not None and manifest.accuracy > 0.85, manifest.accuracy
    assert manifest.class_labels == tuple(heldout.class_names)
    assert len(manifest.batch_normalization.folded) == 2
    clean = heldout.images[:256].astype(np.float32)
    server = start_server(
        repository, "--model-control", "none", "--monitor-sample-rate", "1",
        "--monitor-max-share", "0", http=True,
    )  # fmt: skip
    try:
        send(server, clean)
        status = window_after(server, 1)
        assert not status["alarm"], status
        send(server, clean * 0.5 + 4)  # contrast x 0.5, offset +4
        status = window_after(server, 2)
        assert status["alarm"] and any(layer["alarm"] for layer in status["layers"][1:]), status
    finally:
        assert server.stop() == 0


def test_a_never_updated_copy_is_refused_then_exported_with_precise_statistics(fitted_digits):
    root, _ = fitted_digits
    repository = root / "repo-precise"
    command = ("export", root / "never_updated.keras", "--repository", repository, "--name", "m")
    assert_user_error(
        bnserve(*command, "--data", root / "heldout.npz"),
        "still holds its initial statistics (moving mean all 0, variance all 1)",
        "--stats precise --data D.npz",
    )
    assert not (repository / "m").exists()
    result = bnserve(*command, "--data", root / "heldout.npz", "--stats", "precise")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(repository / "m" / "1")
    # The frozen statistics, wrong for inference, scored far lower; the re-estimated ones recover.
    assert manifest.heldout_accuracy["ema"] < manifest.heldout_accuracy["precise"] - 0.2
    assert manifest.accuracy == manifest.heldout_accuracy["precise"] > 0.85
