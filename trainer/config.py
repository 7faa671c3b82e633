"""Training settings, declared once and validated before TensorFlow is imported."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

from bnserve.core.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """What ``bnserve train`` was asked to do; stored in run.json so ``--resume`` can rebuild it."""

    data: str = "digits"
    """``digits``, ``synthetic:HxWxC`` or a ``PATH.npz`` with ``x`` [N,H,W,C] and ``y`` [N]."""
    epochs: int = 15
    """Total number of epochs of the run (a resumed run trains up to this number)."""
    batch_size: int = 64
    seed: int = 0
    """Seeds the weight initialisation, the train/held-out split and every epoch's order."""
    learning_rate: float = 3e-3
    """The optimizer's learning rate."""
    optimizer: str = "adam"
    """"adam" (the default) or "sgd" (plain gradient descent, w -= learning_rate * g): a rounding difference
    in a gradient moves an SGD weight by learning_rate times that difference, while Adam can turn it into
    a whole +-learning_rate step where gradients are near zero, so only SGD runs on two code paths stay
    comparable weight by weight after many steps."""
    heldout_fraction: float = 0.2
    widths: tuple[int, ...] = (32, 64, 64)
    strides: tuple[int, ...] = (1, 2, 1)
    decay: float = 0.99
    """EMA decay of the BN shadow statistics."""
    epsilon: float = 1e-3
    """BN epsilon, added to the variance."""
    warmup: bool = True
    """EMA num_updates warm-up: decay min(decay, (1 + n) / (10 + n)) at optimizer step n."""
    strategy: str = "default"
    """"default" (one device), "mirrored" (local GPUs, or --cpu-replicas logical CPUs), "multiworker" (TF_CONFIG)."""
    cpu_replicas: int = 0
    """With "mirrored": split the CPU into this many logical devices (0: use the local GPUs)."""
    collective_timeout_seconds: float = 60.0
    """With "multiworker": a collective waiting longer (a dead worker) fails the step."""

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "--epochs", f"a positive integer, got {self.epochs}"),
            (self.batch_size >= 1, "--batch-size", f"a positive integer, got {self.batch_size}"),
            (
                math.isfinite(self.learning_rate) and self.learning_rate > 0,
                "--learning-rate",
                f"a finite positive number, got {self.learning_rate}",
            ),
            (
                self.optimizer in ("adam", "sgd"),
                "--optimizer",
                f"one of adam, sgd, got {self.optimizer!r}",
            ),
            (
                0 < self.heldout_fraction < 1,
                "--heldout-fraction",
                f"a number in (0, 1), got {self.heldout_fraction}",
            ),
            (0 <= self.decay <= 1, "--decay", f"a number in [0, 1], got {self.decay}"),
            (
                math.isfinite(self.epsilon) and self.epsilon > 0,
                "--epsilon",
                f"a finite positive number, got {self.epsilon}",
            ),
            (
                len(self.widths) >= 1 and all(w >= 1 for w in self.widths),
                "--widths",
                f"one or more positive integers, got {list(self.widths)}",
            ),
            (
                len(self.strides) == len(self.widths) and all(s >= 1 for s in self.strides),
                "--strides",
                f"{len(self.widths)} positive integers (one per width), got {list(self.strides)}",
            ),
            (
                self.strategy in ("default", "mirrored", "multiworker"),
                "--strategy",
                f"one of default, mirrored, multiworker, got {self.strategy!r}",
            ),
            (
                self.cpu_replicas >= 0 and (self.cpu_replicas == 0 or self.strategy == "mirrored"),
                "--cpu-replicas",
                f"a count >= 0, and only with --strategy mirrored, got {self.cpu_replicas} with {self.strategy}",
            ),
            (
                math.isfinite(self.collective_timeout_seconds)
                and self.collective_timeout_seconds > 0,
                "--collective-timeout-seconds",
                f"a positive number, got {self.collective_timeout_seconds}",
            ),
        ]
        for ok, flag, expected in checks:
            if not ok:
                raise UserError(f"{flag}: expected {expected}")
        if self.strategy == "multiworker":
            tf_config()

    @property
    def chief(self) -> bool:
        """Whether this process writes the run directory: always, except non-chief multi-worker tasks."""
        if self.strategy != "multiworker":
            return True
        config = tf_config()
        task = config["task"]
        if "chief" in config["cluster"]:
            return task["type"] == "chief"
        return task["type"] == "worker" and int(task["index"]) == 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


def tf_config() -> dict:
    """The TF_CONFIG of a multi-worker run, checked for a cluster and this task's place in it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UserError(
            "--strategy multiworker: TF_CONFIG is not set (see README: one TF_CONFIG per worker)"
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        cluster[task["type"]][int(task["index"])]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(
            'TF_CONFIG: expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            f'"index": i}}}} ({type(exc).__name__}: {exc})'
        ) from None
    return config
