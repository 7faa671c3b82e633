"""What an export folds: a trainer run or a user's own Keras file, read into one ModelSource."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnserve.core.errors import UserError
from bnserve.core.npz import check_declared_size, declared_arrays

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
MAX_DATA_BYTES = 4 << 30
"""Arrays a --data file may declare, decompressed."""
MAX_CONFIG_BYTES = 64 << 20
"""A model file's architecture JSON (config.json in a .keras archive, model_config in HDF5)."""
OWN_LAYER_PREFIX = "bnserve>"
"""The registered names of bnserve's own serializable layers."""


@dataclass(frozen=True)
class ExportData:
    """``--data D.npz``: inputs ``x`` [N, H, W, C], optional integer labels ``y`` and class ``labels``."""

    images: np.ndarray
    labels: np.ndarray | None
    class_labels: tuple[str, ...] | None
    path: str
    sha256: str


@dataclass
class ModelSource:
    """Everything an export needs besides the request: the Keras model and the data around it."""

    model: object
    """A functional keras.Model (a trainer run's ShadowBNConvNet.functional(), or the user's model)."""
    inference: object
    """images -> the original model's output in inference mode (the certificate checks its reference
    against this)."""
    heldout: np.ndarray | None
    """Inputs the certificate, golden samples and drift calibration use (None: random inputs only)."""
    heldout_labels: np.ndarray | None
    precise_images: np.ndarray | None
    """Inputs --stats precise re-estimates the statistics on."""
    input_range: tuple[float, float]
    class_labels: tuple[str, ...]
    input_values: str
    batch_size: int
    decay: float | None
    warmup: bool
    ema_updates: int | None
    manifest_source: dict = field(default_factory=dict)
    data_flag: str = "--data"
    """What to point a user at when data is missing (a run always has its data)."""


def is_keras_file(path: Path) -> bool:
    return path.suffix.lower() in KERAS_SUFFIXES


