"""The training loop: a tf.function step, per-epoch evaluation in both BN modes, checkpoints, logs."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from bnserve.core.errors import BnserveError, UserError
from bnserve.core.records import DatasetInfo, EpochMetrics, RunRecord
from bnserve.trainer.checkpoint import readable_checkpoint, training_checkpoint
from bnserve.trainer.config import TrainConfig
from bnserve.trainer.data import Dataset, epoch_order, load_dataset, split
from bnserve.trainer.distribute import Cluster, make_cluster, split_batch
from bnserve.trainer.model import ModelConfig, ShadowBNConvNet, build_model, make_predict
from bnserve.trainer.rundir import (
    CHECKPOINTS,
    LOGS,
    check_new_run_dir,
    read_run_record,
    write_run_record,
)

INFERENCE_BATCH = 256


class WorkerLost(BnserveError):
    """A multi-worker run lost a peer; the chief stops with this instead of hanging."""


def optimize_then_update_shadows(
    model: ShadowBNConvNet, optimizer: keras.optimizers.Optimizer, gradients
) -> None:
    """The optimizer step, then, under a control dependency on it, the EMA shadow update that consumes
    this step's recorded batch moments with n = the optimizer steps now completed (the seed's
    ``with tf.control_dependencies([train_op]): ema.apply(...)``)."""
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    completed_steps = optimizer.iterations.value
    with tf.control_dependencies([completed_steps.read_value()]):
        model.update_shadow_statistics(completed_steps.read_value())


def make_train_step(model: ShadowBNConvNet, optimizer: keras.optimizers.Optimizer) -> Callable:
    """One optimizer step on a batch, then the EMA shadow update that consumes this step's moments.

    Returns ``step(images, labels) -> (mean loss, logits)``.
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    signature = [
        tf.TensorSpec([None, *model.config.input_shape], tf.float32),
        tf.TensorSpec([None], tf.int64),
    ]

    @tf.function(input_signature=signature)
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)  # records this batch's moments in every BN layer
            loss = loss_fn(labels, logits)
        optimize_then_update_shadows(
            model, optimizer, tape.gradient(loss, model.trainable_variables)
        )
        return loss, logits

    return step


