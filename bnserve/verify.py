"""``bnserve verify``: prove on this machine, with this runtime, that a published version still
computes the numbers it was certified with — for consumers of ``model.onnx`` or the SavedModel who
never run the server.

Checks the manifest's sha256 of every file, then runs the golden samples (``bnserve.core.golden``) through
the chosen runtime and prints the export certificate's table for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bnserve.core.errors import BnserveError, UserError
from bnserve.core.golden import GOLDEN, Runner, check_golden, read_golden
from bnserve.core.parity import format_table, measure
from bnserve.core.repository import (
    INPUT_NAME,
    MANIFEST,
    ONNX_MODEL,
    OUTPUT_NAMES,
    SAVED_MODEL,
    SIGNATURE,
    read_manifest,
    verify_files,
)

RUNTIMES = ("onnxruntime", "tf", "onnx-reference")


class VerificationFailed(BnserveError):
    """The version's files or numbers are not the certified ones (exit status 1)."""


def onnxruntime_runner(version_dir: Path, device: str) -> Runner:
    import onnxruntime

    cuda = "CUDAExecutionProvider"
    if device == "gpu" and cuda not in onnxruntime.get_available_providers():
        raise UserError(
            "--device gpu: this ONNX Runtime has no CUDA provider (pip install 'bnserve[gpu]')"
        )
    providers = [cuda, "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(version_dir / ONNX_MODEL), providers=providers)
    if device == "gpu" and session.get_providers()[0] != cuda:
        raise UserError("--device gpu: ONNX Runtime could not start its CUDA provider here")
    return lambda images: dict(
        zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: images}))
    )


def tensorflow_runner(version_dir: Path, device: str) -> Runner:
    try:
        import tensorflow as tf
    except ImportError:
        raise UserError(
            "bnserve verify --runtime tf needs the 'tf' extra (module 'tensorflow' is not installed): "
            "pip install 'bnserve[tf]'"
        ) from None
    if device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise UserError("--device gpu: TensorFlow sees no GPU")
    name = "/GPU:0" if device == "gpu" else "/CPU:0"
    with tf.device(name):
        signature = tf.saved_model.load(str(version_dir / SAVED_MODEL)).signatures[SIGNATURE]

    def run(images):
        with tf.device(name):
            return {
                key: value.numpy()
                for key, value in signature(**{INPUT_NAME: tf.constant(images)}).items()
            }

    return run


def onnx_reference_runner(version_dir: Path, device: str) -> Runner:
    if device == "gpu":
        raise UserError("--runtime onnx-reference runs on the CPU only (NumPy); use --device cpu")
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(version_dir / ONNX_MODEL)))
    return lambda images: dict(
        zip(OUTPUT_NAMES, evaluator.run(list(OUTPUT_NAMES), {INPUT_NAME: images}))
    )


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


RUNNERS = {
    "onnxruntime": onnxruntime_runner,
    "tf": tensorflow_runner,
    "onnx-reference": onnx_reference_runner,
}


def verify(
    version_dir: Path, runtime: str = "onnxruntime", device: str = "cpu", out=sys.stdout
) -> None:
    """Print the hash check and the golden table; raise VerificationFailed when either does not hold."""
    if not version_dir.is_dir():
        raise UserError(f"{str(version_dir)!r}: no such directory (expected REPO/NAME/VERSION)")
    if not (version_dir / MANIFEST).is_file():
        raise UserError(
            f"{str(version_dir)!r}: no {MANIFEST}; expected a published version directory REPO/NAME/VERSION"
        )
    manifest = read_manifest(version_dir)
    try:
        verify_files(version_dir, manifest)
    except UserError as exc:
        print(f"files: FAIL: {exc}", file=out)
        raise VerificationFailed(str(exc)) from None
    print(f"files: ok ({len(manifest.files)} files match the manifest's sha256)", file=out)
    if GOLDEN not in manifest.files:
        raise VerificationFailed(
            f"{version_dir}: no {GOLDEN}: this version was exported before golden samples "
            "existed, so its numbers cannot be checked here (export it again)"
        )
    try:  # the files are the published ones, so what is wrong with them is the version's fault: exit 1
        golden = read_golden(version_dir / GOLDEN)
        expected = [spec.shape[1:] for spec in manifest.inputs]
        for key, images in golden.inputs.items():
            if [list(images.shape[1:])] != [list(shape) for shape in expected]:
                raise UserError(
                    f"{GOLDEN}: input/{key} has shape {list(images.shape)}, the manifest declares "
                    f"[n, {', '.join(map(str, expected[0]))}]"
                )
    except UserError as exc:
        raise VerificationFailed(f"{version_dir}: {exc}") from None
    artifact = SAVED_MODEL if runtime == "tf" else ONNX_MODEL
    try:
        run = RUNNERS[runtime](version_dir, device)
    except (
        UserError
    ):  # a flag this machine cannot honour (--device gpu without one, a missing extra)
        raise
    except Exception as exc:  # a runtime that cannot load the file: the version fails, in one line
        raise VerificationFailed(
            f"{version_dir}: {runtime} cannot load {artifact} ({one_line(exc)})"
        ) from None
    try:
        check = check_golden(run, golden)
        parity = measure(f"{runtime}/{device}", run, golden.inputs, golden.outputs["logits"])
    except Exception as exc:
        raise VerificationFailed(
            f"{version_dir}: {runtime} cannot run {artifact} ({one_line(exc)})"
        ) from None
    print(format_table([parity], golden.tolerance), file=out)
    print(check.describe(), file=out)
    if not (check.passed and parity.passes(golden.tolerance)):
        raise VerificationFailed(
            f"{version_dir}: {runtime} on {device} does not reproduce the certified numbers: "
            f"{check.describe()}"
        )
    print(
        f"verified: {runtime} on {device} reproduces {manifest.name or '?'} version "
        f"{manifest.version or '?'} within {check.allowed:.3g} (tolerance {golden.tolerance:g} x "
        f"max(1, logit scale {check.reference_scale:.3g}))",
        file=out,
    )
