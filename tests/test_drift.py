"""The drift monitor: the score against NumPy, monitor.onnx against the unfolded model, thresholds from the
manifest, alarms on a real server, capture, and recalibration with --stats adapt."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import requests

from bnserve.core.drift import (
    MONITOR_MODEL,
    MonitoredLayer,
    calibrate_thresholds,
    layer_shift,
    output_names,
    window_shifts,
)
from bnserve.core.repository import read_manifest
from tests.helpers.cli import assert_user_error, bnserve
from tests.helpers.drift import drift_status, send, window_after
from tests.helpers.serving import metric, publish_copy, scrape, wait_for
from tests.requests import v2_json_body
from tests.servers import start_server
from tests.tolerance import assert_same_function


def kl_reference(
    z: np.ndarray, mean: np.ndarray, variance: np.ndarray, epsilon: float, informative
) -> float:
    """The definition, straight from samples z [N, H, W, C]: per channel KL(N(m, v+eps) || N(M, V+eps))."""
    m = z.mean(axis=(0, 1, 2))
    v = z.var(axis=(0, 1, 2))
    live, frozen = v + epsilon, variance + epsilon
    kl = 0.5 * (live / frozen + (m - mean) ** 2 / frozen - 1 - np.log(live / frozen))
    return float(kl[informative].mean())


def test_the_score_is_the_kl_divergence_of_the_live_moments_including_a_gamma_zero_channel():
    rng = np.random.default_rng(3)
    z = rng.normal([1.0, -2.0, 0.5, 3.0], [2.0, 0.5, 1.0, 0.1], size=(40, 5, 5, 4))
    scale = np.array(
        [0.7, -1.3, 0.0, 2.0]
    )  # channel 2: gamma = 0, its output carries nothing about z
    shift = np.array([0.1, 0.2, 0.3, -0.4])
    y = z * scale + shift
    layer = MonitoredLayer(
        "conv0+bn0", tuple(scale), tuple(shift), (0.8, -2.2, 0.0, 3.1), (3.0, 0.3, 1.0, 0.02), 1e-3
    )
    per_sample = {
        "layer0_mean": y.mean(axis=(1, 2)),
        "layer0_mean_square": (y**2).mean(axis=(1, 2)),
    }
    expected = kl_reference(z, np.array(layer.mean), np.array(layer.variance), 1e-3, scale != 0)
    (shift_score,) = window_shifts(per_sample, [layer])
    assert shift_score == pytest.approx(expected, rel=1e-9)
    # The same moments score 0 against themselves (up to the eps terms, which cancel when v = V).
    matched = MonitoredLayer(
        "m",
        tuple(scale),
        tuple(shift),
        tuple(z.mean(axis=(0, 1, 2))),
        tuple(z.var(axis=(0, 1, 2))),
        1e-3,
    )
    assert window_shifts(per_sample, [matched])[0] == pytest.approx(0.0, abs=1e-12)
    # A layer whose every gamma is 0 tells nothing: it scores 0 whatever arrives.
    dead = MonitoredLayer("dead", (0.0,) * 4, tuple(shift), layer.mean, layer.variance, 1e-3)
    assert layer_shift(y.mean(axis=(0, 1, 2)), (y**2).mean(axis=(0, 1, 2)), dead) == 0.0


def monitor_moments(version_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(
        str(version_dir / MONITOR_MODEL), providers=["CPUExecutionProvider"]
    )
    return dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {"images": images.astype(np.float32)}),
        )
    )


def test_monitor_onnx_gives_the_unfolded_models_bn_input_moments(exported, reference):
    """Live moments recovered from the folded outputs (m = (Ybar - t)/s, v = (Y2bar - Ybar^2)/s^2) equal the moments
    of each BN layer's input z in the unfolded Keras model, run layer by layer in inference mode."""
    import tensorflow as tf

    _, version_dir, _ = exported
    model, heldout = reference
    images = heldout.images[:128].astype(np.float32)
    hidden = model.standardize(images)
    inputs = {}
    for conv, norm in zip(model.convs, model.norms):
        z = conv(hidden)
        inputs[norm.name] = z.numpy().astype(np.float64)
        hidden = tf.nn.relu(norm(z, training=False))
    manifest = read_manifest(version_dir)
    layers = manifest.monitor.layers
    moments = monitor_moments(version_dir, images)
    assert [layer.name for layer in layers] == ["input", *manifest.batch_normalization.folded]
    for index, layer in enumerate(layers[1:], start=1):
        mean_name, square_name = output_names(index)
        y_mean = moments[mean_name].mean(axis=0, dtype=np.float64)
        y_square = moments[square_name].mean(axis=0, dtype=np.float64)
        scale, shift = np.array(layer.scale), np.array(layer.shift)
        z = inputs[layer.name.split("+")[1]]
        # float32 means of squares over H x W, then a subtraction: rounding grows with the scale.
        assert_same_function((y_mean - shift) / scale, z.mean(axis=(0, 1, 2)), rtol=1e-4)
        assert_same_function((y_square - y_mean**2) / scale**2, z.var(axis=(0, 1, 2)), rtol=1e-3)
    # Layer 0: the raw input's moments against the training data's.
    x_mean = (moments["layer0_mean"].mean(axis=0) - np.array(layers[0].shift)) / np.array(
        layers[0].scale
    )
    assert_same_function(x_mean, images.mean(axis=(0, 1, 2)), rtol=1e-4)


