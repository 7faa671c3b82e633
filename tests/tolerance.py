"""How the test suite compares floats (the rule is in tests/README.md; every test follows it).

Two code paths that compute the same float32 function — another backend, batch size, batch
composition, strategy, process or machine — agree to rounding, not bit for bit:

    |actual - expected| <= rtol * |expected| + rtol * max|expected|          (elementwise, rtol = 1e-5)

The second term scales the absolute tolerance with the tensor's magnitude, so an element that
happens to sit near zero in a tensor of size ~10 is judged at the tensor's scale, not at its own.
Why 1e-5: float32 has eps = 1.19e-7; a conv or dense output sums up to a few hundred products and
the network stacks a few such layers, so independent roundings leave errors of tens of eps relative
to the tensor's scale (the three cross-machine failures that gave this rule measured 1.9e-7 relative:
1.43e-6 on a logit of -7.5). 1e-5 is ~80 eps: wide enough for any summation order, and still four
orders of magnitude below any real error (a wrong statistic or a missing fold moves logits by >1e-1).
"""

from __future__ import annotations

import numpy as np

FLOAT32_PATHS_RTOL = 1e-5
"""Relative tolerance for one float32 function computed by two code paths."""

MIN_ARGMAX_AGREEMENT = 0.97
"""Whole training runs on two code paths: share of held-out samples whose predicted class agrees."""

MAX_ACCURACY_GAP = 0.03
"""Whole training runs on two code paths: largest held-out accuracy difference (3 points of ~360 samples)."""


def assert_same_function(
    actual, expected, rtol: float = FLOAT32_PATHS_RTOL, err_msg: str = ""
) -> None:
    """Assert ``actual`` equals ``expected`` to rounding: rtol relative, plus rtol times max|expected|."""
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def assert_same_predictions(logits_a, logits_b, labels, err_msg: str = "") -> dict:
    """Whole runs on two code paths: argmax agreement and held-out accuracy, never weights after many steps.

    Many Adam steps turn rounding-level differences of near-zero gradients into +-learning-rate steps,
    so two correct runs end with different weights; what must agree is what users see.
    """
    predicted_a, predicted_b = np.argmax(logits_a, axis=1), np.argmax(logits_b, axis=1)
    figures = {
        "agreement": float(np.mean(predicted_a == predicted_b)),
        "accuracy_a": float(np.mean(predicted_a == labels)),
        "accuracy_b": float(np.mean(predicted_b == labels)),
    }
    assert figures["agreement"] >= MIN_ARGMAX_AGREEMENT, (err_msg, figures)
    assert abs(figures["accuracy_a"] - figures["accuracy_b"]) <= MAX_ACCURACY_GAP, (
        err_msg,
        figures,
    )
    return figures
