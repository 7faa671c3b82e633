"""What a checkpoint holds, and rebuilding a trained model from a run directory."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import keras
import tensorflow as tf

from bnserve.core.errors import UserError
from bnserve.core.records import RunRecord
from bnserve.trainer.model import ModelConfig, ShadowBNConvNet, build_model
from bnserve.trainer.rundir import CHECKPOINTS, read_run_record


def training_checkpoint(
    model: ShadowBNConvNet,
    optimizer: keras.optimizers.Optimizer | None,
    completed_epochs: tf.Variable,
) -> tf.train.Checkpoint:
    """Weights, optimizer slots and step, the EMA shadows and their step, and the completed epochs.

    Variables are keyed by their Keras path without its first part, which Keras may uniquify
    (``adam_2``) when several models live in one process; the shadows are listed explicitly because
    ``tf.train.ExponentialMovingAverage`` is not tracked by checkpoints.
    """
    parts = {
        "weights": keyed_by_path(model.variables),
        "shadows": model.shadow_variables(),
        "completed_epochs": completed_epochs,
    }
    if optimizer is not None:
        parts["optimizer"] = keyed_by_path(optimizer.variables)
    return tf.train.Checkpoint(**parts)


def keyed_by_path(variables) -> dict[str, tf.Variable]:
    keyed = {variable.path.split("/", 1)[-1]: variable.value for variable in variables}
    if len(keyed) != len(variables):
        raise RuntimeError("two variables share a checkpoint key")
    return keyed


def restore_trained_model(run_dir: Path) -> tuple[ShadowBNConvNet, RunRecord, str]:
    """Rebuild the network of a run and load its latest checkpoint: (model, run record, checkpoint path)."""
    record = read_run_record(run_dir)
    model = build_model(ModelConfig.from_json(record.model))
    latest = tf.train.latest_checkpoint(str(run_dir / CHECKPOINTS))
    if latest is None:
        raise UserError(f"{str(run_dir)!r}: the run has no checkpoint yet")
    epochs = tf.Variable(0, dtype=tf.int64)
    with readable_checkpoint(latest):
        training_checkpoint(model, None, epochs).read(
            latest
        ).expect_partial().assert_existing_objects_matched()
    return model, record, latest


@contextmanager
def readable_checkpoint(path: str):
    """A checkpoint that cannot be restored into the run's model (truncated, or written by a model of another
    architecture) is the user's file problem: one UserError naming it, not a TensorFlow traceback."""
    try:
        yield
    except (ValueError, IndexError, AssertionError, tf.errors.OpError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        # The half-restored checkpoint object warns about every unrestored value when it is collected:
        # noise after the one line that says what is wrong.
        tf.get_logger().setLevel("ERROR")
        raise UserError(
            f"checkpoint {path!r} cannot be restored into this run's model: it is truncated or was "
            f"written by another architecture ({type(exc).__name__}: {detail})"
        ) from None
