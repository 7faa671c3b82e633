"""Hostile input on the newer surfaces: recalibration that must not be poisoned, a capture that touches only
its own files, and non-finite inputs that must not switch the drift alarm off."""

import json

import grpc
import numpy as np
import pytest
import requests
from tritonclient.grpc import service_pb2 as v2

from bnserve.exporter.adapt import (
    COLLAPSE_SHARE,
    MAX_VARIANCE_RATIO,
    RANGE_FACTOR,
    adapted_refusal,
    screen_samples,
)
from bnserve.server.capture import MARKER, Capture
from tests.helpers.cli import assert_user_error, bnserve
from tests.helpers.drift import send, window_after
from tests.helpers.serving import metric, scrape, stub_for
from tests.requests import v2_request
from tests.servers import start_server

# -- recalibration ------------------------------------------------------------------------------------


def test_screening_drops_non_finite_and_far_out_of_range_samples_and_keeps_real_shifts():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 16, (64, 8, 8, 1)).astype(np.float32)
    shifted = np.concatenate([clean * 0.5 + 4, clean + 4, clean * 2])  # real shifts stay in
    hostile = clean[:4].copy()
    hostile[0, 0, 0, 0] = 1e30  # finite, and squares to infinity in float32
    hostile[1, 1, 1, 0] = np.nan
    hostile[2, 2, 2, 0] = -np.inf
    hostile[3, 3, 3, 0] = 16 + RANGE_FACTOR * 16 + 1  # just past the band
    labels = np.arange(len(shifted) + 4) % 10
    screened = screen_samples(np.concatenate([shifted, hostile]), labels, (0.0, 16.0))
    assert (screened.non_finite, screened.out_of_range) == (2, 2)
    np.testing.assert_array_equal(screened.images, shifted)
    np.testing.assert_array_equal(screened.labels, labels[: len(shifted)])


def statistics(variance_scale=1.0, mean=0.0):
    return {"bn0": (np.full(4, mean), np.full(4, 2.0 * variance_scale))}


SPREAD = np.arange(100) % 10


@pytest.mark.parametrize(
    "adapted, after, before_acc, after_acc, reason",
    [
        (statistics(), SPREAD, None, None, None),
        (statistics(0.3), SPREAD, 0.5, 0.9, None),  # contrast x0.5-like: allowed
        (
            statistics(mean=np.inf),
            SPREAD,
            None,
            None,
            "BN layer 'bn0': the adapted mean or variance is not finite",
        ),
        (
            statistics(MAX_VARIANCE_RATIO * 2),
            SPREAD,
            None,
            None,
            "BN layer 'bn0' channel 0: the adapted variance is 200 times the frozen one",
        ),
        (
            statistics(1 / (MAX_VARIANCE_RATIO * 2)),
            SPREAD,
            None,
            None,
            "the adapted variance is 0.005 times the frozen one",
        ),
        (
            statistics(),
            np.zeros(100, int),
            None,
            None,
            "predicts class 0 for 100.0% of the adapt inputs",
        ),
        (statistics(), SPREAD, 0.9, 0.8, "accuracy on the adapt set's labels falls from 0.9000"),
    ],
)
def test_an_adapted_version_is_refused_for_each_guard(
    adapted, after, before_acc, after_acc, reason
):
    found = adapted_refusal(statistics(), adapted, SPREAD, after, before_acc, after_acc)
    assert (found is None) if reason is None else (reason in found), found


def test_a_data_set_of_one_class_is_no_collapse():
    one_class = np.full(100, 3)
    assert COLLAPSE_SHARE <= 1.0
    assert adapted_refusal(statistics(), statistics(), one_class, one_class) is None