def make_distributed_train_step(
    model: ShadowBNConvNet, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy
) -> Callable:
    """``make_train_step`` across replicas: ``step(images, labels)`` takes the global batch as NumPy.

    Replica r computes loss_r = sum of its examples' losses / global batch size, so the all-reduced
    (SUM) gradients equal the global batch's mean gradient; BN moments are all-reduced inside the layers.
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def replica_step(images, labels, global_batch):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_sum(loss_fn(labels, logits)) / global_batch
        optimize_then_update_shadows(
            model, optimizer, tape.gradient(loss, model.trainable_variables)
        )
        return loss, logits

    @tf.function
    def distributed(images, labels, global_batch):
        losses, logits = strategy.run(replica_step, args=(images, labels, global_batch))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None), strategy.gather(
            logits, axis=0
        )

    def step(images: np.ndarray, labels: np.ndarray):
        return distributed(
            split_batch(strategy, images),
            split_batch(strategy, labels),
            tf.constant(len(images), tf.float32),
        )

    return step


def accuracy(predict: Callable, data: Dataset, batch_size: int) -> float:
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = predict(data.images[start : start + batch_size]).numpy()
        correct += int(np.sum(np.argmax(logits, axis=1) == data.labels[start : start + batch_size]))
    return correct / len(data)


@dataclass
class Session:
    """Live state of a run: model, optimizer, data, checkpointing, logging."""

    config: TrainConfig
    run_dir: Path
    cluster: Cluster
    train: Dataset
    heldout: Dataset
    model: ShadowBNConvNet
    optimizer: keras.optimizers.Optimizer
    completed_epochs: tf.Variable
    manager: tf.train.CheckpointManager
    record: RunRecord
    """Replaced (dataclasses.replace), never mutated: each write_run_record sees one consistent record."""


def model_config_for(config: TrainConfig, train: Dataset) -> ModelConfig:
    axes = (0, 1, 2)
    std = np.maximum(train.images.std(axis=axes), 1e-6)
    return ModelConfig(
        input_shape=train.image_shape,
        num_classes=train.num_classes,
        input_mean=tuple(float(v) for v in train.images.mean(axis=axes)),
        input_std=tuple(float(v) for v in std),
        widths=config.widths,
        strides=config.strides,
        decay=config.decay,
        epsilon=config.epsilon,
        warmup=config.warmup,
    )


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate)
    return keras.optimizers.Adam(config.learning_rate)


def open_session(
    config: TrainConfig, run_dir: Path, resume: bool, dataset: Dataset | None
) -> Session:
    """Validate data and run directory, build model and optimizer, restore the checkpoint on resume."""
    dataset = dataset if dataset is not None else load_dataset(config.data)
    train, heldout = split(dataset, config.seed, config.heldout_fraction)
    cluster = make_cluster(config)
    if resume:
        previous = read_run_record(run_dir)
        model_config = ModelConfig.from_json(previous.model)
    else:
        if cluster.chief:
            check_new_run_dir(run_dir)
        model_config = model_config_for(config, train)
        previous = None
    record = RunRecord(
        config=config.to_json(),
        model=model_config.to_json(),
        dataset=DatasetInfo(
            dataset.name,
            config.data,
            tuple(dataset.image_shape),
            dataset.num_classes,
            tuple(dataset.class_names),
            len(dataset),
            len(train),
            len(heldout),
            dataset.fingerprint(),
        ),
        epochs=previous.epochs if previous else (),
        checkpoint=previous.checkpoint if previous else None,
        distribution={
            "strategy": config.strategy,
            "replicas": cluster.strategy.num_replicas_in_sync,
            "task": cluster.task,
        },
    )
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    with cluster.strategy.scope():
        model = build_model(model_config)
        optimizer = make_optimizer(config)
        optimizer.build(model.trainable_variables)
        completed_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
    checkpoint = training_checkpoint(model, optimizer, completed_epochs)
    # Every worker saves (saving may take part in collectives); only the chief's files are kept.
    checkpoint_dir = (
        run_dir / CHECKPOINTS if cluster.chief else Path(tempfile.mkdtemp(prefix="bnserve-worker-"))
    )
    manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir), max_to_keep=3)
    if resume:
        if manager.latest_checkpoint is None:
            raise UserError(f"--resume: {str(run_dir)!r} has no checkpoint to resume from")
        with readable_checkpoint(manager.latest_checkpoint):
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        record = replace(record, epochs=record.epochs[: int(completed_epochs.numpy())])
    return Session(
        config,
        run_dir,
        cluster,
        train,
        heldout,
        model,
        optimizer,
        completed_epochs,
        manager,
        record,
    )


def write_summaries(writer, session: Session, epoch: int, metrics: EpochMetrics) -> None:
    with writer.as_default(step=epoch):
        for key in (
            "loss",
            "train_accuracy",
            "heldout_inference_accuracy",
            "heldout_batch_stats_accuracy",
        ):
            tf.summary.scalar(key, getattr(metrics, key))
        for layer, shadows in session.model.shadow_variables().items():
            for statistic, variable in shadows.items():
                tf.summary.scalar(f"{layer}/shadow_{statistic}", tf.reduce_mean(variable))
                tf.summary.histogram(f"{layer}/shadow_{statistic}", variable)
    writer.flush()


class TrainingDiverged(UserError):
    """The loss turned NaN or infinite: the settings (learning rate, epsilon, data) cannot train this model."""


def run_epoch(session: Session, step: Callable, epoch: int) -> tuple[float, float]:
    """Train one epoch in the order fixed by (seed, epoch); returns (mean loss, accuracy).

    Raises ``TrainingDiverged`` at the first step whose loss is not finite: every later step would only
    spread NaN through the weights and shadows.
    """
    order = epoch_order(len(session.train), session.config.seed, epoch)
    batch = session.config.batch_size
    losses, correct = [], 0
    with tqdm(
        range(0, len(order), batch), desc=f"epoch {epoch}", unit="step", leave=False, disable=None
    ) as bar:
        for start in bar:
            indices = order[start : start + batch]
            images, labels = session.train.images[indices], session.train.labels[indices]
            loss, logits = step(images, labels)
            if not np.isfinite(float(loss)):
                raise TrainingDiverged(
                    f"training diverged: the loss is {float(loss)} at epoch {epoch}, step "
                    f"{start // batch + 1} (try a smaller --learning-rate or check the data)"
                )
            losses.append(float(loss) * len(indices))
            correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == labels))
            bar.set_postfix(
                loss=f"{float(loss):.4f}",
                accuracy=f"{correct / min(start + batch, len(order)):.3f}",
            )
    return sum(losses) / len(order), correct / len(order)


def train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    dataset: Dataset | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) a run up to ``config.epochs`` epochs; returns the final run record.

    ``dataset`` is ``load_dataset(config.data)`` when the caller has already loaded it.
    """
    session = open_session(config, run_dir, resume, dataset)
    strategy, chief = session.cluster.strategy, session.cluster.chief
    if config.strategy == "default":
        step = make_train_step(session.model, session.optimizer)
    else:
        step = make_distributed_train_step(session.model, session.optimizer, strategy)
    predict_inference = make_predict(session.model, use_batch_statistics=False)
    predict_batch_stats = make_predict(session.model, use_batch_statistics=True)
    writer = (
        tf.summary.create_file_writer(str(run_dir / LOGS))
        if chief
        else tf.summary.create_noop_writer()
    )
    if chief:
        write_run_record(run_dir, session.record)
    else:
        log = lambda line: None  # noqa: E731  (the chief reports)
    first_epoch = int(session.completed_epochs.numpy()) + 1
    for epoch in range(first_epoch, config.epochs + 1):
        started = time.perf_counter()
        try:
            loss, train_accuracy = run_epoch(session, step, epoch)
        except TrainingDiverged:
            session.record = replace(session.record, status="failed")
            if chief:
                write_run_record(run_dir, session.record)
            raise
        except (
            tf.errors.DeadlineExceededError,
            tf.errors.UnavailableError,
            tf.errors.CancelledError,
            tf.errors.InternalError,
        ) as exc:
            if config.strategy != "multiworker":
                raise
            raise WorkerLost(
                f"{session.cluster.task}: training stopped in epoch {epoch}: a worker stopped answering "
                f"(collectives time out after {config.collective_timeout_seconds:g} s): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            ) from None
        metrics = EpochMetrics(
            epoch=epoch,
            loss=loss,
            train_accuracy=train_accuracy,
            heldout_inference_accuracy=accuracy(
                predict_inference, session.heldout, INFERENCE_BATCH
            ),
            heldout_batch_stats_accuracy=accuracy(
                predict_batch_stats, session.heldout, config.batch_size
            ),
            optimizer_steps=int(session.optimizer.iterations.numpy()),
            seconds=time.perf_counter() - started,
        )
        session.completed_epochs.assign(epoch)
        checkpoint_path = session.manager.save(checkpoint_number=epoch)
        write_summaries(writer, session, epoch, metrics)
        session.record = replace(
            session.record,
            epochs=(*session.record.epochs, metrics),
            checkpoint=Path(checkpoint_path).name,
        )
        if chief:
            write_run_record(run_dir, session.record)
        log(
            f"epoch {epoch}/{config.epochs}: loss {loss:.4f}, train acc {train_accuracy:.4f}, held-out acc "
            f"{metrics.heldout_inference_accuracy:.4f} (inference, shadow stats) / "
            f"{metrics.heldout_batch_stats_accuracy:.4f} (batch stats), {metrics.seconds:.1f} s"
        )
    epochs = session.record.epochs
    final = {
        key: getattr(epochs[-1], key)
        for key in (
            "epoch",
            "loss",
            "train_accuracy",
            "heldout_inference_accuracy",
            "heldout_batch_stats_accuracy",
            "optimizer_steps",
        )
    }
    session.record = replace(
        session.record,
        status="completed",
        final=final | {"training_seconds": sum(e.seconds for e in epochs)} if epochs else {},
    )
    if chief:
        write_run_record(run_dir, session.record)
    else:
        shutil.rmtree(session.manager.directory, ignore_errors=True)
    return session.record
