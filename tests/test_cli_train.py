"""`bnserve train` from the command line: exit codes, one-line errors, nothing overwritten."""

import json

import numpy as np
import pytest

from tests.helpers.cli import assert_user_error, bnserve


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD_X = np.zeros((20, 4, 4, 1), np.float32)
GOOD_Y = np.arange(20) % 2


@pytest.mark.parametrize(
    "make_data, fragments",
    [
        (lambda d: d / "absent.npz", ["absent.npz", "no such file"]),
        (
            lambda d: (d / "junk.npz").write_text("not a zip") and d / "junk.npz",
            ["not a readable .npz"],
        ),
        (lambda d: write_npz(d / "noy.npz", x=GOOD_X), ["missing array 'y'"]),
        (
            lambda d: write_npz(d / "rank.npz", x=np.zeros((20, 4, 4)), y=GOOD_Y),
            ["'x' must have rank 4", "[20, 4, 4]"],
        ),
        (
            lambda d: write_npz(d / "yrank.npz", x=GOOD_X, y=GOOD_Y.reshape(20, 1)),
            ["'y' must have rank 1"],
        ),
        (
            lambda d: write_npz(d / "count.npz", x=GOOD_X, y=GOOD_Y[:5]),
            ["20 samples but 'y' has 5"],
        ),
        (
            lambda d: write_npz(
                d / "labels.npz",
                x=GOOD_X,
                y=np.r_[GOOD_Y[:-1], 5],
                labels=np.array(["a", "b", "c"]),
            ),
            ["y[19] = 5 is outside [0, 3)"],
        ),
        (
            lambda d: write_npz(d / "negative.npz", x=GOOD_X, y=np.r_[-1, GOOD_Y[1:]]),
            ["y[0] = -1 is outside"],
        ),
        (
            lambda d: write_npz(d / "float_y.npz", x=GOOD_X, y=GOOD_Y.astype(np.float32)),
            ["integer class ids"],
        ),
        (
            lambda d: write_npz(
                d / "nan.npz",
                x=np.where(np.arange(320).reshape(20, 4, 4, 1) == 7, np.nan, 0.0),
                y=GOOD_Y,
            ),
            ["1 NaN or infinite"],
        ),
    ],
    ids=[
        "missing",
        "malformed",
        "missing-y",
        "x-rank",
        "y-rank",
        "count",
        "label-range",
        "negative-label",
        "float-labels",
        "nan",
    ],
)
def test_bad_data_is_a_one_line_error_without_run_json(tmp_path, make_data, fragments):
    data = make_data(tmp_path)
    result = bnserve("train", "--out", tmp_path / "run", "--data", data)
    assert_user_error(result, "--data", *fragments)
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--batch-size", "0"], ["--batch-size", "positive integer, got 0"]),
        (["--epochs", "-1"], ["--epochs", "got -1"]),
        (["--decay", "1.5"], ["--decay", "[0, 1]"]),
        (["--widths", "8,x"], ["--widths", "comma-separated integers"]),
        (["--widths", "8,16", "--strides", "1"], ["--strides", "2 positive integers"]),
        (["--data", "synthetic:0x4x1"], ["synthetic:0x4x1", ">= 1"]),
        (["--data", "synthetic:abc"], ["synthetic:HxWxC"]),
        (["--strategy", "multiworker"], ["TF_CONFIG is not set"]),
        (["--cpu-replicas", "2"], ["--cpu-replicas", "only with --strategy mirrored"]),
        (["--strategy", "mirrored", "--cpu-replicas", "-1"], ["--cpu-replicas", "got -1"]),
        (["--no-such-flag"], ["unrecognized arguments"]),
        (["--learning-rate", "inf"], ["--learning-rate", "finite positive number, got inf"]),
        (["--learning-rate", "nan"], ["--learning-rate", "finite positive number, got nan"]),
        (["--epsilon", "inf"], ["--epsilon", "finite positive number, got inf"]),
        (["--decay", "nan"], ["--decay", "[0, 1], got nan"]),
        (["--optimizer", "rmsprop"], ["--optimizer", "invalid choice: 'rmsprop'"]),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, flags, fragments):
    result = bnserve("train", "--out", tmp_path / "run", *flags)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_with_an_error_and_a_failed_status(tmp_path):
    """A finite but absurd learning rate: the loss overflows, the run stops there instead of completing on NaN."""
    result = bnserve(
        "train",
        "--out",
        tmp_path / "run",
        "--learning-rate",
        "1e30",
        "--optimizer",
        "sgd",
        "--widths",
        "4",
        "--strides",
        "1",
        "--epochs",
        "3",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]  # TensorFlow's own start-up lines come first
    assert last.startswith("error: training diverged: the loss is ") and "at epoch 1" in last, last
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["epochs"] == []


