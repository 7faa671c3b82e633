"""Export options that can be checked before TensorFlow and tf2onnx are imported."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnserve.core.errors import UserError
from bnserve.core.npz import check_declared_size, declared_arrays

# tf2onnx 1.17 (pinned in pyproject.toml) emits opsets up to 18; its README: "We support and test
# ONNX opset-14 to opset-18". tests/test_export.py fails if the installed tf2onnx disagrees.
SUPPORTED_OPSETS = range(14, 19)
STATISTICS = ("ema", "precise", "adapt:PATH")
MIN_ADAPT_SAMPLES = 32
MAX_SHARD_BYTES = 1 << 30
"""Arrays one adapt file or shard may declare, decompressed (a capture shard holds 256 samples)."""
"""Fewer unlabeled samples than this cannot estimate a variance per channel worth folding."""


def statistics_kind(statistics: str) -> str:
    """ "ema", "precise" or "adapt" (for "adapt:PATH")."""
    return "adapt" if statistics.startswith("adapt:") else statistics


def check_export_options(opset: int, statistics: str, tolerance: float) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise UserError(
            f"--opset {opset}: tf2onnx targets opsets {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}"
        )
    if statistics.startswith("adapt:"):
        path = Path(statistics[len("adapt:") :])
        if not path.exists():
            raise UserError(
                f"--stats {statistics!r}: no such file or directory (expected an .npz with 'x', or a "
                "capture directory of .npz shards)"
            )
    elif statistics not in STATISTICS:
        raise UserError(f"--stats {statistics!r}: expected one of {', '.join(STATISTICS)}")
    if not tolerance > 0:
        raise UserError(f"--tolerance {tolerance}: expected a positive number")


@dataclass(frozen=True)
class AdaptData:
    """Unlabeled target inputs for ``--stats adapt:PATH`` (labels only to report accuracy, never to fit)."""

    images: np.ndarray
    labels: np.ndarray | None
    source: dict
    """{"path", "sha256", "samples"} for the manifest."""
    skipped: tuple[str, ...] = ()
    """Shards of a directory that could not be used, each "NAME: reason" (logged, and in the manifest)."""


def load_adapt_data(statistics: str, input_shape: tuple[int, ...], num_classes: int) -> AdaptData:
    """``adapt:PATH``'s inputs: an .npz with ``x`` [N, H, W, C] (and optionally integer ``y``), or a directory of
    such shards (a capture directory; labels are ignored there). Refused with a UserError naming what is wrong."""
    flag = f"--stats {statistics!r}"
    path = Path(statistics[len("adapt:") :])
    shards = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not shards:
        raise UserError(f"{flag}: the directory holds no .npz shards")
    images, labels, skipped = [], [], []
    for shard in shards:
        try:
            x, y = read_adapt_shard(shard, flag, input_shape)
        except UserError as exc:
            if not path.is_dir():
                raise
            # One bad shard of a capture directory is named and left out; the others still count.
            skipped.append(f"{shard.name}: {str(exc).removeprefix(flag + ': ')}")
            continue
        images.append(x)
        labels.append(y if not path.is_dir() else None)
    if not images:
        raise UserError(f"{flag}: none of the {len(shards)} shards is usable ({skipped[0]} ...)")
    # Non-finite values and values far outside the training range are dropped sample by sample later,
    # once the training range is known (bnserve.exporter.adapt.screen_samples).
    x = np.concatenate(images).astype(np.float32)
    if len(x) < MIN_ADAPT_SAMPLES:
        raise UserError(f"{flag}: {len(x)} samples, expected at least {MIN_ADAPT_SAMPLES}")
    y = labels[0] if len(labels) == 1 else None
    if y is not None:
        if (
            y.shape != (len(x),)
            or y.dtype.kind not in "iu"
            or (len(y) and (y.min() < 0 or y.max() >= num_classes))
        ):
            raise UserError(
                f"{flag}: y must be {len(x)} integer labels in 0..{num_classes - 1}, got shape "
                f"{list(y.shape)} of {y.dtype}"
            )
        y = y.astype(np.int64)
    digest = hashlib.sha256(x.tobytes())
    if y is not None:
        digest.update(y.tobytes())
    return AdaptData(
        x,
        y,
        {"path": str(path.resolve()), "sha256": digest.hexdigest(), "samples": int(len(x))},
        tuple(skipped),
    )


def read_adapt_shard(
    shard: Path, flag: str, input_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """One .npz's ``x`` (and ``y`` when present), or a UserError naming the shard and what is wrong. What
    the archive declares (names, shapes, dtypes, bytes) is checked before anything is decompressed."""
    label = f"{flag}: {shard.name}"
    if not shard.is_file():  # a FIFO named *.npz would block the export forever
        raise UserError(f"{label} is not a regular file")
    with open(shard, "rb") as stream:
        magic = stream.read(6)
    if magic == b"\x93NUMPY":  # never loaded: an .npy header would be unchecked
        raise UserError(
            f"{label} is a single .npy array, not an .npz archive; save it with np.savez(path, x=images)"
        )
    if not magic.startswith(b"PK\x03\x04"):
        raise UserError(f"{label} is not a readable .npz (not a zip archive)")
    declared = declared_arrays(shard, label)
    if "x" not in declared:
        raise UserError(f"{label} has no array 'x' (found {', '.join(declared) or 'none'})")
    shape, dtype = declared["x"]
    if len(shape) != 4 or tuple(shape[1:]) != tuple(input_shape):
        raise UserError(
            f"{label}: x has shape {list(shape)}, expected [N, {', '.join(map(str, input_shape))}]"
        )
    if dtype.kind not in "fiu":
        raise UserError(f"{label}: x holds {dtype}, expected numbers")
    check_declared_size(declared, MAX_SHARD_BYTES, label)
    try:
        with np.load(shard, allow_pickle=False) as data:
            x = np.asarray(data["x"])
            y = np.asarray(data["y"]) if "y" in data else None
    except Exception as exc:  # a truncated member, a pickled y, bad compressed data ...
        raise UserError(f"{label} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    return x, y
