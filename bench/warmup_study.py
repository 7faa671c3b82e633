"""Why the EMA warm-up matters: held-out accuracy in inference mode vs batch-statistics mode.

Trains on digits, in one run, with the same seed, data order and optimizer:
- bnserve's ShadowBatchNormalization with the num_updates warm-up (the default),
- the same without warm-up (plain decay 0.99),
- the same network with keras.layers.BatchNormalization(momentum=0.99),
and writes a Markdown table of both accuracies after epochs 1, 2, 5 and 10.

    python bench/warmup_study.py --out docs/warmup.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bnserve.trainer.config import TrainConfig  # noqa: E402
from bnserve.trainer.data import epoch_order, load_dataset, split  # noqa: E402
from bnserve.trainer.train import train  # noqa: E402

REPORTED_EPOCHS = (1, 2, 5, 10)


def keras_bn_curve(config: TrainConfig) -> list[tuple[float, float]]:
    """(inference, batch-stats) held-out accuracy per epoch for the Keras-BN twin of the default net."""
    keras.utils.set_random_seed(config.seed)
    trainset, heldout = split(load_dataset(config.data), config.seed, config.heldout_fraction)
    mean, std = trainset.images.mean(axis=(0, 1, 2)), trainset.images.std(axis=(0, 1, 2))
    layers = [
        keras.Input(trainset.image_shape),
        keras.layers.Rescaling(1 / std, offset=-mean / std),
    ]
    for width, stride in zip(config.widths, config.strides):
        layers += [
            keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=config.decay, epsilon=config.epsilon),
            keras.layers.ReLU(),
        ]
    model = keras.Sequential(
        layers + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(trainset.num_classes)]
    )
    optimizer = keras.optimizers.Adam(config.learning_rate)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        )

    def accuracy(training: bool, batch: int) -> float:
        hits = sum(
            int(
                np.sum(
                    np.argmax(model(heldout.images[s : s + batch], training=training), 1)
                    == heldout.labels[s : s + batch]
                )
            )
            for s in range(0, len(heldout), batch)
        )
        return hits / len(heldout)

    curve = []
    for epoch in range(1, config.epochs + 1):
        order = epoch_order(len(trainset), config.seed, epoch)
        for start in range(0, len(order), config.batch_size):
            indices = order[start : start + config.batch_size]
            step(trainset.images[indices], trainset.labels[indices])
        # Keras updates moving statistics in any training-mode call: evaluate inference mode first.
        curve.append((accuracy(False, 256), accuracy(True, config.batch_size)))
    return curve


def bnserve_curve(config: TrainConfig, workdir: Path, name: str) -> list[tuple[float, float]]:
    record = train(config, workdir / name, log=lambda line: None)
    return [(e.heldout_inference_accuracy, e.heldout_batch_stats_accuracy) for e in record.epochs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/warmup.md"))
    args = parser.parse_args()
    config = replace(TrainConfig(), epochs=max(REPORTED_EPOCHS))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        curves = {
            "ShadowBatchNormalization, warm-up (default)": bnserve_curve(
                config, Path(workdir), "warmup"
            ),
            "ShadowBatchNormalization, no warm-up": bnserve_curve(
                replace(config, warmup=False), Path(workdir), "plain"
            ),
            "keras.layers.BatchNormalization(momentum=0.99)": keras_bn_curve(config),
        }
    header = " | ".join(f"epoch {e}" for e in REPORTED_EPOCHS)
    lines = [
        "# EMA warm-up: held-out accuracy, inference mode / batch-statistics mode",
        "",
        f"Digits, seed {config.seed}, batch {config.batch_size}, Adam {config.learning_rate}, decay "
        f"{config.decay}, widths {list(config.widths)}; produced by `python bench/warmup_study.py` "
        f"in {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores.",
        "",
        f"| BN layer | {header} |",
        "|---|" + "---|" * len(REPORTED_EPOCHS),
    ]
    for name, curve in curves.items():
        cells = " | ".join(
            f"{100 * curve[e - 1][0]:.1f}% / {100 * curve[e - 1][1]:.1f}%" for e in REPORTED_EPOCHS
        )
        lines.append(f"| {name} | {cells} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