def test_existing_run_directory_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    result = bnserve("train", "--out", run_dir)
    assert_user_error(result, "already exists", "--resume")
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]
    assert (run_dir / "keep.txt").read_text() == "precious"


def test_resume_without_a_run_is_an_error(tmp_path):
    assert_user_error(
        bnserve("train", "--out", tmp_path / "nothing", "--resume"), "not a training run"
    )


def test_resume_of_a_run_that_never_finished_an_epoch_is_an_error(tmp_path, digits_run):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = json.loads((digits_run[0] / "run.json").read_text())  # as written when training starts
    record.update(status="running", epochs=[])
    (run_dir / "run.json").write_text(json.dumps(record))
    assert_user_error(bnserve("train", "--out", run_dir, "--resume"), "no checkpoint")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"


def test_train_then_resume_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    first = bnserve("train", "--out", run_dir, "--epochs", "1", "--widths", "8", "--strides", "1")
    assert first.returncode == 0, first.stderr
    assert "held-out accuracy" in first.stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and len(record["epochs"]) == 1
    assert (run_dir / "checkpoints" / "checkpoint").is_file()
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))

    conflicting = bnserve("train", "--out", run_dir, "--resume", "--epochs", "2", "--seed", "9")
    assert_user_error(conflicting, "--seed", "keeps the run's settings")

    resumed = bnserve("train", "--out", run_dir, "--resume", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["status"] == "completed"


def assert_last_line_error(result, *fragments):
    """Exit 2 and the last stderr line an ``error:`` (TensorFlow may print its start-up lines before it)."""
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last


def test_unusable_checkpoints_are_one_line_errors_for_export_and_resume(tmp_path):
    import shutil

    for name, width in (("four", "4"), ("eight", "8")):
        result = bnserve(
            "train", "--out", tmp_path / name, "--epochs", "1", "--widths", width, "--strides", "1"
        )
        assert result.returncode == 0, result.stderr[-2000:]
    foreign = tmp_path / "foreign"  # the run of width 8 with the checkpoints of width 4
    shutil.copytree(tmp_path / "eight", foreign)
    shutil.rmtree(foreign / "checkpoints")
    shutil.copytree(tmp_path / "four" / "checkpoints", foreign / "checkpoints")
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "four", truncated)
    data = next((truncated / "checkpoints").glob("ckpt-1.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    for run, cause in (
        (foreign, "incompatible tensor with shape (4,)"),
        (truncated, "Read less bytes than requested"),
    ):
        for command in (
            ["export", run, "--repository", tmp_path / "repo", "--name", "x"],
            ["train", "--out", run, "--resume", "--epochs", "2"],
        ):
            assert_last_line_error(
                bnserve(*command),
                f"checkpoint '{run / 'checkpoints' / 'ckpt-1'}' cannot be "
                "restored into this run's model: it is truncated or was written by another "
                "architecture",
                cause,
            )
    assert not (tmp_path / "repo" / "x").exists()


def test_a_synthetic_data_set_too_large_to_generate_is_refused(tmp_path):
    result = bnserve("train", "--out", tmp_path / "run", "--data", "synthetic:100000x100000x3")
    assert_user_error(
        result, "--data synthetic:100000x100000x3", "GiB to generate", "use smaller images"
    )
    assert not (tmp_path / "run").exists()