def test_thresholds_are_reproducible_from_the_manifest(exported, reference):
    _, version_dir, _ = exported
    _, heldout = reference
    spec = read_manifest(version_dir).monitor
    assert spec.window == 256 and spec.clean_samples == len(heldout) and spec.margin > 1
    moments = monitor_moments(version_dir, heldout.images)
    untuned = [
        MonitoredLayer(
            layer.name, layer.scale, layer.shift, layer.mean, layer.variance, layer.epsilon
        )
        for layer in spec.layers
    ]
    recalibrated, clean = calibrate_thresholds(
        moments, untuned, spec.window, spec.clean_windows, spec.quantile, spec.margin
    )
    assert_same_function(
        [layer.threshold for layer in recalibrated], [layer.threshold for layer in spec.layers]
    )
    assert all(np.isfinite(layer.threshold) and layer.threshold > 0 for layer in spec.layers)
    # By construction at most 1 - quantile of the clean windows exceed quantile x margin.
    assert (
        np.mean(np.any(clean > np.array([layer.threshold for layer in spec.layers]), axis=1))
        <= 1 - spec.quantile
    )


def test_a_shifted_stream_raises_the_alarm_and_a_clean_one_clears_it(repository, reference):
    _, heldout = reference
    clean = heldout.images[:256].astype(np.float32)
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--monitor-sample-rate",
        "1",
        "--monitor-max-share",
        "0",
        "--metrics-port",
        "0",
        http=True,
    )
    try:
        before = drift_status(server)
        assert before["monitored"] and before["windows"] == 0 and before["window"] == 256
        assert before["layers"][0]["name"] == "input" and before["layers"][0]["score"] is None
        send(server, clean)
        status = window_after(server, 1)
        assert not status["alarm"], status
        assert all(layer["score"] <= layer["threshold"] for layer in status["layers"])
        send(server, clean * 0.5 + 4)  # contrast x 0.5, offset +4
        status = window_after(server, 2)
        assert status["alarm"] and any(layer["alarm"] for layer in status["layers"]), status
        text = scrape(server)
        assert metric(text, "bnserve_drift_alarm", model="m", version="1") == 1
        assert metric(text, "bnserve_bn_shift", model="m", version="1", layer="0") == pytest.approx(
            status["layers"][0]["score"]
        )
        send(server, clean)
        status = window_after(server, 3)
        assert not status["alarm"]
        assert metric(scrape(server), "bnserve_drift_alarm", model="m", version="1") == 0
        assert [len(layer["history"]) for layer in status["layers"]] == [3] * len(status["layers"])
        # The gRPC service and the CLI say the same.
        result = subprocess.run(
            [sys.executable, "-m", "bnserve.cli", "drift", "--url", server.url, "--model", "m"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("model m version 1: ok; 3 windows of 256 samples")
        assert "input" in result.stdout and "conv0+bn0" in result.stdout
        missing = subprocess.run(
            [sys.executable, "-m", "bnserve.cli", "drift", "--url", server.url, "--model", "x"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 2 and missing.stderr.startswith(
            "error: NOT_FOUND: model 'x' not found"
        )
    finally:
        assert server.stop() == 0
    log = "\n".join(server.log)
    assert len(re.findall(r"drift alarm on model 'm' version 1: layer", log)) == 1
    assert len(re.findall(r"drift alarm cleared on model 'm' version 1", log)) == 1


def test_the_monitor_skips_samples_beyond_its_share_of_compute_time(repository, reference):
    _, heldout = reference
    images = np.concatenate([heldout.images] * 2)[: 64 + 512].astype(np.float32)
    # Any monitor time is over a budget of 1e-9 of the model's compute time once the first batch has run.
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--monitor-sample-rate",
        "1",
        "--monitor-max-share",
        "1e-9",
        "--metrics-port",
        "0",
        http=True,
    )
    try:
        send(server, images[:64])
        wait_for(
            lambda: drift_status(server)["samples_in_window"] == 64,
            what="the first monitored batch",
        )
        send(server, images[64:])
        status = drift_status(server)
        assert (status["samples_in_window"], status["skipped"], status["max_share"]) == (
            64,
            512,
            1e-9,
        ), status
        assert (
            metric(scrape(server), "bnserve_monitor_skipped_samples_total", model="m", version="1")
            == 512
        )
        result = subprocess.run(
            [sys.executable, "-m", "bnserve.cli", "drift", "--url", server.url, "--model", "m"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "512 skipped over the budget (1e-09 of the model's compute time)" in result.stdout, (
            result.stdout
        )
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("value", ["-0.5", "nan"])
def test_a_negative_or_undefined_monitor_share_is_refused(repository, value):
    assert_user_error(
        bnserve("serve", "--repository", repository, "--monitor-max-share", value),
        f"--monitor-max-share {float(value)}: expected a fraction >= 0 (0: no limit)",
    )


def test_a_version_without_monitor_is_reported_not_monitored(repository):
    def strip_monitor(directory):
        from tests.test_parity_at_load import rehash

        (directory / MONITOR_MODEL).unlink()
        manifest = json.loads((directory / "manifest.json").read_text())
        del manifest["monitor"]
        (directory / "manifest.json").write_text(json.dumps(manifest))
        rehash(directory)

    publish_copy(repository / "m" / "1", repository, "old", 1, mutate=strip_monitor)
    server = start_server(repository, "--model-control", "none", http=True)
    try:
        send(server, np.zeros((4, 8, 8, 1), np.float32), model="old")
        status = drift_status(server, "old")
        assert status["monitored"] is False and "without a drift monitor" in status["reason"]
        assert requests.get(f"{server.http_url}/v2/models/nope/drift").status_code == 404
    finally:
        assert server.stop() == 0


def test_capture_writes_atomic_shards_within_its_budget(repository, tmp_path, reference):
    _, heldout = reference
    capture = tmp_path / "capture"
    budget = 1 << 20  # 1 MiB: ~4 shards of 256 digits (64 KiB of float32 each) ... and then some
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--capture-dir",
        str(capture),
        "--capture-rate",
        "1",
        "--capture-max-bytes",
        str(budget),
        "--metrics-port",
        "0",
        http=True,
    )
    try:
        images = np.concatenate([heldout.images] * 12).astype(
            np.float32
        )  # ~4,300 samples: ~1.1 MB of float32
        send(server, images)
        wait_for(
            lambda: (
                metric(scrape(server), "bnserve_captured_samples_total", model="m", version="1")
                >= 4096
            ),
            what="captured shards",
        )
    finally:
        assert server.stop() == 0  # the last partial shard is written at shutdown
    shards = sorted((capture / "m" / "1").iterdir())
    assert shards and all(s.suffix == ".npz" and not s.name.startswith(".") for s in shards), shards
    assert sum(s.stat().st_size for s in shards) <= budget
    kept = np.concatenate([np.load(s)["x"] for s in shards])
    assert kept.shape[1:] == (8, 8, 1) and kept.dtype == np.float32
    # The newest shards are kept: the last samples sent are the last ones in the last shard.
    np.testing.assert_array_equal(kept[-32:], images[-32:])


def test_capture_failures_are_counted_and_serving_goes_on(repository, tmp_path):
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "m").write_text(
        "a file where the model's directory should be"
    )  # every shard write fails
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--capture-dir",
        str(capture),
        "--capture-rate",
        "1",
        "--metrics-port",
        "0",
        http=True,
    )
    try:
        send(server, np.zeros((300, 8, 8, 1), np.float32))
        wait_for(
            lambda: (
                metric(scrape(server), "bnserve_capture_failures_total", model="m", version="1")
                >= 1
            ),
            what="a counted capture failure",
        )
        send(server, np.zeros((32, 8, 8, 1), np.float32))  # still served
    finally:
        assert server.stop() == 0
    assert any("capture: could not write a shard" in line for line in server.log)


def test_capture_on_a_full_disk_drops_shards_with_a_log_line(repository, tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip(
            "mounting a 64 KiB tmpfs needs root; the unwritable-directory test covers the failure path"
        )
    try:
        server = start_server(
            repository,
            "--model-control",
            "none",
            "--capture-dir",
            str(mount),
            "--capture-rate",
            "1",
            "--metrics-port",
            "0",
            http=True,
        )
        try:
            send(server, np.zeros((1024, 8, 8, 1), np.float32))  # 4 shards of 64 KiB into 64 KiB
            wait_for(
                lambda: (
                    metric(scrape(server), "bnserve_capture_failures_total", model="m", version="1")
                    >= 1
                ),
                what="a counted capture failure",
            )
            send(server, np.zeros((32, 8, 8, 1), np.float32))
        finally:
            assert server.stop() == 0
        assert not list(mount.glob("**/.shard-*")), "a partial shard was left behind"
        assert any(
            "not enough free space" in line or "No space left" in line for line in server.log
        )
    finally:
        subprocess.run(["umount", str(mount)])


def export(run_dir: Path, repository: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bnserve.cli",
            "export",
            str(run_dir),
            "--repository",
            str(repository),
            "--name",
            "d",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_adapt_re_estimates_bn_statistics_on_unlabeled_data_and_every_artifact_agrees(
    digits_run, reference, exported, tmp_path
):
    """--stats adapt: the published artifacts equal the reference model with the statistics re-estimated
    (bnserve.exporter.folded.precise_statistics) on the target inputs; the manifest says where they came from; a polling
    server under traffic moves to the adapted version without a failed request."""
    import threading

    from bnserve.exporter.folded import precise_statistics
    from bnserve.exporter.graph import layer_graph
    from bnserve.trainer.checkpoint import restore_trained_model

    run_dir, record = digits_run
    _, heldout = reference
    shifted = (heldout.images * 0.5 + 4).astype(np.float32)
    target = tmp_path / "target.npz"
    np.savez(target, x=shifted, y=heldout.labels)
    repository = tmp_path / "repo"
    publish_copy(
        exported[1], repository, "d", 1
    )  # the frozen statistics, serving the shifted traffic
    server = start_server(repository, "--poll-seconds", "0.2", http=True)
    answers, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            response = requests.post(
                f"{server.http_url}/v2/models/d/infer", json=v2_json_body(shifted[:8]), timeout=30
            )
            answers.append((response.status_code, response.json().get("model_version")))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        result = export(run_dir, repository, "--stats", f"adapt:{target}")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: answers and answers[-1][1] == "2", what="the adapted version serving")
    finally:
        stop.set()
        sender.join()
        assert server.stop() == 0
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert {"1", "2"} <= {version for _, version in answers}
    version_dir = repository / "d" / "2"
    manifest = read_manifest(version_dir)
    bn = manifest.batch_normalization
    assert (
        bn.statistics == "adapt"
        and bn.source["samples"] == len(shifted)
        and len(bn.source["sha256"]) == 64
    )
    assert bn.source["accuracy_after"] > bn.source["accuracy_before"]
    assert manifest.parity["passed"] and "adapt" in manifest.heldout_accuracy
    model, _, _ = restore_trained_model(run_dir)
    graph = layer_graph(model.functional(), "run")
    model.set_statistics(precise_statistics(graph, shifted, record.config["batch_size"]))
    expected = model(shifted, training=False).numpy()
    session = onnxruntime.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert_same_function(session.run(["logits"], {"images": shifted})[0], expected, rtol=1e-4)
    # Its drift monitor judges against the adapted statistics: the shifted data is its clean data now.
    verify = subprocess.run(
        [sys.executable, "-m", "bnserve.cli", "verify", str(version_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: np.savez(p, x=np.zeros((64, 8, 8), np.float32)),
            "x has shape [64, 8, 8], expected [N, 8, 8, 1]",
        ),
        (
            lambda p: np.savez(p, x=np.full((64, 8, 8, 1), np.nan, np.float32)),
            "0 of 64 samples are usable (64 hold NaN or infinite values, 0 lie beyond 4 x the training",
        ),
        (
            lambda p: np.savez(p, x=np.zeros((8, 8, 8, 1), np.float32)),
            "8 samples, expected at least 32",
        ),
        (
            lambda p: np.savez(p, images=np.zeros((64, 8, 8, 1), np.float32)),
            "has no array 'x' (found images)",
        ),
        (
            lambda p: np.savez(p, x=np.zeros((64, 8, 8, 1)), y=np.full(64, 11)),
            "y must be 64 integer labels in 0..9",
        ),
        (lambda p: Path(p).write_bytes(b"not a zip"), "is not a readable .npz"),
        (None, "no such file or directory"),
    ],
)
def test_adapt_refuses_bad_data_with_one_line(digits_run, tmp_path, make, message):
    run_dir, _ = digits_run
    target = tmp_path / "target.npz"
    if make is not None:
        make(target)
    result = export(run_dir, tmp_path / "repo", "--stats", f"adapt:{target}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --stats") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "repo" / "d").exists()
