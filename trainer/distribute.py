"""Distribution: one device, MirroredStrategy (local GPUs or N logical CPUs), MultiWorkerMirroredStrategy.

Whatever the strategy, a step sees the same global batch as one device would: the batch is split
across replicas (``split_batch``), BN moments are all-reduced over it (``ShadowBatchNormalization
.batch_moments``), each replica's loss is its share of the global mean (sum / global batch size) and
Keras all-reduces the gradients (SUM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bnserve.trainer.config import TrainConfig, tf_config


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: ``chief`` writes checkpoints, logs and run.json; the others write nothing."""

    strategy: tf.distribute.Strategy
    chief: bool
    task: str
    """e.g. "worker 1 of 2" (for messages)."""


def configure_cpu_replicas(count: int) -> None:
    """Split the CPU into ``count`` logical devices (must run before TensorFlow executes any op)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def make_cluster(config: TrainConfig) -> Cluster:
    strategy, cpu_replicas = config.strategy, config.cpu_replicas
    if strategy == "default":
        return Cluster(tf.distribute.get_strategy(), True, "single process")
    if strategy == "mirrored":
        if cpu_replicas > 1:
            configure_cpu_replicas(cpu_replicas)
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        else:
            devices = [device.name for device in tf.config.list_logical_devices("GPU")] or None
        return Cluster(tf.distribute.MirroredStrategy(devices), True, "single process")
    cluster = tf_config()  # validated by TrainConfig before TensorFlow was imported
    task = cluster["task"]
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=config.collective_timeout_seconds
    )
    workers = sum(
        len(hosts) for kind, hosts in cluster["cluster"].items() if kind in ("chief", "worker")
    )
    return Cluster(
        tf.distribute.MultiWorkerMirroredStrategy(communication_options=options),
        config.chief,
        f"{task['type']} {task['index']} of {workers}",
    )


def split_batch(strategy: tf.distribute.Strategy, array: np.ndarray):
    """Replica r of R gets rows ``np.array_split(range(N), R)[r]`` of the global batch (in order)."""
    if strategy.num_replicas_in_sync == 1:
        return array

    def rows(context):
        indices = np.array_split(np.arange(len(array)), context.num_replicas_in_sync)[
            context.replica_id_in_sync_group
        ]
        return tf.constant(array[indices])

    return strategy.experimental_distribute_values_from_function(rows)
