"""Golden samples: inputs and reference outputs that travel with a version and are re-checked where it runs.

    REPO/NAME/VERSION/golden.npz
        input/<set>           FP32 images of one input set, [n, H, W, C]
        logits/<set>          the unfolded model's logits in inference mode (float32)
        probabilities/<set>   softmax of those logits
        tolerance             the certificate's tolerance (a 0-d float64)

The sets are ``heldout`` (the first held-out samples), ``random_batch_1`` and ``random_batch_64``
(uniform images over the training data's value range; 64 is the default maximum batch size, so the
batch path is exercised too). A runtime passes when, for every set and both outputs,

    max |runtime output - reference output| <= tolerance * max(1, max |reference logits|)

the certificate's rule (bnserve.core.parity.allowed_error), with the logits' magnitude over all sets

and every output has one row per input row. The exporter writes the file (hashed in the manifest like
every file); the server checks it before a version takes traffic and ``bnserve verify`` on any machine.
NumPy only: no TensorFlow, no ONNX Runtime.
"""

from __future__ import annotations

import functools
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bnserve.core.errors import UserError
from bnserve.core.npz import check_declared_size, declared_arrays
from bnserve.core.parity import allowed_error
from bnserve.core.repository import OUTPUT_NAMES

GOLDEN = "golden.npz"
HELDOUT_SAMPLES = 32
# Inputs of a golden file are bounded: the check runs at every load, and the file is read whole.
MAX_GOLDEN_BYTES = 64 * 1024 * 1024

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]
"""images [n, H, W, C] -> {"logits": [n, K], "probabilities": [n, K]}"""


@dataclass(frozen=True)
class Golden:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, dict[str, np.ndarray]]
    """outputs[output name][set name]"""
    tolerance: float

    @property
    def samples(self) -> int:
        return sum(len(images) for images in self.inputs.values())


def golden_inputs(parity_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The certificate's input sets, with the held-out set cut to its first HELDOUT_SAMPLES rows."""
    return {
        key: (images[:HELDOUT_SAMPLES] if key == "heldout" else images)
        for key, images in parity_inputs.items()
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def write_golden(
    path: Path, inputs: dict[str, np.ndarray], logits: dict[str, np.ndarray], tolerance: float
) -> None:
    arrays = {"tolerance": np.float64(tolerance)}
    for key, images in inputs.items():
        arrays[f"input/{key}"] = images.astype(np.float32)
        arrays[f"logits/{key}"] = logits[key].astype(np.float32)
        arrays[f"probabilities/{key}"] = softmax(logits[key])
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def read_golden(path: Path) -> Golden:
    """Read and check golden.npz (no pickles, bounded size); a bad file raises UserError naming what is wrong."""
    try:
        if path.stat().st_size > MAX_GOLDEN_BYTES:
            raise UserError(
                f"{GOLDEN}: {path.stat().st_size} bytes, more than the {MAX_GOLDEN_BYTES} allowed"
            )
        content = path.read_bytes()
        check_declared_size(declared_arrays(io.BytesIO(content), GOLDEN), MAX_GOLDEN_BYTES, GOLDEN)
        with np.load(io.BytesIO(content), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{GOLDEN}: unreadable ({exc})") from None
    if (
        "tolerance" not in arrays
        or arrays["tolerance"].shape != ()
        or arrays["tolerance"].dtype.kind != "f"
        or not np.isfinite(arrays["tolerance"])
    ):
        raise UserError(f"{GOLDEN}: expected a finite scalar 'tolerance'")
    inputs = {
        key.split("/", 1)[1]: value for key, value in arrays.items() if key.startswith("input/")
    }
    if not inputs:
        raise UserError(f"{GOLDEN}: no input sets")
    outputs: dict[str, dict[str, np.ndarray]] = {name: {} for name in OUTPUT_NAMES}
    for key, images in inputs.items():
        if images.dtype != np.float32 or images.ndim != 4 or len(images) == 0:
            raise UserError(
                f"{GOLDEN}: input/{key}: expected non-empty FP32 [n, H, W, C], got {images.dtype} "
                f"{list(images.shape)}"
            )
        for name in OUTPUT_NAMES:
            expected = arrays.get(f"{name}/{key}")
            if expected is None or expected.ndim != 2 or len(expected) != len(images):
                raise UserError(
                    f"{GOLDEN}: {name}/{key}: expected [{len(images)}, K] reference outputs"
                )
            outputs[name][key] = expected
    return Golden(inputs, outputs, float(arrays["tolerance"]))


@dataclass(frozen=True)
class GoldenCheck:
    """The worst disagreement of one runtime with the golden reference outputs."""

    max_abs_error: float
    output: str
    input_set: str
    row: int
    column: int
    tolerance: float
    samples: int
    reference_scale: float = 1.0
    """max |reference logits| over every set: the allowance is tolerance * max(1, reference_scale)."""

    @property
    def allowed(self) -> float:
        return allowed_error(self.tolerance, self.reference_scale)

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.allowed

    def describe(self) -> str:
        verdict = "within" if self.passed else "above"
        return (
            f"golden check: output {self.output!r} differs by at most {self.max_abs_error:.4g} from the reference "
            f"(set {self.input_set!r}, row {self.row}, column {self.column}), {verdict} the allowed "
            f"{self.allowed:.3g} (tolerance {self.tolerance:g} x max(1, logit scale {self.reference_scale:.3g})"
            f"; {self.samples} samples)"
        )


def check_golden(run: Runner, golden: Golden, max_batch_size: int | None = None) -> GoldenCheck:
    """Run every golden set through ``run`` (in chunks of at most ``max_batch_size`` rows) and find the
    largest |output - reference| over both outputs; raises UserError when the runtime returns another
    number of rows or columns than the reference has (a model that ignores the batch dimension)."""
    worst = None
    scale = max(
        (
            float(np.max(np.abs(logits), initial=0.0))
            for logits in golden.outputs["logits"].values()
        ),
        default=0.0,
    )
    found = functools.partial(
        GoldenCheck, tolerance=golden.tolerance, samples=golden.samples, reference_scale=scale
    )
    for key, images in golden.inputs.items():
        step = max_batch_size or len(images)
        chunks = [run(images[start : start + step]) for start in range(0, len(images), step)]
        for name in OUTPUT_NAMES:
            expected = golden.outputs[name][key]
            parts = [chunk[name] for chunk in chunks]
            for start, part in zip(range(0, len(images), step), parts):
                rows = min(step, len(images) - start)
                if part.shape != (rows, expected.shape[1]):
                    raise UserError(
                        f"golden check: output {name!r} has shape {list(part.shape)} for {rows} input "
                        f"rows of set {key!r}, expected [{rows}, {expected.shape[1]}]"
                    )
            error = np.abs(np.concatenate(parts).astype(np.float64) - expected)
            if not np.all(np.isfinite(error)):
                row, column = np.argwhere(~np.isfinite(error))[0]
                return found(float("inf"), name, key, int(row), int(column))
            row, column = np.unravel_index(int(np.argmax(error)), error.shape)
            if worst is None or error[row, column] > worst.max_abs_error:
                worst = found(float(error[row, column]), name, key, int(row), int(column))
    return worst
