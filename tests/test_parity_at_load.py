"""Load-time parity: golden samples in every version, re-checked by the server and by `bnserve verify`."""

import re
import shutil
import urllib.request

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tritonclient.grpc import service_pb2 as v2

from bnserve.core.golden import GOLDEN, read_golden
from bnserve.core.parity import allowed_error
from bnserve.core.repository import MANIFEST, ONNX_MODEL
from tests.helpers.cli import bnserve
from tests.helpers.serving import (
    POLL,
    index,
    infer_request,
    publish_copy,
    served_versions,
    stub_for,
    wait_for,
)
from tests.helpers.versions import rehash, without_golden
from tests.servers import start_server
from tests.tolerance import assert_same_function

LOGIT_SHIFT = 2e-2
"""Above the certificate's allowance (tolerance 1e-4 x the logits' magnitude, ~10 for digits; checked in
test_the_shift_is_above_the_allowance), far below anything a hash-free eye would notice."""


def test_the_shift_is_above_the_allowance(exported):
    _, version_dir, _ = exported
    golden = read_golden(version_dir / GOLDEN)
    scale = max(float(np.max(np.abs(logits))) for logits in golden.outputs["logits"].values())
    assert 2 * allowed_error(golden.tolerance, scale) < LOGIT_SHIFT < 0.1


def retune(version_dir):
    """Shift the dense layer's bias (the [K] initializer) by LOGIT_SHIFT: every logit moves by exactly that,
    the probabilities not at all (softmax ignores a common shift), and the hashes are made to match."""
    model = onnx.load(str(version_dir / ONNX_MODEL))
    bias = next(t for t in model.graph.initializer if list(t.dims) == [10])
    bias.CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(LOGIT_SHIFT), bias.name)
    )
    onnx.save(model, str(version_dir / ONNX_MODEL))
    rehash(version_dir)


def test_every_exported_version_carries_golden_samples(exported, reference):
    _, version_dir, manifest = exported
    assert GOLDEN in manifest["files"] and manifest["golden"]["file"] == GOLDEN
    golden = read_golden(version_dir / GOLDEN)
    assert (
        {key: len(images) for key, images in golden.inputs.items()}
        == manifest["golden"]["sets"]
        == {"heldout": 32, "random_batch_1": 1, "random_batch_64": 64}
    )
    assert golden.tolerance == manifest["parity"]["tolerance"] == 1e-4
    model, heldout = reference
    np.testing.assert_array_equal(golden.inputs["heldout"], heldout.images[:32])
    for (
        key,
        images,
    ) in golden.inputs.items():  # the unfolded model in inference mode is the reference
        logits = model(images, training=False).numpy()
        assert_same_function(golden.outputs["logits"][key], logits, err_msg=key)
        np.testing.assert_allclose(
            golden.outputs["probabilities"][key].sum(axis=1), 1.0, rtol=0, atol=1e-6
        )


@pytest.fixture
def parity_repository(exported, tmp_path):
    """good/1 (as exported), forged/1 (retuned, hashes matching), old/1 (no golden samples)."""
    _, version_dir, _ = exported
    repository = tmp_path / "repo"
    repository.mkdir()
    publish_copy(version_dir, repository, "good", 1)
    publish_copy(version_dir, repository, "forged", 1, mutate=retune)
    publish_copy(version_dir, repository, "old", 1, mutate=without_golden)
    return repository


GOLDEN_REFUSAL = re.compile(
    r"golden check: output 'logits' differs by at most (\S+) from the reference \(set '(\w+)', "
    r"row \d+, column \d+\), above the allowed \S+ \(tolerance 0\.0001 x max\(1, logit scale"
)


def assert_refused_by_golden(reason):
    match = GOLDEN_REFUSAL.search(reason)
    assert match, reason
    # The error found is the shift put in, give or take the certificate-level error of the runtime itself.
    assert abs(float(match.group(1)) - LOGIT_SHIFT) < 2e-4, reason


@pytest.mark.parametrize("backend", ["onnx", "tf"])
def test_a_version_that_differs_from_its_golden_samples_is_refused_at_startup(
    parity_repository, backend
):
    if backend == "tf":  # the TF backend serves the SavedModel: forge that one's numbers instead
        forged = parity_repository / "forged" / "1"
        shutil.rmtree(forged)
        publish_copy(
            parity_repository / "good" / "1",
            parity_repository,
            "forged",
            1,
            mutate=forge_saved_model,
        )
    server = start_server(
        parity_repository, "--backend", backend, "--poll-seconds", "0", "--metrics-port", "0"
    )
    channel, stub = stub_for(server.url)
    try:
        states = index(stub)
        assert states[("forged", "1")][0] == "UNAVAILABLE"
        assert_refused_by_golden(states[("forged", "1")][1])
        assert states[("good", "1")][0] == "READY" and states[("old", "1")][0] == "READY"
        response = stub.ModelInfer(infer_request(model="good"))
        assert response.model_version == "1"
        # The good version reports what it measured on this backend; the old one says it is unverified.
        parameters = stub.ModelConfig(v2.ModelConfigRequest(name="good")).config.parameters
        assert parameters["parity_status"].string_value == "verified"
        measured = float(parameters["parity_max_abs_error"].string_value)
        assert 0 <= measured <= 1e-4 and parameters["parity_tolerance"].string_value == "0.0001"
        assert parameters["parity_samples"].string_value == "97"
        old = stub.ModelConfig(v2.ModelConfigRequest(name="old")).config.parameters
        assert (
            old["parity_status"].string_value == "unverified" and "parity_max_abs_error" not in old
        )
        metrics_port = int(
            re.search(r"metrics on http://127\.0\.0\.1:(\d+)", "\n".join(server.log)).group(1)
        )
        scraped = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        gauge = re.search(
            r'bnserve_parity_max_abs_error\{model="good",version="1"\} (\S+)', scraped
        )
        assert (
            gauge and abs(float(gauge.group(1)) - measured) <= 1e-6 * max(measured, 1e-6) + 1e-12
        ), scraped[-2000:]
        assert 'bnserve_parity_max_abs_error{model="forged"' not in scraped
        assert 'bnserve_parity_max_abs_error{model="old"' not in scraped
    finally:
        channel.close()
        assert server.stop() == 0
    log = "\n".join(server.log)
    assert "model 'old' version 1 is unverified: it has no golden.npz" in log
    assert log.count("is unverified") == 1


