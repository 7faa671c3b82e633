"""Export options that can be checked before TensorFlow and tf2onnx are imported."""

from __future__ import annotations

from bnserve.errors import UserError

# tf2onnx 1.17 (pinned in pyproject.toml) emits opsets up to 18; its README: "We support and test
# ONNX opset-14 to opset-18". tests/test_export.py fails if the installed tf2onnx disagrees.
SUPPORTED_OPSETS = range(14, 19)
STATISTICS = ("ema", "precise")


def check_export_options(opset: int, statistics: str, tolerance: float) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise UserError(f"--opset {opset}: tf2onnx targets opsets {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}")
    if statistics not in STATISTICS:
        raise UserError(f"--stats {statistics!r}: expected one of {', '.join(STATISTICS)}")
    if not tolerance > 0:
        raise UserError(f"--tolerance {tolerance}: expected a positive number")