def load_export_data(path: Path, input_shape: tuple[int, ...]) -> ExportData:
    """Read --data, checking what the archive declares before anything is decompressed."""
    label = f"--data {str(path)!r}"
    if not path.is_file():
        raise UserError(f"{label}: no such file (expected an .npz with x [N, H, W, C], optional y)")
    declared = declared_arrays(path, label)
    if "x" not in declared:
        raise UserError(f"{label} has no array 'x' (found {', '.join(declared) or 'none'})")
    shape, dtype = declared["x"]
    if len(shape) != 4 or tuple(shape[1:]) != tuple(input_shape) or shape[0] < 1:
        raise UserError(
            f"{label}: x has shape {list(shape)}, expected [N, {', '.join(map(str, input_shape))}] "
            "(the model's input, channels last)"
        )
    if dtype.kind not in "fiu":
        raise UserError(f"{label}: x holds {dtype}, expected numbers")
    check_declared_size(declared, MAX_DATA_BYTES, label)
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"], np.float32)
            y = np.asarray(data["y"]) if "y" in data else None
            labels = tuple(str(v) for v in data["labels"]) if "labels" in data else None
    except Exception as exc:
        raise UserError(f"{label} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(x).all():
        raise UserError(f"{label}: x holds NaN or infinite values")
    if y is not None:
        if y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise UserError(
                f"{label}: y must be {len(x)} integer labels, got shape {list(y.shape)} of {y.dtype}"
            )
        y = y.astype(np.int64)
    digest = hashlib.sha256(x.tobytes())
    if y is not None:
        digest.update(y.tobytes())
    return ExportData(x, y, labels, str(path.resolve()), digest.hexdigest())


def parse_input_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--input-range {text!r}: expected LO,HI, e.g. 0,1") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise UserError(f"--input-range {text!r}: expected finite LO < HI")
    return low, high


def model_config(path: Path, label: str) -> dict:
    """The architecture a model file declares, read as JSON without deserializing anything, so that no
    layer's code runs before the file is judged."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    raise UserError(f"{label} holds no model (a zip archive without config.json)")
                if archive.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                    raise UserError(f"{label}: config.json is larger than {MAX_CONFIG_BYTES} bytes")
                return json.loads(archive.read("config.json"))
        import h5py

        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as archive:
                raw = archive.attrs.get("model_config")
                if raw is None:
                    raise UserError(
                        f"{label} holds no model (an HDF5 file without a model_config: weights "
                        "alone? save the model with model.save)"
                    )
                raw = raw.decode() if isinstance(raw, bytes) else str(raw)
                if len(raw) > MAX_CONFIG_BYTES:
                    raise UserError(
                        f"{label}: model_config is larger than {MAX_CONFIG_BYTES} bytes"
                    )
                return json.loads(raw)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(
            f"{label} is not a readable Keras model ({type(exc).__name__}: {exc})"
        ) from None
    raise UserError(
        f"{label} is not a Keras model file: neither a .keras zip archive nor an HDF5 .h5 file"
    )


def declared_layers(config) -> list[tuple[str, str, str]]:
    """(name, class, module) of every layer a model config declares, nested models included."""
    found = []
    if isinstance(config, dict):
        kind = config.get("class_name")
        if (
            isinstance(kind, str)
            and not kind.startswith("__")  # __keras_tensor__ and the like: references, not layers
            and isinstance(config.get("config"), dict)
            and "name" in config["config"]
        ):
            registered = config.get("registered_name") or ""
            module = config.get("module") or ""
            if registered.startswith(OWN_LAYER_PREFIX):
                module = "bnserve"
            elif registered and not module.startswith("keras"):
                # Built-in classes carry no registered name; a registered one from outside Keras is custom.
                module = module or (registered.partition(">")[0] if ">" in registered else "custom")
            found.append((str(config["config"]["name"]), kind, module))
        for value in config.values():
            found.extend(declared_layers(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(declared_layers(value))
    return found


def check_declared_layers(config: dict, label: str) -> None:
    """Lambda layers and classes from outside Keras and bnserve are refused by name, before Keras would
    run or refuse them with a message that names neither."""
    from bnserve.exporter.folded import REFUSED_LAYERS

    for name, kind, module in declared_layers(config):
        if kind in REFUSED_LAYERS:
            raise UserError(
                f"{label}: layer {name!r} is a {kind}: {REFUSED_LAYERS[kind]}; replace it with "
                "built-in Keras layers"
            )
        # HDF5 configs name no module: there Keras's own "Unknown layer" refusal names the class.
        if module and not module.startswith("keras") and module != "bnserve":
            raise UserError(
                f"{label}: layer {name!r} is a custom layer ({module}.{kind}) that bnserve does not "
                "know how to fold or certify; express it with built-in Keras layers"
            )


def load_keras_model(path: Path):
    """The user's model file, or one UserError naming the file and why it cannot be read."""
    import keras

    from bnserve.trainer.bn import ShadowBatchNormalization

    label = f"MODEL {str(path)!r}"
    if not path.is_file():
        raise UserError(f"{label}: no such file")
    check_declared_layers(model_config(path, label), label)
    try:
        model = keras.saving.load_model(
            str(path),
            compile=False,
            custom_objects={"ShadowBatchNormalization": ShadowBatchNormalization},
        )
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        if "Could not locate class" in str(exc) or "Unknown layer" in str(exc):
            raise UserError(
                f"{label} uses a layer class Keras cannot find ({detail}); bnserve folds built-in "
                "Keras layers and bnserve.layers.ShadowBatchNormalization"
            ) from None
        raise UserError(
            f"{label} is not a readable Keras model ({type(exc).__name__}: {detail or 'no detail'})"
        ) from None
    if not isinstance(model, keras.Model):
        raise UserError(f"{label} holds no Keras model ({type(model).__name__})")
    return model


def keras_source(
    path: Path, data_path: Path | None, input_range: tuple[float, float] | None, batch_size: int
) -> ModelSource:
    """A user's own Keras 3 model with one channels-last image input and one output."""
    import keras

    from bnserve.exporter.folded import batch_norm_layers
    from bnserve.exporter.graph import layer_graph
    from bnserve.trainer.bn import ShadowBatchNormalization

    model = load_keras_model(path)
    where = f"MODEL {str(path)!r}"
    graph = layer_graph(model, where)
    shape = graph.input_shape
    if len(shape) != 4 or any(not isinstance(d, int) for d in shape[1:]):
        raise UserError(
            f"{where}: the input has shape {list(shape)}; bnserve serves images [N, H, W, C] with "
            "H, W and C fixed (give keras.Input a full shape)"
        )
    data = load_export_data(data_path, shape[1:]) if data_path is not None else None
    if data is None and input_range is None:
        raise UserError(
            f"{where}: without --data D.npz the certificate and golden samples use random inputs, "
            "so --input-range LO,HI (the raw values the model takes) is required"
        )
    output = keras.ops.convert_to_numpy
    classes = int(model.outputs[0].shape[-1])
    if data is not None and data.labels is not None:
        if data.labels.min() < 0 or data.labels.max() >= classes:
            raise UserError(
                f"--data {data.path!r}: y must be labels in 0..{classes - 1} (the model has "
                f"{classes} outputs)"
            )
    labels = tuple(str(k) for k in range(classes))
    if data is not None and data.class_labels is not None:
        if len(data.class_labels) != classes:
            raise UserError(
                f"--data {data.path!r}: labels names {len(data.class_labels)} classes, the model has "
                f"{classes} outputs"
            )
        labels = data.class_labels
    observed = (
        (float(data.images.min()), float(data.images.max())) if data is not None else input_range
    )
    bn = list(batch_norm_layers(graph).values())
    shadow = [layer for layer in bn if isinstance(layer, ShadowBatchNormalization)]
    decay = float(shadow[0].decay) if shadow else (float(bn[0].momentum) if bn else None)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ModelSource(
        model=model,
        inference=lambda images: output(model(images, training=False)),
        heldout=None if data is None else data.images,
        heldout_labels=None if data is None else data.labels,
        precise_images=None if data is None else data.images,
        input_range=input_range or observed,
        class_labels=labels,
        input_values="raw values as the model takes them; its preprocessing is in the graph",
        batch_size=batch_size,
        decay=decay,
        warmup=bool(shadow) and any(layer.warmup for layer in shadow),
        ema_updates=None,
        manifest_source={"model_file": str(path.resolve()), "model_sha256": digest}
        | ({"data": data.path, "data_sha256": data.sha256} if data is not None else {}),
    )


def run_source(run_dir: Path) -> ModelSource:
    """A run of ``bnserve train``: its latest checkpoint, seen through ShadowBNConvNet.functional()."""
    from bnserve.trainer.checkpoint import restore_trained_model
    from bnserve.trainer.data import load_dataset, split

    model, record, checkpoint = restore_trained_model(run_dir)
    config = record.config
    train, heldout = split(load_dataset(config["data"]), config["seed"], config["heldout_fraction"])
    network = model.config
    return ModelSource(
        model=model.functional(),
        inference=lambda images: model(images, training=False).numpy(),
        heldout=heldout.images.astype(np.float32),
        heldout_labels=heldout.labels,
        precise_images=train.images,
        input_range=(float(train.images.min()), float(train.images.max())),
        class_labels=record.dataset.class_names,
        input_values=f"raw values as stored in the data set {record.dataset.name!r}; "
        "normalisation is in the graph",
        batch_size=config["batch_size"],
        decay=network.decay,
        warmup=network.warmup,
        ema_updates=int(model.shadow_step.numpy()),
        manifest_source={
            "run_dir": str(run_dir.resolve()),
            "checkpoint": Path(checkpoint).name,
            "dataset_sha256": record.dataset.sha256,
        },
    )