def test_one_poisoned_sample_in_a_capture_is_dropped_and_the_version_keeps_its_accuracy(
    digits_run, reference, tmp_path
):
    """1,280 clean digits and one pixel of 1e30 once published a version at 0.11 held-out accuracy."""
    run_dir, _ = digits_run
    _, heldout = reference
    capture = tmp_path / "capture"
    capture.mkdir()
    clean = np.concatenate([heldout.images] * 4)[:1280].astype(np.float32)
    poisoned = clean[:1].copy()
    poisoned[0, 3, 3, 0] = 1e30
    np.savez(capture / "a.npz", x=clean[:640])
    np.savez(capture / "b.npz", x=np.concatenate([clean[640:], poisoned]))
    (capture / "c.npz").write_bytes(b"not a zip")  # one bad shard is named, not fatal
    repository = tmp_path / "repo"
    result = bnserve(
        "export", run_dir, "--repository", repository, "--name", "d", "--stats", f"adapt:{capture}"
    )
    assert result.returncode == 0, result.stderr
    assert "skipped the shard c.npz: c.npz is not a readable .npz" in result.stderr
    assert (
        "dropped 1 of 1281 samples (0 not finite, 1 beyond 4 x the training range" in result.stderr
    )
    assert "held-out accuracy on the training distribution:" in result.stderr
    manifest = json.loads((repository / "d" / "1" / "manifest.json").read_text())
    assert manifest["heldout_accuracy"]["adapt"] > 0.9, manifest["heldout_accuracy"]
    source = manifest["batch_normalization"]["source"]
    assert source["dropped_out_of_range"] == 1 and source["skipped_shards"][0].startswith("c.npz")


