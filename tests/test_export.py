"""Exported artifacts: no BN op, numbers equal to the reference, manifest, versions, precise BN."""

import hashlib
import re

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

from bnserve.core.errors import UserError
from bnserve.core.repository import file_digests, read_manifest, verify_files
from bnserve.exporter.artifacts import onnx_op_types, saved_model_op_types
from bnserve.exporter.export import ExportRequest, ParityError, export
from bnserve.exporter.folded import FoldedModule, plan_folding, precise_statistics
from bnserve.exporter.graph import layer_graph
from bnserve.trainer.checkpoint import restore_trained_model
from bnserve.trainer.data import load_dataset, split
from bnserve.trainer.model import ModelConfig, build_model
from bnserve.trainer.train import make_train_step
from tests.tolerance import assert_same_function


def artifacts(version_dir):
    signature = tf.saved_model.load(str(version_dir / "saved_model")).signatures["serving_default"]
    session = onnxruntime.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return {
        "saved_model": lambda x: {
            k: v.numpy() for k, v in signature(images=tf.constant(x)).items()
        },
        "onnxruntime": lambda x: dict(
            zip(
                ["logits", "probabilities"], session.run(["logits", "probabilities"], {"images": x})
            )
        ),
    }


def test_artifacts_hold_no_batch_norm_op(exported):
    _, version_dir, _ = exported
    assert not [op for op in saved_model_op_types(version_dir / "saved_model") if "BatchNorm" in op]
    assert "Conv2D" in saved_model_op_types(version_dir / "saved_model")
    assert "BatchNormalization" not in onnx_op_types(version_dir / "model.onnx")
    assert "Conv" in onnx_op_types(version_dir / "model.onnx")


def test_artifacts_match_the_unfolded_reference(exported, reference):
    _, version_dir, manifest = exported
    model, heldout = reference
    expected = model(heldout.images, training=False).numpy()
    for name, run in artifacts(version_dir).items():
        outputs = run(heldout.images)
        assert np.max(np.abs(outputs["logits"] - expected)) <= 1e-4, name
        np.testing.assert_array_equal(
            np.argmax(outputs["logits"], 1), np.argmax(expected, 1), err_msg=name
        )
        np.testing.assert_allclose(
            outputs["probabilities"].sum(axis=1), 1.0, rtol=0, atol=1e-5, err_msg=name
        )
    for name, report in manifest["parity"]["artifacts"].items():
        assert report["max_abs"] <= 1e-4 and report["argmax_agreement"] == 1.0, name
    assert set(manifest["parity"]["artifacts"]) == {"saved_model", "onnxruntime", "onnx_reference"}


def test_artifacts_are_batch_composition_invariant(exported):
    _, version_dir, _ = exported
    batch = np.random.default_rng(4).uniform(0, 16, (64, 8, 8, 1)).astype(np.float32)
    for name, run in artifacts(version_dir).items():
        together = run(batch)["logits"]
        for i in (0, 17, 63):
            assert_same_function(run(batch[i : i + 1])["logits"][0], together[i], err_msg=name)


