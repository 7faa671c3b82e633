"""The training run's record, RUN_DIR/run.json: the one definition the trainer writes and the exporter, the CLI
and the tests read (format RUN_FORMAT).

    format        "bnserve.run/1"
    status        "running", "completed" or "failed"
    config        what `bnserve train` was asked (bnserve.trainer.config.TrainConfig.to_json(): seed, data, epochs ...)
    model         the network's shape and BN settings (bnserve.trainer.model.ModelConfig.to_json())
    dataset       DatasetInfo: name, spec, image shape, classes, sample counts, sha256 of the bytes
    distribution  {"strategy", "replicas", "task"}
    epochs        one EpochMetrics per completed epoch
    checkpoint    the latest checkpoint's file name (absent before the first epoch)
    final         the last epoch's metrics and the training time (completed runs)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from bnserve.core.errors import UserError

RUN_FORMAT = "bnserve.run/1"
STATUSES = ("running", "completed", "failed")


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float
    train_accuracy: float
    heldout_inference_accuracy: float
    """held-out accuracy in inference mode (the shadow statistics)"""
    heldout_batch_stats_accuracy: float
    """held-out accuracy normalised with each batch's own moments"""
    optimizer_steps: int
    seconds: float


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    spec: str
    """what --data said: digits, synthetic:HxWxC or a path"""
    image_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    samples: int
    train_samples: int
    heldout_samples: int
    sha256: str


@dataclass(frozen=True)
class RunRecord:
    config: dict
    model: dict
    dataset: DatasetInfo
    distribution: dict = field(default_factory=dict)
    epochs: tuple[EpochMetrics, ...] = ()
    status: str = "running"
    checkpoint: str | None = None
    final: dict | None = None
    format: str = RUN_FORMAT

    def __post_init__(self):
        # config and model are stored as JSON holds them (tuples become lists), so a record read back from
        # run.json equals the one written.
        for key in ("config", "model", "distribution"):
            object.__setattr__(self, key, json.loads(json.dumps(getattr(self, key))))

    def to_json(self) -> dict:
        data = {
            "format": self.format,
            "status": self.status,
            "config": self.config,
            "model": self.model,
            "dataset": asdict(self.dataset)
            | {
                "image_shape": list(self.dataset.image_shape),
                "class_names": list(self.dataset.class_names),
            },
            "distribution": self.distribution,
            "epochs": [asdict(e) for e in self.epochs],
        }
        if self.checkpoint is not None:
            data["checkpoint"] = self.checkpoint
        if self.final is not None:
            data["final"] = self.final
        return data

    @classmethod
    def from_json(cls, data, where: str = "run.json") -> "RunRecord":
        """Parse and check a run record; an old or foreign one gets a UserError naming the field."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != RUN_FORMAT:
            raise UserError(f"{where}: format {data.get('format')!r}, expected {RUN_FORMAT!r}")
        for key, kind in (
            ("config", dict),
            ("model", dict),
            ("dataset", dict),
            ("epochs", list),
            ("status", str),
        ):
            if not isinstance(data.get(key), kind):
                raise UserError(f"{where}: field {key!r} is missing or not a JSON {kind.__name__}")
        if data["status"] not in STATUSES:
            raise UserError(
                f"{where}: field 'status' is {data['status']!r}, expected one of {', '.join(STATUSES)}"
            )
        try:
            dataset = DatasetInfo(
                **{
                    **data["dataset"],
                    "image_shape": tuple(data["dataset"]["image_shape"]),
                    "class_names": tuple(data["dataset"]["class_names"]),
                }
            )
        except (TypeError, KeyError) as exc:
            raise UserError(f"{where}: field 'dataset': {exc}") from None
        epochs = []
        for position, epoch in enumerate(data["epochs"]):
            try:
                epochs.append(EpochMetrics(**epoch))
            except TypeError as exc:
                raise UserError(f"{where}: field 'epochs[{position}]': {exc}") from None
        return cls(
            data["config"],
            data["model"],
            dataset,
            data.get("distribution", {}),
            tuple(epochs),
            data["status"],
            data.get("checkpoint"),
            data.get("final"),
        )
