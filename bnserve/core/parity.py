"""The parity certificate: every artifact against the unfolded model in inference mode.

For an artifact A and the reference R on the same inputs (logits):

    max_abs = max |A - R|
    max_rel = max |A - R| / max |R|

batch_invariance = max |A(x_i alone) - A(x_i inside a batch of 64)| over a few positions i.
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

    def passes(self, tolerance: float) -> bool:
        return self.max_abs <= tolerance and self.batch_invariance <= tolerance


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
    )


def certificate(results: list[ArtifactParity], tolerance: float) -> dict:
    return {
        "tolerance": tolerance,
        "passed": all(r.passes(tolerance) for r in results),
        "artifacts": {r.artifact: asdict(r) for r in results},
    }


def format_table(results: list[ArtifactParity], tolerance: float) -> str:
    lines = [
        f"{'artifact':<16} {'samples':>7} {'max abs':>10} {'max rel':>10} {'argmax':>7} {'batch inv':>10}  verdict"
    ]
    for r in results:
        verdict = "ok" if r.passes(tolerance) else f"FAIL (> {tolerance:g})"
        lines.append(
            f"{r.artifact:<16} {r.samples:>7} {r.max_abs:>10.2e} {r.max_rel:>10.2e} "
            f"{100 * r.argmax_agreement:>6.1f}% {r.batch_invariance:>10.2e}  {verdict}"
        )
    return "\n".join(lines)