def test_an_adapted_version_that_loses_accuracy_on_the_adapt_labels_is_refused(
    digits_run, reference, tmp_path
):
    """Labels that the frozen statistics get all right (they are its own predictions, on digits at a
    thousandth of their contrast): the adapted statistics change some answers, so they are refused."""
    run_dir, _ = digits_run
    model, heldout = reference
    faint = (heldout.images[:256] * 1e-3).astype(np.float32)
    labels = np.argmax(model(faint, training=False).numpy(), axis=1)
    target = tmp_path / "faint.npz"
    np.savez(target, x=faint, y=labels)
    repository = tmp_path / "repo"
    result = bnserve(
        "export", run_dir, "--repository", repository, "--name", "d", "--stats", f"adapt:{target}"
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --stats 'adapt:{target}': the adapted version is refused"), last
    assert "accuracy on the adapt set's labels falls from 1.0000 (frozen statistics) to" in last, (
        last
    )
    assert not (repository / "d").exists()


# -- capture ------------------------------------------------------------------------------------------


def test_the_capture_counts_and_deletes_only_its_own_shards(tmp_path):
    directory = tmp_path / "capture"
    (directory / "m" / "1").mkdir(parents=True)
    important = directory / "m" / "1" / "important.npz"
    np.savez(
        important, x=np.zeros((4096, 8, 8, 1), np.float32)
    )  # 1 MiB: over the budget on its own
    foreign = directory / "m" / "1" / f"bnserve-capture-{'0' * 16}-{0:020d}-1-000001.npz"
    np.savez(foreign, x=np.zeros((1, 8, 8, 1), np.float32))  # another directory's marker
    capture = Capture(directory, max_bytes=1 << 20, shard_samples=256)
    images = np.ones((256, 8, 8, 1), np.float32)
    for _ in range(20):  # 20 shards of 64 KiB against a 1 MiB budget
        capture.add("m", 1, images)
    capture.flush_due(force=True)
    marker = (directory / MARKER).read_text().strip()
    own = sorted((directory / "m" / "1").glob(f"bnserve-capture-{marker}-*.npz"))
    assert important.exists() and foreign.exists()
    assert 0 < len(own) < 20 and sum(p.stat().st_size for p in own) <= 1 << 20
    # A second server on the same directory counts the first one's shards, and still nothing else.
    again = Capture(directory, max_bytes=1 << 20, shard_samples=256)
    again.add("m", 1, images)
    again.flush_due(force=True)
    assert important.exists() and foreign.exists()
    assert (
        sum(p.stat().st_size for p in (directory / "m" / "1").glob(f"bnserve-capture-{marker}-*"))
        <= 1 << 20
    )


def test_the_capture_never_follows_a_link_out_of_its_directory(tmp_path):
    outside = tmp_path / "elsewhere"
    (outside / "1").mkdir(parents=True)
    keep = outside / "1" / "keep.npz"
    np.savez(keep, x=np.zeros((1, 8, 8, 1), np.float32))
    directory = tmp_path / "capture"
    directory.mkdir()
    (directory / "m").symlink_to(outside)
    capture = Capture(directory, max_bytes=1 << 20, shard_samples=8)
    capture.add("m", 1, np.ones((8, 8, 8, 1), np.float32))
    capture.add("m", 2, np.ones((8, 8, 8, 1), np.float32))  # no directory is made out there either
    capture.flush_due(force=True)
    assert sorted(p.name for p in (outside / "1").iterdir()) == ["keep.npz"]
    assert sorted(p.name for p in outside.iterdir()) == ["1"]


@pytest.mark.parametrize("where", ["repository", "inside", "parent"])
def test_a_capture_dir_that_overlaps_the_repository_is_refused_at_start(repository, where):
    capture = {"repository": repository, "inside": repository / "m", "parent": repository.parent}[
        where
    ]
    result = bnserve(
        "serve", "--repository", repository, "--grpc-port", "0", "--http-port", "0",
        "--capture-dir", capture, "--capture-rate", "0.5",
    )  # fmt: skip
    assert_user_error(result, f"--capture-dir {str(capture)!r}: overlaps --repository")


def test_an_empty_capture_dir_is_refused(repository):
    result = bnserve(
        "serve", "--repository", repository, "--capture-dir", "", "--capture-rate", "1"
    )
    assert_user_error(result, "--capture-dir: expected a path, got an empty string")


# -- non-finite inputs ----------------------------------------------------------------------------------


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_inputs_stay_out_of_the_drift_moments_and_never_clear_the_alarm(
    repository, reference
):
    _, heldout = reference
    shifted = heldout.images[:256].astype(np.float32) * 0.5 + 4
    server = start_server(
        repository, "--model-control", "none", "--monitor-sample-rate", "1",
        "--monitor-max-share", "0", "--metrics-port", "0", http=True,
    )  # fmt: skip
    channel, stub = stub_for(server.url)
    try:
        send(server, shifted)
        assert window_after(server, 1)["alarm"]
        # A NaN and an infinity in every 32 samples: before, each window scored NaN and cleared the alarm.
        for start in range(0, 256, 32):
            batch = shifted[start : start + 32].copy()
            batch[0, 0, 0, 0], batch[1, 1, 1, 0], batch[2, 2, 2, 0] = np.nan, np.inf, 1e30
            stub.ModelInfer(v2_request(batch), timeout=30)
        send(server, shifted[:32])  # 232 finite samples so far: these complete the window
        status = window_after(server, 2)
        assert status["non_finite"] == 24 and status["alarm"], status
        assert status["unknown_windows"] == 0 and all(
            np.isfinite(layer["score"]) for layer in status["layers"]
        )
        text = requests.get(f"{server.http_url}/v2/models/m/drift", timeout=30).text
        document = strict_json(text)  # no NaN or Infinity token
        assert all(
            layer["score"] is None or np.isfinite(layer["score"]) for layer in document["layers"]
        )
        assert (
            metric(
                scrape(server), "bnserve_monitor_non_finite_samples_total", model="m", version="1"
            )
            == 24
        )
        page = requests.get(f"{server.http_url}/", timeout=30).text
        assert '="nan' not in page and "NaN" not in page
        # Served as the model computes it: the serving path does not refuse them without the flag.
        answer = stub.ModelInfer(v2_request(shifted[:1] * np.nan), timeout=30)
        assert answer.model_name == "m"
    finally:
        channel.close()
        assert server.stop() == 0


def test_reject_non_finite_refuses_the_request_naming_the_tensor(repository):
    server = start_server(repository, "--model-control", "none", "--reject-non-finite", http=True)
    channel, stub = stub_for(server.url)
    try:
        images = np.ones((3, 8, 8, 1), np.float32)
        images[1, 2, 3, 0] = np.inf
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(v2_request(images), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == (
            "inputs[0]: 1 of 192 values are NaN or infinite; expected finite numbers (the server runs "
            "with --reject-non-finite)"
        )
        assert isinstance(
            stub.ModelInfer(v2_request(np.ones((3, 8, 8, 1), np.float32))), v2.ModelInferResponse
        )
    finally:
        channel.close()
        assert server.stop() == 0


def test_the_status_page_has_no_nan_in_its_charts():
    from bnserve.server.status_page import chart

    svg = chart([0.1, float("inf"), float("nan"), 0.2], 0.5)
    assert "nan" not in svg and "inf" not in svg and svg.count("<circle") == 3


# -- messages that say what is wrong ---------------------------------------------------------------------


def test_an_unresolvable_host_is_named_as_such(repository):
    result = bnserve(
        "serve", "--repository", repository, "--host", "no.such.host.invalid", "--grpc-port", "0"
    )
    assert_user_error(result, "--host 'no.such.host.invalid': the name does not resolve")


def test_a_token_file_that_is_not_text_is_one_line(repository, tmp_path):
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe\x00secret")
    result = bnserve("serve", "--repository", repository, "--auth-token-file", token)
    assert_user_error(result, f"--auth-token-file {str(token)!r}: not UTF-8 text")


def test_an_npy_named_npz_is_named_as_such(digits_run, tmp_path):
    run_dir, _ = digits_run
    target = tmp_path / "target.npz"
    with open(target, "wb") as stream:
        np.save(stream, np.zeros((64, 8, 8, 1), np.float32))
    result = bnserve("export", run_dir, "--repository", tmp_path / "repo", "--name", "d",
                     "--stats", f"adapt:{target}")  # fmt: skip
    assert_user_error(result, "target.npz is a single .npy array, not an .npz archive")


def test_an_encoded_slash_is_not_the_route_it_decodes_to(repository):
    server = start_server(repository, "--model-control", "none", http=True)
    try:
        response = requests.get(f"{server.http_url}/v2/health%2Fready", timeout=10)
        assert response.status_code == 404
        assert response.json() == {"error": "no such endpoint: GET /v2/health%2Fready"}
    finally:
        assert server.stop() == 0


# -- verify and golden files: declared sizes, and the version's faults as exit 1 --------------------------


def hostile_npz(path, shape=(2_000_000, 8, 8, 1)):
    """A zip whose input/random member declares ``shape`` but holds a few bytes: 659 kB once declared 2M
    samples and held a server at 1.43 GB for 36 s."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("input/random.npy", header.getvalue() + b"\0" * 64)
        tolerance = io.BytesIO()
        np.save(tolerance, np.float32(1e-4))
        archive.writestr("tolerance.npy", tolerance.getvalue())


def published_copy(exported, tmp_path, change):
    import shutil

    from tests.helpers.versions import rehash

    target = tmp_path / "m" / "1"
    shutil.copytree(exported[1], target)
    change(target)
    rehash(target)
    return target


def rewrite_golden(directory, **changes):
    with np.load(directory / "golden.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    np.savez(directory / "golden.npz", **arrays)


@pytest.mark.parametrize(
    "change, runtime, message",
    [
        (lambda d: (d / "model.onnx").write_bytes(b"\x8a" * 4096), "onnxruntime", "onnxruntime cannot load model.onnx"),
        (lambda d: rewrite_golden(d, tolerance=np.array("abc")), "onnxruntime", "expected a finite scalar 'tolerance'"),
        (lambda d: rewrite_golden(d, **{"input/random_batch_1": np.zeros((1, 4, 4, 1), np.float32)}), "onnxruntime",
         "input/random_batch_1 has shape [1, 4, 4, 1], the manifest declares [n, 8, 8, 1]"),
        (lambda d: hostile_npz(d / "golden.npz"), "onnxruntime", "refused before decompressing"),
        (lambda d: __import__("shutil").rmtree(d / "saved_model"), "tf", "tf cannot load saved_model"),
    ],
)  # fmt: skip
def test_verify_says_in_one_line_why_a_version_fails_with_exit_1(
    exported, tmp_path, change, runtime, message
):
    version = published_copy(exported, tmp_path, change)
    result = bnserve("verify", version, "--runtime", runtime)
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_an_adapt_shard_declaring_more_than_it_may_is_refused_before_decompressing(
    digits_run, tmp_path
):
    run_dir, _ = digits_run
    target = tmp_path / "big.npz"
    hostile_npz(target, shape=(50_000_000, 8, 8, 1))
    import zipfile

    with zipfile.ZipFile(target, "a") as archive:  # the member adapt reads is x
        archive.writestr("x.npy", zipfile.ZipFile(target).read("input/random.npy"))
    result = bnserve("export", run_dir, "--repository", tmp_path / "repo", "--name", "d",
                     "--stats", f"adapt:{target}")  # fmt: skip
    assert_user_error(result, "big.npz: declares", "refused before decompressing")
