"""`bnserve export` from the command line: published output, refusals, and a SIGKILL mid-write."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.cli import assert_user_error, bnserve


def snapshot(root):
    return (
        sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*"))
        if root.exists()
        else None
    )


def test_export_prints_the_parity_table_and_the_published_path(digits_run, tmp_path):
    result = bnserve("export", digits_run[0], "--repository", tmp_path / "repo", "--name", "digits")
    assert result.returncode == 0, result.stderr
    assert f"published digits version 1 at {tmp_path / 'repo' / 'digits' / '1'}" in result.stdout
    for fragment in (
        "artifact",
        "saved_model",
        "onnxruntime",
        "onnx_reference",
        "ok",
        "converting to ONNX",
    ):
        assert fragment in result.stderr
    manifest = json.loads((tmp_path / "repo" / "digits" / "1" / "manifest.json").read_text())
    assert manifest["onnx_opset"] == 17


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--name", "a/b"], ["--name 'a/b'"]),
        (["--name", ".."], ["--name '..'"]),
        (["--name", "x..y"], ["without '..'"]),
        (["--name", "my model"], ["--name 'my model'"]),
        (["--name", "m", "--version", "0"], ["--version", "'0'", "canonical positive decimal"]),
        (["--name", "digits\n"], ["--name 'digits\\n'"]),
        (["--name", "m", "--version", "01"], ["--version", "'01'", "canonical positive decimal"]),
        (["--name", "m", "--version", " 1"], ["--version", "' 1'"]),
        (["--name", "m", "--version", "+1"], ["--version", "'+1'"]),
        (["--name", "m", "--version", "\u0661"], ["--version", "canonical positive decimal"]),
        (["--name", "m", "--opset", "99"], ["--opset 99", "opsets 14 to 18"]),
        (
            ["--name", "m", "--stats", "median"],
            ["--stats 'median'", "expected one of ema, precise, adapt:PATH"],
        ),
    ],
)
def test_bad_arguments_are_refused_and_the_repository_is_unchanged(
    digits_run, tmp_path, extra, fragments
):
    repository = tmp_path / "repo"
    (repository / "m" / "1").mkdir(parents=True)
    before = snapshot(repository)
    assert_user_error(
        bnserve("export", digits_run[0], "--repository", repository, *extra), *fragments
    )
    assert snapshot(repository) == before


def test_existing_version_is_refused(digits_run, tmp_path):
    repository = tmp_path / "repo"
    (repository / "m" / "3").mkdir(parents=True)
    (repository / "m" / "3" / "keep").write_text("v3")
    assert_user_error(
        bnserve(
            "export", digits_run[0], "--repository", repository, "--name", "m", "--version", "3"
        ),
        "--version 3",
        "already exists",
    )
    assert [p.name for p in (repository / "m" / "3").iterdir()] == ["keep"]


def test_unwritable_repository_is_refused(digits_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_user_error(
        bnserve("export", digits_run[0], "--repository", blocker / "repo", "--name", "m"),
        "--repository",
        "is not a directory",
    )
    assert blocker.read_text() == "not a directory"


def test_run_without_checkpoint_is_refused(digits_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text((digits_run[0] / "run.json").read_text())
    assert_user_error(
        bnserve("export", run_dir, "--repository", tmp_path / "repo", "--name", "m"),
        "no checkpoint",
    )
    assert not (tmp_path / "repo").exists()


def test_missing_run_is_refused(tmp_path):
    assert_user_error(
        bnserve("export", tmp_path / "nothing", "--repository", tmp_path / "repo", "--name", "m"),
        "RUN_DIR",
        "no such directory",
    )


def test_sigkill_mid_write_leaves_no_visible_version(digits_run, tmp_path):
    repository = tmp_path / "repo"
    command = [
        sys.executable,
        "-m",
        "bnserve.cli",
        "export",
        str(digits_run[0]),
        "--repository",
        str(repository),
        "--name",
        "m",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list((repository / ".staging").glob("version-*/saved_model")):
            assert process.poll() is None, "the exporter finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (repository / "m").exists() or not any((repository / "m").iterdir())
    # The next export is unaffected by the abandoned staging directory, and removes it once it is stale.
    abandoned = list((repository / ".staging").glob("version-*"))
    assert len(abandoned) == 1
    two_hours_ago = time.time() - 7200
    os.utime(abandoned[0], (two_hours_ago, two_hours_ago))
    result = bnserve("export", digits_run[0], "--repository", repository, "--name", "m")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (repository / "m").iterdir()) == ["1"]
    assert not abandoned[0].exists()
