"""Guards of ``--stats adapt:PATH``: what target inputs may be averaged in, and when an adapted version is
refused rather than published.

Recalibration exists for real shifts (a contrast of x0.5 or an offset of +4 on digits recover fully), so
the guards are wide; they are there for inputs no camera produces and for statistics that no longer
describe any data. One pixel of 1e30 (valid FP32, which the server accepts and captures) once made every
moment of its batch overflow in float32 and published a version at 0.11 held-out accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnserve.core.errors import UserError

RANGE_FACTOR = 4.0
"""A sample is kept when every value lies in [lo - F w, hi + F w], with [lo, hi] the training inputs' range
(the manifest's input_range), w = hi - lo and F = RANGE_FACTOR. Digits (0..16): -64..80."""
MAX_VARIANCE_RATIO = 100.0
"""An adapted channel's variance may differ from the frozen one by at most this factor either way."""
COLLAPSE_SHARE = 0.95
"""Predictions have collapsed when one class takes at least this share of the adapt inputs (and did not
with the frozen statistics)."""


@dataclass(frozen=True)
class Screened:
    images: np.ndarray
    labels: np.ndarray | None
    non_finite: int
    """Samples dropped for a NaN or an infinity."""
    out_of_range: int
    """Samples dropped for a value outside the RANGE_FACTOR band around the training range."""


def screen_samples(
    images: np.ndarray, labels: np.ndarray | None, train_range: tuple[float, float]
) -> Screened:
    """Drop (and count) the samples that are not finite or lie far outside the training range."""
    low, high = train_range
    width = max(high - low, 1e-6)
    flat = images.reshape(len(images), -1)
    finite = np.isfinite(flat).all(axis=1)
    with np.errstate(invalid="ignore"):
        inside = (flat >= low - RANGE_FACTOR * width).all(axis=1) & (
            flat <= high + RANGE_FACTOR * width
        ).all(axis=1)
    keep = finite & inside
    return Screened(
        images[keep],
        labels[keep] if labels is not None else None,
        int((~finite).sum()),
        int((finite & ~inside).sum()),
    )


def adapted_refusal(
    frozen: dict[str, tuple[np.ndarray, np.ndarray]],
    adapted: dict[str, tuple[np.ndarray, np.ndarray]],
    frozen_predictions: np.ndarray,
    adapted_predictions: np.ndarray,
    accuracy_before: float | None = None,
    accuracy_after: float | None = None,
) -> str | None:
    """Why the adapted statistics must not be published, or None.

    Refused when (in this order): a layer's adapted mean or variance is not finite; a channel's variance
    ratio v_adapted / v_frozen lies outside [1 / MAX_VARIANCE_RATIO, MAX_VARIANCE_RATIO]; one class takes at
    least COLLAPSE_SHARE of the adapted predictions on the adapt inputs while it took less with the frozen
    statistics; with labels, the accuracy on them falls below the frozen statistics' accuracy.
    """
    for name, (mean, variance) in adapted.items():
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))):
            return f"BN layer {name!r}: the adapted mean or variance is not finite"
        ratio = np.asarray(variance, np.float64) / np.maximum(
            np.asarray(frozen[name][1], np.float64), 1e-30
        )
        worst = int(np.argmax(np.abs(np.log(np.maximum(ratio, 1e-300)))))
        if not 1 / MAX_VARIANCE_RATIO <= ratio[worst] <= MAX_VARIANCE_RATIO:
            return (
                f"BN layer {name!r} channel {worst}: the adapted variance is {ratio[worst]:.3g} times the "
                f"frozen one, beyond the bound of {MAX_VARIANCE_RATIO:g} either way"
            )
    share_after, share_before = top_share(adapted_predictions), top_share(frozen_predictions)
    if share_after >= COLLAPSE_SHARE > share_before:
        top = int(np.bincount(adapted_predictions).argmax())
        return (
            f"the adapted model predicts class {top} for {share_after:.1%} of the adapt inputs "
            f"(the frozen statistics: at most {share_before:.1%} for any class); its predictions collapsed"
        )
    if (
        accuracy_before is not None
        and accuracy_after is not None
        and accuracy_after < accuracy_before
    ):
        return (
            f"accuracy on the adapt set's labels falls from {accuracy_before:.4f} (frozen statistics) to "
            f"{accuracy_after:.4f} (adapted)"
        )
    return None


def top_share(predictions: np.ndarray) -> float:
    """The share of the most frequent class among ``predictions``."""
    return float(np.bincount(predictions).max() / len(predictions)) if len(predictions) else 0.0


def refuse(statistics_flag: str, reason: str) -> UserError:
    return UserError(
        f"--stats {statistics_flag!r}: the adapted version is refused and nothing was published: {reason}"
    )
