"""Run in a fresh process (logical CPU devices must be configured before TensorFlow runs any op).

    python tests/distributed_check.py equivalence   # mirrored on 2 logical CPUs vs one device
    python tests/distributed_check.py moments       # per-replica batches of different samples and sizes

Prints one JSON object on the last line of stdout.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bnserve.trainer.distribute import configure_cpu_replicas  # noqa: E402

configure_cpu_replicas(2)

from bnserve.trainer.bn import ShadowBatchNormalization  # noqa: E402
from bnserve.trainer.model import ModelConfig, build_model  # noqa: E402
from bnserve.trainer.train import make_distributed_train_step, make_train_step  # noqa: E402

CONFIG = ModelConfig(
    input_shape=(8, 8, 1),
    num_classes=10,
    input_mean=(4.0,),
    input_std=(5.0,),
    widths=(6, 8),
    strides=(1, 2),
    decay=0.9,
)


def batches():
    rng = np.random.default_rng(1)
    for size in (16, 16, 15, 9):  # 15 and 9 split unevenly over 2 replicas
        yield (
            rng.uniform(0, 16, (size, 8, 8, 1)).astype(np.float32),
            rng.integers(0, 10, size).astype(np.int64),
        )


def train(strategy):
    keras.utils.set_random_seed(5)
    with strategy.scope():
        model = build_model(CONFIG)
        # Plain SGD: a rounding difference in a gradient moves a weight by lr times that difference, so the
        # comparison measures the distributed gradient and moment computation itself. (Adam would turn a
        # rounding-level difference in a near-zero gradient into a whole +-lr step.)
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    if strategy.num_replicas_in_sync == 1:
        step = make_train_step(model, optimizer)
    else:
        step = make_distributed_train_step(model, optimizer, strategy)
    losses = [float(step(images, labels)[0]) for images, labels in batches()]
    values = {v.path.split("/", 1)[1]: np.asarray(v.numpy(), np.float64) for v in model.variables}
    for layer, shadows in model.shadow_variables().items():
        for statistic, variable in shadows.items():
            values[f"{layer}/shadow_{statistic}"] = np.asarray(variable.numpy(), np.float64)
    return losses, values


def equivalence():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    single_losses, single = train(tf.distribute.OneDeviceStrategy(devices[0]))
    mirrored_losses, mirrored = train(tf.distribute.MirroredStrategy(devices))
    # Relative to each tensor's scale (tests/tolerance.py): |a - b| / max|a|.
    differences = {
        key: float(
            np.max(np.abs(single[key] - mirrored[key])) / max(np.max(np.abs(single[key])), 1e-30)
        )
        for key in single
    }
    moved = {
        key: float(np.max(np.abs(single[key] - (0.0 if "mean" in key else 1.0))))
        for key in single
        if "shadow" in key
    }
    return {
        "replicas": len(devices),
        "max_difference": differences,
        "shadow_movement": moved,
        "losses": [single_losses, mirrored_losses],
    }


def moments():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    rng = np.random.default_rng(3)
    parts = [
        rng.normal(2.0, 3.0, (5, 4, 4, 3)).astype(np.float32),
        rng.normal(-1.0, 0.5, (2, 4, 4, 3)).astype(np.float32),
    ]
    with strategy.scope():
        layer = ShadowBatchNormalization()
        layer.build((None, 4, 4, 3))
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
    )
    per_replica = strategy.run(tf.function(layer.batch_moments), args=(values,))
    local = [
        [t.numpy().tolist() for t in strategy.experimental_local_results(part)]
        for part in per_replica
    ]
    together = np.concatenate(parts).astype(np.float64)
    return {
        "replica_means": local[0],
        "replica_variances": local[1],
        "numpy_mean": together.mean(axis=(0, 1, 2)).tolist(),
        "numpy_variance": together.var(axis=(0, 1, 2)).tolist(),
    }


if __name__ == "__main__":
    print(json.dumps({"equivalence": equivalence, "moments": moments}[sys.argv[1]]()))
