"""The ``bnserve`` command line. Sub-commands import their heavy modules only when they run."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bnserve.core.errors import BnserveError, UserError

if TYPE_CHECKING:
    from bnserve.trainer.config import TrainConfig

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line ``error: ...`` and exit status 2, like every user error."""

    def error(self, message):
        raise UserError(message)


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def version_number(text: str) -> int:
    from bnserve.core.repository import parse_version

    version = parse_version(text)
    if version is None:
        raise argparse.ArgumentTypeError(
            f"expected a canonical positive decimal integer (1, 2, ...), got {text!r}"
        )
    return version


# Flags of `train` that define a run; --resume keeps the stored values and refuses different ones.
RUN_DEFINING_FLAGS = (
    "data",
    "batch_size",
    "seed",
    "learning_rate",
    "optimizer",
    "heldout_fraction",
    "widths",
    "strides",
    "decay",
    "epsilon",
    "warmup",
)


EXECUTION_FLAGS = ("strategy", "cpu_replicas", "collective_timeout_seconds")


def add_train_parser(commands) -> None:
    from bnserve.trainer.config import TrainConfig

    T = TrainConfig  # the defaults shown are the config dataclass's own; unset flags keep them (or, on --resume, the run's)
    parser = commands.add_parser(
        "train", help="train a batch-normalised conv net with EMA shadow statistics"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="run directory (checkpoints, logs, run.json)"
    )
    parser.add_argument(
        "--data", help=f"{T.data} (default), synthetic:HxWxC or PATH.npz with x [N,H,W,C], y [N]"
    )
    parser.add_argument("--epochs", type=int, help=f"total epochs of the run (default {T.epochs})")
    parser.add_argument("--batch-size", type=int, help=f"default {T.batch_size}")
    parser.add_argument("--seed", type=int, help=f"default {T.seed}")
    parser.add_argument(
        "--learning-rate", type=float, help=f"learning rate (default {T.learning_rate:g})"
    )
    parser.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        help=f"adam or plain sgd (runs on two code paths stay comparable weight by weight; default {T.optimizer})",
    )
    parser.add_argument("--heldout-fraction", type=float, help=f"default {T.heldout_fraction:g}")
    parser.add_argument(
        "--widths",
        type=int_list,
        help=f"conv widths, comma-separated (default {','.join(map(str, T.widths))})",
    )
    parser.add_argument(
        "--strides",
        type=int_list,
        help=f"conv strides, comma-separated (default {','.join(map(str, T.strides))})",
    )
    parser.add_argument(
        "--decay", type=float, help=f"EMA decay of the BN shadow statistics (default {T.decay:g})"
    )
    parser.add_argument("--epsilon", type=float, help=f"BN epsilon (default {T.epsilon:g})")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_const",
        const=False,
        help="plain EMA decay instead of min(decay, (1 + n) / (10 + n))",
    )
    parser.add_argument(
        "--strategy",
        choices=["default", "mirrored", "multiworker"],
        help="default: one device; mirrored: local GPUs or --cpu-replicas; multiworker: TF_CONFIG",
    )
    parser.add_argument(
        "--cpu-replicas", type=int, help="with mirrored: split the CPU into N logical devices"
    )
    parser.add_argument(
        "--collective-timeout-seconds",
        type=float,
        help=f"with multiworker: fail a step whose collectives wait longer (default {T.collective_timeout_seconds:g})",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    parser.set_defaults(handler=run_train)


def train_config_from(args) -> "TrainConfig":
    from bnserve.trainer.config import TrainConfig
    from bnserve.trainer.rundir import read_run_record

    given = {
        name: getattr(args, name) for name in RUN_DEFINING_FLAGS if getattr(args, name) is not None
    }
    # How to run (not what is trained) may change on resume: another strategy, more replicas.
    execution = {
        name: getattr(args, name) for name in EXECUTION_FLAGS if getattr(args, name) is not None
    }
    if not args.resume:
        defaults = TrainConfig()
        return replace(
            defaults,
            **given,
            **execution,
            epochs=args.epochs if args.epochs is not None else defaults.epochs,
        )
    stored = TrainConfig.from_json(read_run_record(args.out).config)
    for name, value in given.items():
        if getattr(stored, name) != value:
            raise UserError(
                f"--{name.replace('_', '-')}: the run was trained with {getattr(stored, name)!r};"
                " --resume keeps the run's settings (only --epochs and how it runs may change)"
            )
    return replace(
        stored,
        **{"strategy": "default", "cpu_replicas": 0} | execution,
        epochs=args.epochs if args.epochs is not None else stored.epochs,
    )


TENSORFLOW_MODULES = {"tensorflow", "keras", "tensorboard", "tqdm", "tf2onnx"}


def import_tensorflow(verbose: bool = False):
    """Import TensorFlow with its start-up noise (absl's pre-init notice, oneDNN and CPU-feature lines, CUDA
    driver probes) sent to /dev/null unless ``verbose``: those lines are written by C++ straight to file
    descriptor 2 while the library loads and first looks for devices, so only the descriptor can silence them."""
    if verbose:
        import tensorflow

        return tensorflow
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow

        tensorflow.get_logger().setLevel("ERROR")
        tensorflow.config.list_physical_devices("GPU")  # the CUDA probe logs here, once
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


@contextmanager
def needs_extra(extra: str, command: str):
    """Import what ``command`` needs; a missing TensorFlow-side module is the user's install, not a crash."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TENSORFLOW_MODULES:
            raise
        raise UserError(
            f"{command} needs the '{extra}' extra (module {exc.name!r} is not installed): "
            f"pip install 'bnserve[{extra}]'"
        ) from None


def run_train(args) -> int:
    from bnserve.trainer.data import load_dataset
    from bnserve.trainer.rundir import check_has_checkpoint, check_new_run_dir

    config = train_config_from(args)
    dataset = load_dataset(config.data)
    if args.resume:
        check_has_checkpoint(args.out)
    elif config.chief:
        check_new_run_dir(args.out)
    with needs_extra("train", "bnserve train"):
        import_tensorflow(args.verbose)
        from bnserve.trainer.train import (
            train,  # TensorFlow loads only once the input is known to be good
        )

    record = train(config, args.out, resume=args.resume, dataset=dataset)
    final = record.final or {}
    print(
        f"run {args.out}: held-out accuracy {final.get('heldout_inference_accuracy', float('nan')):.4f}"
        f" (inference mode), {final.get('heldout_batch_stats_accuracy', float('nan')):.4f} (batch statistics)"
    )
    return 0


def add_export_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="fold the frozen BN statistics, verify and publish a model version (a run, or your own "
        "Keras model)",
    )
    parser.add_argument(
        "source",
        type=Path,
        metavar="RUN_DIR|MODEL",
        help="a directory written by bnserve train, or a Keras 3 model file (.keras, .h5) with one "
        "channels-last image input and one output",
    )
    parser.add_argument("--repository", required=True, type=Path, help="model repository root")
    parser.add_argument("--name", required=True, help="model name (letters, digits, _ . -)")
    parser.add_argument(
        "--version", type=version_number, help="version to publish (default: highest + 1)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest absolute logit difference any artifact may show vs the reference (default 1e-4)",
    )
    parser.add_argument(
        "--stats",
        default="ema",
        metavar="ema|precise|adapt:PATH",
        help="BN statistics to fold: the stored ones (EMA shadows, or a Keras BN's moving mean and "
        "variance; default), precise re-estimation over the training data (a run's, or --data), or "
        "re-estimation over unlabeled target inputs (an .npz with x, or a capture directory) with the "
        "weights frozen",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="D.npz",
        help="MODEL only: inputs x [N, H, W, C] (optional integer labels y and class names labels) "
        "for the certificate, golden samples, drift calibration, --stats precise and the accuracy",
    )
    parser.add_argument(
        "--input-range",
        metavar="LO,HI",
        help="MODEL only: the raw values the model takes; required without --data (random inputs "
        "over it certify the export, and no drift monitor is written)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="MODEL only: batch size of the --stats precise|adapt pass (default 64)",
    )
    parser.set_defaults(handler=run_export)


def run_export(args) -> int:
    with needs_extra("train", "bnserve export"):  # first: a missing extra is the first thing to say
        import_tensorflow(args.verbose)
    if not 1 <= args.batch_size <= 65536:
        raise UserError(f"--batch-size {args.batch_size}: expected 1 to 65536")
    with needs_extra("train", "bnserve export"):
        from bnserve.exporter.export import (  # TensorFlow loads only once the input is known to be good
            ExportRequest,
            check_request,
            export,
        )
    request = ExportRequest(
        args.source,
        args.repository,
        args.name,
        args.version,
        args.opset,
        args.tolerance,
        args.stats,
        data=args.data,
        input_range=args.input_range,
        batch_size=args.batch_size,
    )
    check_request(request)
    version, path, manifest = export(request)
    accuracy = (
        f"held-out accuracy {manifest.accuracy:.4f}"
        if manifest.accuracy is not None
        else "no labels, so no accuracy"
    )
    print(f"published {args.name} version {version} at {path} ({accuracy})")
    return 0


def add_serve_parser(commands) -> None:
    from bnserve.server.settings import add_setting_flags

    parser = commands.add_parser(
        "serve", help="serve the repository over gRPC and HTTP (KServe v2, TF Serving, health)"
    )
    add_setting_flags(
        parser
    )  # one flag per ServerSettings field: help, choices and default live on the field
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each with its own "
        "sessions",
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args) -> int:
    import logging

    if args.backend == "tf":
        if importlib.util.find_spec("tensorflow") is None:
            raise UserError(
                "bnserve serve --backend tf needs the 'tf' extra (module 'tensorflow' is not installed): "
                "pip install 'bnserve[tf]'"
            )
        import_tensorflow(args.verbose)

    from bnserve.server.settings import settings_from_args

    settings = settings_from_args(args)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}]: %(message)s",
    )
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected a positive integer")
    if args.workers > 1:
        from bnserve.server.workers import run_workers

        return run_workers(
            args.host,
            args.grpc_port,
            args.workers,
            args.argv,
            args.metrics_port,
            args.http_port,
            settings.metrics_host,
            settings.auth_token if settings.metrics_auth else None,
        )
    from bnserve.server.app import run

    run(settings)  # a StartupError is a UserError: one line, exit status 2
    return 0


def add_predict_parser(commands) -> None:
    parser = commands.add_parser("predict", help="query a server and print the top classes")
    parser.add_argument(
        "--url", required=True, help="HOST:PORT of a bnserve (or any KServe v2) gRPC server"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="", help="default: the newest served version")
    parser.add_argument(
        "--top",
        type=int,
        default=3,
        help="how many classes per sample, with their labels and scores",
    )
    parser.add_argument(
        "--pixel-scale",
        type=float,
        default=None,
        help="decode a PNG/JPEG here with value = pixel x this (default: the served version's own "
        "mapping from its ModelConfig, the one the server applies to image_bytes)",
    )
    parser.add_argument(
        "--send-bytes",
        action="store_true",
        help="send a PNG/JPEG INPUT as it is, in the image_bytes input, for the server to decode",
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help=".npy, .npz, .png or .jpg")
    parser.set_defaults(handler=run_predict)


def run_predict(args) -> int:
    from bnserve.server.client import predict

    if args.top < 1:
        raise UserError(f"--top {args.top}: expected a class count >= 1")
    if args.send_bytes and args.pixel_scale is not None:
        raise UserError(
            "--send-bytes and --pixel-scale: the server decodes sent bytes by its own mapping"
        )
    if args.pixel_scale is not None and not (
        math.isfinite(args.pixel_scale) and args.pixel_scale > 0
    ):
        raise UserError(f"--pixel-scale {args.pixel_scale}: expected a positive number")
    print(
        predict(
            args.url,
            args.model,
            args.version,
            args.input,
            args.top,
            args.pixel_scale,
            args.send_bytes,
        )
    )
    return 0


def add_drift_parser(commands) -> None:
    parser = commands.add_parser(
        "drift", help="print a served version's BN shift per layer against its alarm threshold"
    )
    parser.add_argument("--url", required=True, help="HOST:PORT of a bnserve gRPC server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="", help="default: the newest served version")
    parser.set_defaults(handler=run_drift)


def run_drift(args) -> int:
    from bnserve.server.client import drift

    print(drift(args.url, args.model, args.version))
    return 0


def add_verify_parser(commands) -> None:
    parser = commands.add_parser(
        "verify", help="check a published version's hashes and golden samples on this machine"
    )
    parser.add_argument(
        "version_dir", type=Path, metavar="REPO/NAME/VERSION", help="a published version directory"
    )
    parser.add_argument(
        "--runtime",
        choices=["onnxruntime", "tf", "onnx-reference"],
        default="onnxruntime",
        help="runtime to check: ONNX Runtime on model.onnx (default), TensorFlow on the SavedModel, "
        "or ONNX's reference evaluator",
    )
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.set_defaults(handler=run_verify)


def run_verify(args) -> int:
    from bnserve.verify import verify

    if args.runtime == "tf" and importlib.util.find_spec("tensorflow") is not None:
        import_tensorflow(args.verbose)

    verify(args.version_dir, args.runtime, args.device)
    return 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="bnserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    add_train_parser(commands)
    add_export_parser(commands)
    add_serve_parser(commands)
    add_predict_parser(commands)
    add_drift_parser(commands)
    add_verify_parser(commands)
    for command in commands.choices.values():
        command.add_argument(
            "--verbose",
            action="store_true",
            help="let TensorFlow print its own start-up lines (hidden by default)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BnserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
