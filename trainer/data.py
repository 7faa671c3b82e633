"""Datasets: the embedded digits, ``PATH.npz`` files and ``synthetic:HxWxC``.

Images are NHWC float32 holding the raw stored values (digits: pixel intensities 0..16); any
normalisation belongs to the model. Only NumPy is imported here.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from bnserve.core.errors import UserError

SYNTHETIC_PATTERN = re.compile(r"synthetic:(\d+)x(\d+)x(\d+)")
MAX_SYNTHETIC_BYTES = 8 << 30
SYNTHETIC_SAMPLES = 2048
SYNTHETIC_CLASSES = 10
# The synthetic data set is a fixed function of its shape, independent of --seed, so that
# benchmarks trained with different seeds see the same data.
SYNTHETIC_DATA_SEED = 20261127


@dataclass(frozen=True)
class Dataset:
    """A labelled image set: ``images`` float32 [N, H, W, C], ``labels`` int64 [N] in [0, K)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray) -> "Dataset":
        return Dataset(self.name, self.images[indices], self.labels[indices], self.class_names)

    def fingerprint(self) -> str:
        """sha256 over the image and label bytes, to tell data sets apart in run.json."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()


def load_dataset(spec: str) -> Dataset:
    """Load ``digits``, ``synthetic:HxWxC`` or a ``PATH.npz`` with arrays ``x`` and ``y``."""
    if spec == "digits":
        with resources.as_file(resources.files("bnserve.trainer") / "data" / "digits.npz") as path:
            return load_npz(path, name="digits")
    match = SYNTHETIC_PATTERN.fullmatch(spec)
    if match:
        return synthetic_dataset(*(int(g) for g in match.groups()))
    if spec.startswith("synthetic"):
        raise UserError(
            f"--data {spec!r}: expected synthetic:HxWxC with positive integers, e.g. synthetic:32x32x3"
        )
    return load_npz(Path(spec), name=Path(spec).name)


def load_npz(path: Path, name: str) -> Dataset:
    """Read and validate ``x`` [N,H,W,C] numbers, ``y`` [N] integers, optional ``labels`` [K] names.

    K is ``len(labels)`` when given, else ``max(y) + 1``.
    """
    if not path.is_file():
        raise UserError(f"--data {str(path)!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"--data {str(path)!r}: not a readable .npz archive ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise UserError(
                f"--data {str(path)!r}: missing array {key!r} (found: {sorted(arrays) or 'none'})"
            )
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 4:
        raise UserError(
            f"--data {str(path)!r}: array 'x' must have rank 4 [N,H,W,C], got shape {list(x.shape)}"
        )
    if y.ndim != 1:
        raise UserError(
            f"--data {str(path)!r}: array 'y' must have rank 1 [N], got shape {list(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise UserError(
            f"--data {str(path)!r}: 'x' has {x.shape[0]} samples but 'y' has {y.shape[0]}"
        )
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise UserError(f"--data {str(path)!r}: array 'x' is empty, shape {list(x.shape)}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"--data {str(path)!r}: array 'x' must hold numbers, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(
            f"--data {str(path)!r}: array 'y' must hold integer class ids, got dtype {y.dtype}"
        )
    images = x.astype(np.float32)
    if not np.all(np.isfinite(images)):
        bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
        raise UserError(f"--data {str(path)!r}: array 'x' holds {bad} NaN or infinite values")
    labels = y.astype(np.int64)
    if "labels" in arrays:
        class_names = tuple(str(v) for v in arrays["labels"].reshape(-1))
    else:
        class_names = tuple(str(k) for k in range(int(labels.max()) + 1 if labels.size else 0))
    num_classes = len(class_names)
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise UserError(
            f"--data {str(path)!r}: label y[{first}] = {int(labels[first])} is outside [0, {num_classes})"
        )
    if num_classes < 2:
        raise UserError(f"--data {str(path)!r}: need at least 2 classes, got {num_classes}")
    return Dataset(name, images, labels, class_names)


def synthetic_dataset(height: int, width: int, channels: int) -> Dataset:
    """Deterministic class-conditional images: a fixed random template per class plus unit noise."""
    if min(height, width, channels) < 1:
        raise UserError(
            f"--data synthetic:{height}x{width}x{channels}: every dimension must be >= 1"
        )
    # Generated in float64 (noise, templates, their sum) before the float32 copy: ~3 x 8 bytes a value.
    needed = 3 * 8 * (SYNTHETIC_SAMPLES + SYNTHETIC_CLASSES) * height * width * channels
    if needed > MAX_SYNTHETIC_BYTES:
        raise UserError(
            f"--data synthetic:{height}x{width}x{channels}: {SYNTHETIC_SAMPLES} images of that size need "
            f"{needed / 2**30:.1f} GiB to generate, more than the {MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB "
            "allowed; use smaller images"
        )
    rng = np.random.default_rng(SYNTHETIC_DATA_SEED)
    templates = rng.normal(0.0, 1.0, size=(SYNTHETIC_CLASSES, height, width, channels))
    labels = rng.integers(0, SYNTHETIC_CLASSES, size=SYNTHETIC_SAMPLES)
    noise = rng.normal(0.0, 1.0, size=(SYNTHETIC_SAMPLES, height, width, channels))
    images = (templates[labels] + noise).astype(np.float32)
    names = tuple(str(k) for k in range(SYNTHETIC_CLASSES))
    return Dataset(f"synthetic:{height}x{width}x{channels}", images, labels.astype(np.int64), names)


def split(dataset: Dataset, seed: int, heldout_fraction: float) -> tuple[Dataset, Dataset]:
    """Deterministic (train, held-out) split: a permutation drawn from ``seed``."""
    count = len(dataset)
    heldout_count = int(round(count * heldout_fraction))
    if heldout_count < 1 or heldout_count >= count:
        raise UserError(
            f"--heldout-fraction {heldout_fraction}: leaves {heldout_count} of {count} samples held out;"
            " expected at least 1 and fewer than all"
        )
    order = np.random.default_rng(seed).permutation(count)
    return dataset.subset(np.sort(order[heldout_count:])), dataset.subset(
        np.sort(order[:heldout_count])
    )


def epoch_order(train_size: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch, a pure function of (seed, epoch) so a resumed run repeats it."""
    return np.random.default_rng([seed, epoch]).permutation(train_size)