def forge_saved_model(version_dir):
    """Shift the SavedModel's logits bias by LOGIT_SHIFT (hashes updated): for the TF backend's golden check."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir / "saved_model"))
    bias = next(
        v
        for v in loaded.signatures["serving_default"].variables
        if v.name.endswith("logits/bias:0")
    )
    bias.assign_add(tf.fill(bias.shape, np.float32(LOGIT_SHIFT)))
    shutil.rmtree(version_dir / "saved_model")
    tf.saved_model.save(loaded, str(version_dir / "saved_model"), signatures=loaded.signatures)
    rehash(version_dir)


def test_a_forged_version_published_while_serving_is_refused_and_the_previous_keeps_serving(
    exported, tmp_path
):
    _, version_dir, _ = exported
    repository = tmp_path / "repo"
    publish_copy(version_dir, repository, "m", 1)
    server = start_server(repository, "--poll-seconds", POLL)
    channel, stub = stub_for(server.url)
    try:
        assert served_versions(stub) == ["1"]
        publish_copy(version_dir, repository, "m", 2, mutate=retune)
        wait_for(lambda: index(stub).get(("m", "2"), ("",))[0] == "UNAVAILABLE", what="refusal")
        assert_refused_by_golden(index(stub)[("m", "2")][1])
        assert served_versions(stub) == ["1"]
        assert stub.ModelInfer(infer_request()).model_version == "1"
        publish_copy(version_dir, repository, "m", 3)  # a good version after it is taken as usual
        wait_for(lambda: served_versions(stub) == ["3"], what="version 3 serving")
    finally:
        channel.close()
        assert server.stop() == 0


@pytest.mark.parametrize("runtime", ["onnxruntime", "tf", "onnx-reference"])
def test_verify_reproduces_the_certificate_on_each_runtime(exported, runtime):
    _, version_dir, _ = exported
    result = bnserve("verify", version_dir, "--runtime", runtime)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("files: ok (")
    assert lines[1].split() == [
        "artifact",
        "samples",
        "max",
        "abs",
        "max",
        "rel",
        "argmax",
        "batch",
        "inv",
        "verdict",
    ]
    row = lines[2].split()
    assert (
        row[0] == f"{runtime}/cpu" and row[1] == "97" and float(row[2]) <= 1e-4 and row[-1] == "ok"
    )
    assert re.fullmatch(
        rf"verified: {runtime} on cpu reproduces digits version 1 within \S+ \(tolerance 0\.0001 x "
        r"max\(1, logit scale \S+\)\)",
        lines[-1],
    ), lines[-1]


def test_verify_fails_on_forged_numbers_and_on_tampered_files(exported, tmp_path):
    _, version_dir, _ = exported
    forged = tmp_path / "forged"
    shutil.copytree(version_dir, forged)
    retune(forged)
    result = bnserve("verify", forged)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "does not reproduce the certified numbers" in result.stderr
    assert_refused_by_golden(result.stderr)
    assert re.search(r"FAIL \(> 0\.00\d+\)", result.stdout), result.stdout
    tampered = tmp_path / "tampered"
    shutil.copytree(version_dir, tampered)
    data = bytearray((tampered / GOLDEN).read_bytes())
    data[-100] ^= 0xFF
    (tampered / GOLDEN).write_bytes(bytes(data))
    result = bnserve("verify", tampered)
    assert result.returncode == 1 and "file 'golden.npz' has sha256" in result.stderr, result.stderr
    assert result.stdout.startswith("files: FAIL")
    old = tmp_path / "old"
    shutil.copytree(version_dir, old)
    without_golden(old)
    result = bnserve("verify", old)
    assert result.returncode == 1 and "no golden.npz" in result.stderr, result.stderr


def test_verify_refuses_bad_paths_and_flags_with_exit_2(exported, tmp_path):
    _, version_dir, _ = exported
    cases = {
        (tmp_path / "absent",): "no such directory",
        (version_dir / MANIFEST,): "no such directory",
        (version_dir.parent,): "no manifest.json",
        (version_dir, "--runtime", "torch"): "argument --runtime: invalid choice: 'torch'",
        (version_dir, "--runtime", "onnx-reference", "--device", "gpu"): "runs on the CPU only",
    }
    for args, message in cases.items():
        result = bnserve("verify", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
