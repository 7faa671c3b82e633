"""The layout of a training run directory and its ``run.json`` record.

RUN_DIR/run.json         config, data set, per-epoch and final metrics, status
RUN_DIR/checkpoints/     tf.train.CheckpointManager files (weights, optimizer, EMA shadows, epoch)
RUN_DIR/logs/            TensorBoard event files
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bnserve.core.errors import UserError
from bnserve.core.records import RunRecord

RUN_RECORD = "run.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"


def write_run_record(run_dir: Path, record: RunRecord) -> None:
    """Replace run.json atomically: a reader sees the old record or the new one, never half of one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=run_dir, prefix=".run.", suffix=".json")
    with os.fdopen(handle, "w") as stream:
        json.dump(record.to_json(), stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, run_dir / RUN_RECORD)


def read_run_record(run_dir: Path) -> RunRecord:
    path = run_dir / RUN_RECORD
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} is not a training run: no {RUN_RECORD}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{str(path)!r}: unreadable run record ({exc})") from None
    return RunRecord.from_json(data, repr(str(path)))


def check_new_run_dir(run_dir: Path) -> None:
    """A new run never lands in a non-empty directory: nothing is silently overwritten."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(
            f"--out {str(run_dir)!r}: already exists and is not an empty directory;"
            " pass --resume to continue that run or choose a new --out"
        )


def check_has_checkpoint(run_dir: Path) -> None:
    """A run with a completed epoch has CheckpointManager's index file (checked without TensorFlow)."""
    read_run_record(run_dir)
    if not (run_dir / CHECKPOINTS / "checkpoint").is_file():
        raise UserError(f"{str(run_dir)!r}: the run has no checkpoint yet (no completed epoch)")
