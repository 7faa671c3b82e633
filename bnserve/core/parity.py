"""The parity certificate: every artifact against the unfolded model in inference mode.

For an artifact A and the reference R on the same inputs (logits):

    max_abs = max |A - R|
    max_rel = max |A - R| / max |R|

batch_invariance = max |A(x_i alone) - A(x_i inside a batch of 64)| over a few positions i.

An artifact passes when both max_abs and batch_invariance are at most

    allowed = tolerance * max(1, max |R|)

over every input set: float32 rounding grows with the logits' magnitude (a 50-layer network with logits
near 13 differs from its folded self by ~5e-5 relative, ~400 eps), while any real defect (a wrong
statistic, a missing fold) moves them by more than 1e-2 relative. The same allowance bounds the
probabilities: with p = softmax(z), dp_i = p_i * sum_j p_j (dz_i - dz_j), so
|dp_i| <= 2 p_i (1 - p_i) max|dz| <= max|dz| / 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

# The pure-Python ONNX reference evaluator is slow on convs; it checks this many held-out samples.
REFERENCE_EVALUATOR_SAMPLES = 128
INVARIANCE_POSITIONS = (0, 31, 63)


@dataclass(frozen=True)
class ArtifactParity:
    artifact: str
    samples: int
    max_abs: float
    max_rel: float
    argmax_agreement: float
    batch_invariance: float
    probabilities_row_sum_error: float
    reference_scale: float
    """max |R| over every input set (the logits' magnitude that sizes the allowance)."""

    def allowed(self, tolerance: float) -> float:
        return allowed_error(tolerance, self.reference_scale)

    def passes(self, tolerance: float) -> bool:
        allowed = self.allowed(tolerance)
        return self.max_abs <= allowed and self.batch_invariance <= allowed


def allowed_error(tolerance: float, reference_scale: float) -> float:
    """tolerance * max(1, reference_scale): the largest |output - reference| that still passes."""
    return tolerance * max(1.0, reference_scale)


def parity_inputs(
    heldout: np.ndarray, low: float, high: float, seed: int = 0
) -> dict[str, np.ndarray]:
    """Held-out images plus uniform random images in [low, high] at batch sizes 1 and 64."""
    rng = np.random.default_rng(seed)
    shape = heldout.shape[1:]
    return {
        "heldout": heldout.astype(np.float32),
        "random_batch_1": rng.uniform(low, high, (1, *shape)).astype(np.float32),
        "random_batch_64": rng.uniform(low, high, (64, *shape)).astype(np.float32),
    }


def measure(
    name: str,
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    inputs: dict[str, np.ndarray],
    expected_logits: dict[str, np.ndarray],
    heldout_limit: int | None = None,
) -> ArtifactParity:
    """Compare ``run`` (images -> {"logits", "probabilities"}) with the reference logits of every input
    set (``expected_logits[key]`` for ``inputs[key]``, computed once for all artifacts)."""
    errors, scales, agreements, row_sums, samples = [], [], [], [], 0
    for key, images in inputs.items():
        expected = expected_logits[key]
        if key == "heldout" and heldout_limit is not None:
            images, expected = images[:heldout_limit], expected[:heldout_limit]
        outputs = run(images)
        errors.append(np.max(np.abs(outputs["logits"] - expected)))
        scales.append(np.max(np.abs(expected)))
        agreements.append(np.argmax(outputs["logits"], 1) == np.argmax(expected, 1))
        row_sums.append(
            np.max(np.abs(outputs["probabilities"].astype(np.float64).sum(axis=1) - 1.0))
        )
        samples += len(images)
    batch = inputs["random_batch_64"]
    together = run(batch)["logits"]
    invariance = max(
        float(np.max(np.abs(run(batch[i : i + 1])["logits"][0] - together[i])))
        for i in INVARIANCE_POSITIONS
    )
    max_abs = float(max(errors))
    return ArtifactParity(
        name,
        samples,
        max_abs,
        max_abs / max(float(max(scales)), 1e-12),
        float(np.mean(np.concatenate(agreements))),
        invariance,
        float(max(row_sums)),
        float(max(scales)),
    )


def certificate(results: list[ArtifactParity], tolerance: float) -> dict:
    return {
        "tolerance": tolerance,
        "rule": "max_abs and batch_invariance <= tolerance * max(1, reference_scale)",
        "passed": all(r.passes(tolerance) for r in results),
        "artifacts": {r.artifact: asdict(r) for r in results},
    }


def format_table(results: list[ArtifactParity], tolerance: float) -> str:
    lines = [
        f"{'artifact':<16} {'samples':>7} {'max abs':>10} {'max rel':>10} {'argmax':>7} {'batch inv':>10}  verdict"
    ]
    for r in results:
        verdict = "ok" if r.passes(tolerance) else f"FAIL (> {r.allowed(tolerance):.3g})"
        lines.append(
            f"{r.artifact:<16} {r.samples:>7} {r.max_abs:>10.2e} {r.max_rel:>10.2e} "
            f"{100 * r.argmax_agreement:>6.1f}% {r.batch_invariance:>10.2e}  {verdict}"
        )
    return "\n".join(lines)