def test_manifest_describes_the_model_and_hashes_every_file(exported):
    _, version_dir, manifest = exported
    assert manifest["name"] == "digits" and manifest["version"] == 1
    assert manifest["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "probabilities"]
    assert manifest["class_labels"] == [str(k) for k in range(10)]
    bn = manifest["batch_normalization"]
    assert (
        bn["statistics"] == "ema"
        and bn["layers"] == 3
        and bn["epsilon"] == 1e-3
        and bn["ema_updates"] > 0
    )
    assert {"tensorflow", "tf2onnx", "onnx"} <= set(manifest["versions"])
    on_disk = {
        p.relative_to(version_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in version_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert (
        manifest["files"] == on_disk
        and "model.onnx" in on_disk
        and "saved_model/saved_model.pb" in on_disk
    )
    verify_files(version_dir, read_manifest(version_dir))


def test_one_changed_byte_fails_verification(exported, tmp_path):
    import shutil

    _, version_dir, _ = exported
    copy = tmp_path / "1"
    shutil.copytree(version_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(UserError, match="'model.onnx' has sha256"):
        verify_files(copy, read_manifest(copy))


def tree_bytes(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_precise_statistics_publish_version_2_and_leave_version_1_untouched(exported, digits_run):
    repository, version_dir, _ = exported
    before = tree_bytes(version_dir)
    version, path, manifest = export(
        ExportRequest(digits_run[0], repository, "digits", statistics="precise"),
        log=lambda line: None,
    )
    assert version == 2 and path == repository / "digits" / "2"
    assert tree_bytes(version_dir) == before
    assert manifest.batch_normalization.statistics == "precise"
    assert set(manifest.heldout_accuracy) == {"ema", "precise"} and manifest.accuracy >= 0.95
    assert manifest.parity["passed"]
    assert file_digests(path)["model.onnx"] != file_digests(version_dir)["model.onnx"]


def test_precise_statistics_average_the_batch_moments(digits_run):
    run_dir, record = digits_run
    model, _, _ = restore_trained_model(run_dir)
    train, _ = split(
        load_dataset("digits"), record.config["seed"], record.config["heldout_fraction"]
    )
    statistics = precise_statistics(
        layer_graph(model.functional(), "run"), train.images, batch_size=100
    )
    # The first BN layer's input does not depend on any BN: recompute it batch by batch.
    means, variances, weights = [], [], []
    for start in range(0, len(train), 100):
        z = (
            model.convs[0](model.standardize(train.images[start : start + 100]))
            .numpy()
            .astype(np.float64)
        )
        means.append(z.mean(axis=(0, 1, 2)))
        variances.append(z.var(axis=(0, 1, 2)))
        weights.append(len(z))
    np.testing.assert_allclose(
        statistics["bn0"][0], np.average(means, axis=0, weights=weights), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        statistics["bn0"][1], np.average(variances, axis=0, weights=weights), rtol=1e-5
    )


@pytest.mark.parametrize("conv_bias, bn_scale", [(True, False), (True, True), (False, False)])
def test_folding_conv_with_bias_and_bn_without_gamma(conv_bias, bn_scale):
    keras.utils.set_random_seed(3)
    config = ModelConfig(
        input_shape=(6, 6, 2),
        num_classes=4,
        input_mean=(3.0, -1.0),
        input_std=(2.0, 0.5),
        widths=(5, 7),
        strides=(2, 1),
        conv_bias=conv_bias,
        bn_scale=bn_scale,
        epsilon=1e-2,
    )
    model = build_model(config)
    step = make_train_step(model, keras.optimizers.Adam(0.01))
    rng = np.random.default_rng(0)
    for _ in range(4):
        step(
            rng.normal(2, 3, (16, 6, 6, 2)).astype(np.float32),
            rng.integers(0, 4, 16).astype(np.int64),
        )
    statistics = {n.name: (n.shadow_mean.numpy(), n.shadow_variance.numpy()) for n in model.norms}
    folded = FoldedModule(plan_folding(layer_graph(model.functional(), "run"), statistics))
    x = rng.normal(2, 3, (9, 6, 6, 2)).astype(np.float32)
    # Folding reorders the arithmetic (s * (W x) vs W x then BN): equal to rounding of the logits' scale.
    assert_same_function(
        folded.serve(x)["logits"].numpy(), model(x, training=False).numpy(), rtol=1e-4
    )


def test_a_parity_failure_publishes_nothing(exported, digits_run):
    repository, _, _ = exported
    before = sorted(p.name for p in (repository / "digits").iterdir())
    with pytest.raises(ParityError, match="nothing published"):
        export(
            ExportRequest(digits_run[0], repository, "digits", tolerance=1e-12),
            log=lambda line: None,
        )
    assert sorted(p.name for p in (repository / "digits").iterdir()) == before
    assert not list((repository / ".staging").iterdir())


def test_supported_opsets_match_the_installed_tf2onnx():
    import tf2onnx

    from bnserve.exporter.options import SUPPORTED_OPSETS

    assert SUPPORTED_OPSETS.stop - 1 == max(tf2onnx.constants.OPSET_TO_IR_VERSION)


def test_model_onnx_alone_tells_its_consumers_what_it_is(exported):
    """Consumers who receive model.onnx without the manifest read the facts from the model itself."""
    import json

    import onnxruntime

    _, version_dir, manifest = exported
    meta = onnxruntime.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    ).get_modelmeta()
    props = meta.custom_metadata_map
    assert (
        json.loads(props["bnserve.class_labels"])
        == manifest["class_labels"]
        == [str(k) for k in range(10)]
    )
    assert json.loads(props["bnserve.input"]) == {
        "name": "images",
        "datatype": "FP32",
        "shape": [-1, 8, 8, 1],
        "layout": "NHWC",
        "range": [0.0, 16.0],
        "values": manifest["input_values"],
    }
    assert json.loads(props["bnserve.batch_normalization"]) == manifest["batch_normalization"]
    assert json.loads(props["bnserve.batch_normalization"])["statistics"] == "ema"
    parity = json.loads(props["bnserve.core.parity"])
    assert parity["passed"] and parity["tolerance"] == 1e-4
    assert parity["max_abs"] == {
        name: r["max_abs"] for name, r in manifest["parity"]["artifacts"].items()
    }
    assert json.loads(props["bnserve.heldout_accuracy"]) == manifest["heldout_accuracy"]
    assert "3 are folded into the layer next to them and 0 are one" in meta.description
    assert "with the ema statistics" in meta.description
    assert "raw values in [0, 16]" in meta.description


def test_the_manifest_round_trips_and_a_foreign_one_names_its_field(exported, tmp_path):
    import json

    from bnserve.core.repository import Manifest

    _, version_dir, data = exported
    manifest = read_manifest(version_dir)
    assert manifest.to_json() == data  # every field, as written
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert (
        manifest.inputs[0].shape == (-1, 8, 8, 1)
        and manifest.batch_normalization.statistics == "ema"
    )
    assert manifest.golden["sets"] == {"heldout": 32, "random_batch_1": 1, "random_batch_64": 64}
    foreign = {
        "format": ("tfserving/1", "format 'tfserving/1', expected 'bnserve.model/1'"),
        "inputs": ("images", "field 'inputs' must be a JSON list, got str"),
        "batch_normalization": ({"statistics": "ema"}, "field 'batch_normalization'"),
        "version": (True, "field 'version' must be a JSON int, got bool"),
        "sizes": ({"model.onnx": -1}, "field 'sizes' must map relative paths to byte counts"),
    }
    for field_name, (value, message) in foreign.items():
        with pytest.raises(UserError, match=re.escape(message)):
            Manifest.from_json(data | {field_name: value})
    missing = dict(data)
    del missing["parity"]
    with pytest.raises(UserError, match="field 'parity' is missing"):
        Manifest.from_json(missing)
    (tmp_path / "manifest.json").write_text(json.dumps(data | {"inputs": [{"name": "images"}]}))
    with pytest.raises(UserError, match=r"field 'inputs'\[0\]: expected \{name, datatype, shape\}"):
        read_manifest(tmp_path)
