"""keras.applications models through `bnserve export MODEL.keras`: folded, certified, served as Keras computes.

Each model is built with weights=None at 32x32x3 and trained-looking BN statistics
(tests/helpers/applications.py), exported by the real command line with --data, then served by one real
server and compared with the Keras model in inference mode.
"""

from __future__ import annotations

import collections

import grpc
import numpy as np
import onnx
import pytest
from tritonclient.grpc import service_pb2 as v2

from bnserve.core.golden import GOLDEN, read_golden
from bnserve.core.parity import allowed_error
from bnserve.core.repository import read_manifest
from bnserve.exporter.artifacts import saved_model_op_types
from tests.helpers.applications import APPLICATIONS, application_images, application_model
from tests.helpers.cli import bnserve
from tests.helpers.serving import stub_for
from tests.requests import v2_request
from tests.servers import start_server

MULTIPLY_ADDS = {
    "resnet50": 0,  # every BN follows its own conv
    "mobilenetv2": 0,  # after Conv2D or DepthwiseConv2D, including the 17 that tf2onnx leaves as Mul + Add
    "efficientnetb0": 0,  # after Conv2D or DepthwiseConv2D
    # Pre-activation: 58 BNs read a Concatenate, 3 transitions' and the final BN read a block's output.
    "densenet121": 62,
}
"""BNs that no rule folds, so each stays one per-channel multiply-add."""

SLOW = {
    "resnet50",
    "densenet121",
}  # more than 90 s each on 2 cores (tf2onnx, the reference evaluator)

CERTIFICATE_TOLERANCE = 1e-4


class Applications:
    """Each application built, saved and exported once for the module (the serving test reuses them)."""

    def __init__(self, root):
        self.root = root
        self.repository = root / "repository"
        self.models = {}
        self.inputs = {}

    def export(self, name):
        if name not in self.models:
            model = application_model(name)
            path = self.root / f"{name}.keras"
            model.save(path)
            images = application_images(96, seed=1)
            np.savez(self.root / f"{name}.npz", x=images)
            result = bnserve(
                "export", path, "--repository", self.repository, "--name", name,
                "--data", self.root / f"{name}.npz",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            self.models[name] = model
            self.inputs[name] = application_images(8, seed=2)
        return self.models[name], self.repository / name / "1"


@pytest.fixture(scope="module")
def applications(tmp_path_factory):
    return Applications(tmp_path_factory.mktemp("applications"))


def application_params():
    return [
        pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [])
        for name in APPLICATIONS
    ]


@pytest.mark.parametrize("name", application_params())
def test_application_is_folded_certified_and_monitored(applications, name):
    model, version_dir = applications.export(name)
    manifest = read_manifest(version_dir)
    bn = manifest.batch_normalization
    batch_norms = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    assert bn.layers == len(batch_norms)
    assert len(bn.multiply_add) == MULTIPLY_ADDS[name], bn.multiply_add
    assert len(bn.folded) + len(bn.multiply_add) == len(batch_norms)
    graph = onnx.load(str(version_dir / "model.onnx")).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert "BatchNormalization" not in ops
    assert not [op for op in saved_model_op_types(version_dir / "saved_model") if "BatchNorm" in op]
    # Each unfolded BN is exactly one Mul and one Add, named after its BN node.
    named = collections.Counter(
        (node.op_type, node.name.rsplit("_", 1)[-1])
        for node in graph.node
        if node.name.startswith("bnserve_bn_")
    )
    assert named == collections.Counter(
        {("Mul", "scale"): MULTIPLY_ADDS[name], ("Add", "shift"): MULTIPLY_ADDS[name]}
        if MULTIPLY_ADDS[name]
        else {}
    )
    parity = manifest.parity
    assert parity["passed"] and parity["tolerance"] == CERTIFICATE_TOLERANCE
    for artifact in parity["artifacts"].values():
        assert artifact["max_abs"] <= allowed_error(
            CERTIFICATE_TOLERANCE, artifact["reference_scale"]
        )
        assert artifact["argmax_agreement"] == 1.0
    assert "the Dense layer 'predictions' without its softmax" in manifest.source["logits"]
    assert manifest.monitor is not None and len(manifest.monitor.layers) == 1 + len(batch_norms)
    assert manifest.accuracy is None  # --data without labels


def test_served_applications_equal_keras_in_inference_mode(applications):
    names = list(APPLICATIONS)
    expected = {}
    for name in names:
        model, version_dir = applications.export(name)
        images = applications.inputs[name]
        golden = read_golden(version_dir / GOLDEN)
        scale = max(float(np.max(np.abs(v))) for v in golden.outputs["logits"].values())
        expected[name] = (images, model(images, training=False).numpy(), scale)
    server = start_server(applications.repository, timeout=300)
    channel, stub = stub_for(server.url, options=[("grpc.max_receive_message_length", 1 << 26)])
    try:
        for name, (images, keras_probabilities, scale) in expected.items():
            config = stub.ModelConfig(v2.ModelConfigRequest(name=name)).config
            # Loaded only after its golden samples passed on this backend.
            assert config.parameters["parity_status"].string_value == "verified", name
            response = stub.ModelInfer(v2_request(images, name, outputs=("probabilities",)))
            served = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(
                keras_probabilities.shape
            )
            np.testing.assert_allclose(
                served,
                keras_probabilities,
                atol=allowed_error(CERTIFICATE_TOLERANCE, scale),
                rtol=0,
                err_msg=name,
            )
    except grpc.RpcError as exc:
        raise AssertionError(f"{exc.code()}: {exc.details()}\n" + "\n".join(server.log)) from None
    finally:
        channel.close()
        assert server.stop() == 0
