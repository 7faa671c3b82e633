"""A whole training run: accuracy, run.json, TensorBoard logs, checkpoints, resume."""

import json
from dataclasses import replace

import numpy as np
import tensorflow as tf

from bnserve.trainer.checkpoint import restore_trained_model
from bnserve.trainer.config import TrainConfig
from bnserve.trainer.data import load_dataset, split
from bnserve.trainer.train import train


def test_default_model_reaches_95_percent_in_inference_mode(digits_run):
    _, record = digits_run
    assert record.status == "completed"
    assert record.final["heldout_inference_accuracy"] >= 0.95
    assert record.final["heldout_batch_stats_accuracy"] >= 0.95


def test_run_json_records_config_dataset_and_both_modes_per_epoch(digits_run):
    run_dir, _ = digits_run
    record = json.loads((run_dir / "run.json").read_text())
    config = TrainConfig()
    assert record["config"]["epochs"] == config.epochs and record["config"]["seed"] == config.seed
    assert record["dataset"]["name"] == "digits" and record["dataset"]["image_shape"] == [8, 8, 1]
    assert record["dataset"]["train_samples"] + record["dataset"]["heldout_samples"] == 1797
    assert [e["epoch"] for e in record["epochs"]] == list(range(1, config.epochs + 1))
    for epoch in record["epochs"]:
        assert (
            0 <= epoch["heldout_inference_accuracy"] <= 1
            and 0 <= epoch["heldout_batch_stats_accuracy"] <= 1
        )
    assert record["model"]["decay"] == 0.99 and record["model"]["warmup"] is True


def test_tensorboard_logs_hold_metrics_and_shadow_statistics(digits_run):
    run_dir, _ = digits_run
    tags = set()
    for event_file in (run_dir / "logs").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "heldout_inference_accuracy", "heldout_batch_stats_accuracy"} <= tags
    assert {"bn0/shadow_mean", "bn0/shadow_variance", "bn2/shadow_variance"} <= tags


def test_restored_model_reproduces_the_reported_accuracy(digits_run):
    run_dir, record = digits_run
    model, _, checkpoint = restore_trained_model(run_dir)
    assert checkpoint.endswith(f"ckpt-{record.config['epochs']}")
    _, heldout = split(
        load_dataset("digits"), record.config["seed"], record.config["heldout_fraction"]
    )
    logits = model(heldout.images, training=False).numpy()
    accuracy = float(np.mean(np.argmax(logits, axis=1) == heldout.labels))
    assert abs(accuracy - record.final["heldout_inference_accuracy"]) < 1e-9
    # The shadows, not the initial 0/1, are what the restored model normalises with.
    assert np.max(np.abs(model.norms[0].shadow_variance.numpy() - 1.0)) > 1e-2


def checkpoint_values(run_dir):
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(("weights/", "shadows/", "optimizer/"))
    }


def test_resume_gives_the_same_weights_and_shadows_as_a_straight_run(tmp_path):
    config = replace(TrainConfig(), epochs=2, widths=(8, 16), strides=(1, 2))
    train(config, tmp_path / "straight")
    train(replace(config, epochs=1), tmp_path / "resumed")
    record = train(config, tmp_path / "resumed", resume=True)
    assert [e.epoch for e in record.epochs] == [1, 2]
    straight, resumed = (
        checkpoint_values(tmp_path / "straight"),
        checkpoint_values(tmp_path / "resumed"),
    )
    assert straight.keys() == resumed.keys()
    assert any(key.startswith("shadows/") for key in straight) and any(
        key.startswith("optimizer/") for key in straight
    )
    # The same code on the same machine with op determinism on: both runs execute identical ops on identical
    # values (the checkpoint stores every variable exactly), so they must round identically. Bitwise.
    for key, value in straight.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_the_same_run_twice_gives_bitwise_equal_checkpoints(tmp_path):
    """Every "same result" claim of this suite rests on this: one code path on one machine is deterministic."""
    config = replace(TrainConfig(), epochs=1, widths=(4, 8), strides=(1, 2))
    train(config, tmp_path / "first")
    train(config, tmp_path / "second")
    first, second = checkpoint_values(tmp_path / "first"), checkpoint_values(tmp_path / "second")
    assert first.keys() == second.keys() and len(first) > 10
    for key, value in first.items():
        assert value.tobytes() == second[key].tobytes(), key


def test_with_warmup_inference_mode_tracks_batch_statistics_mode_from_epoch_2(digits_run):
    _, record = digits_run
    for epoch in record.epochs[1:]:
        gap = abs(epoch.heldout_inference_accuracy - epoch.heldout_batch_stats_accuracy)
        assert gap <= 0.02, epoch
