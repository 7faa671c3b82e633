"""Server settings, declared once, validated before anything starts.

This is the ground floor of the server: it imports the standard library and bnserve.core only, so that
`bnserve train` (whose parser lists every `serve` flag) loads neither grpc nor prometheus_client. Every field
of ServerSettings is a `bnserve serve` flag: its help text, choices and default live on the field
(``setting(...)``) and bnserve.cli generates the parser from them (``add_setting_flags``), so a default or a
help text exists once. ``protocols`` names the ports a setting governs; the help text names each of them
(tests/test_settings.py holds the two together).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from bnserve.core.errors import UserError
from bnserve.core.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from bnserve.core.repository import validate_model_name

BACKENDS = ("onnx", "tf")
"""Execution backends: ONNX Runtime on model.onnx, TensorFlow on the SavedModel."""
DEVICES = ("auto", "cpu", "gpu")
EVENT_LOOPS = ("uvloop", "asyncio")
"""The event loop both ports run on: uvloop (libuv's, the default) or the standard library's."""
MODEL_CONTROL_MODES = ("poll", "none", "explicit")
PROTOCOLS = ("gRPC", "HTTP")
"""The serving ports, as a setting's help text names them."""
STREAM_WINDOW = 16
"""Requests of one ModelStreamInfer stream read and not yet answered to the client, at most."""


@dataclass(frozen=True)
class BatchingOptions:
    """How one model version batches (server-wide flags, overridden per model by --model-option)."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 1000
    max_queue_size: int = 256
    """Requests waiting at most; the next one gets RESOURCE_EXHAUSTED at once."""
    instances: int = 1
    """Model calls that may run at the same time."""
    coalesce: bool = True
    inline_compute_us: int = 250
    """A batch whose measured compute time (ComputeTimes) is at most this runs on the event loop itself,
    without the hand-off to a model thread and back; 0: always on a model thread. It bounds how long any
    other request or health check can wait behind one model call."""
    long_call_us: int = 1000
    """A model call measured to take at least this long (DynamicBatcher._after_long_call): the loop waits
    for the model thread to start it, the next ready batch starts before it is answered, and a queue short
    of the expected companions regroups with the requests its answers bring back; 0: off."""
    busy_queue_delay_us: int = 4000
    """Replaces max_queue_delay_us, where longer, while the event loop is busy (bnserve.server.batching.LoopBusy):
    its unread requests wait inside gRPC meanwhile, so a longer wait costs it nothing and saves model calls.
    Only where max_queue_delay_us > 0; 0: off."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of each model to serve: the latest N, all, or specific ones."""

    kind: str = "latest"
    """"latest", "all" or "specific"."""
    count: int = 1
    """N for "latest"."""
    versions: tuple[int, ...] = ()
    """The versions for "specific"."""

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """``latest:N`` | ``latest`` | ``all`` | ``specific:V1,V2``."""
        kind, _, argument = text.partition(":")
        try:
            if kind == "all" and not argument:
                return cls("all")
            if kind == "latest":
                count = int(argument) if argument else 1
                if count >= 1:
                    return cls("latest", count)
            if kind == "specific":
                versions = tuple(sorted({int(v) for v in argument.split(",")}))
                if versions and versions[0] >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise UserError(
            f"--version-policy {text!r}: expected latest:N (N >= 1), all, or specific:V1,V2 (V >= 1)"
        )

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        return "all" if self.kind == "all" else "specific:" + ",".join(map(str, self.versions))

    def asked_for(self, on_disk: list[int]) -> int:
        """How many of the model's versions on disk the policy serves when each of them loads: min(N, on disk)
        for latest:N (which falls back to older versions that load), every one for all, the listed ones that
        exist for specific."""
        if self.kind == "latest":
            return min(self.count, len(on_disk))
        if self.kind == "all":
            return len(on_disk)
        return len(set(on_disk) & set(self.versions))


MODEL_OPTION_KEYS = {
    "max_batch_size": "max_batch_size",
    "max_queue_delay_us": "max_queue_delay_us",
    "busy_queue_delay_us": "busy_queue_delay_us",
    "max_queue_size": "max_queue_size",
    "instances": "instances",
    "dynamic_batching": "coalesce",
    "inline_compute_us": "inline_compute_us",
    "long_call_us": "long_call_us",
}
"""--model-option keys and the BatchingOptions field each one sets."""


BOUNDS: dict[str, tuple[float, float]] = {
    "grpc_port": (0, 65535),
    "http_port": (0, 65535),
    "metrics_port": (0, 65535),
    "max_batch_size": (1, 65536),
    "max_queue_delay_us": (0, 60_000_000),
    "busy_queue_delay_us": (0, 60_000_000),
    "max_queue_size": (1, 1_000_000),
    "instances": (1, 256),
    "inline_compute_us": (0, 10_000_000),
    "long_call_us": (0, 60_000_000),
    "intra_op_threads": (0, 1024),
    # gRPC takes message sizes as a C int.
    "max_message_bytes": (1024, 2**31 - 1),
    "max_json_bytes": (1024, 2**31 - 1),
    "grace_seconds": (0, 86_400),
    "drain_seconds": (0, 86_400),
    "poll_seconds": (0, 86_400),
    "max_connections": (1, 1_000_000),
    # gRPC takes both as int milliseconds (under 2^31); below 0.1 s no call could finish on an idle
    # connection's first request.
    "connection_idle_seconds": (0.1, 2_000_000),
    "handshake_seconds": (0.1, 3_600),
    "body_seconds": (0.1, 3_600),
    "monitor_sample_rate": (0, 1),
    "monitor_window": (16, 1_000_000),
    "monitor_max_share": (0, 1_000),
    "capture_rate": (0, 1),
    "trace_sample_rate": (0, 1),
    "capture_max_bytes": (1 << 20, 1 << 50),
    "max_image_bytes": (1024, 2**31 - 1),
    "max_image_pixels": (1, 1 << 28),
}
"""Every numeric setting's range, inclusive: the one table behind the flags and --model-option. A value outside
it, NaN or infinity is refused before anything starts."""


def check_bound(flag: str, key: str, value) -> None:
    low, high = BOUNDS[key]
    if value is None:
        return
    if not (math.isfinite(value) and low <= value <= high):
        kind = "an integer" if isinstance(value, int) else "a number"
        raise UserError(f"{flag} {value}: expected {kind} from {low:g} to {high:g}")


def check_batching(
    prefix: str,
    max_batch_size: int,
    max_queue_delay_us: int,
    max_queue_size: int,
    instances: int,
    inline_compute_us: int = 0,
    long_call_us: int = 0,
    busy_queue_delay_us: int = 0,
) -> None:
    """Range checks shared by the server-wide flags (prefix "--") and --model-option overrides."""
    for key, value, low in (
        ("max-batch-size", max_batch_size, 1),
        ("max-queue-delay-us", max_queue_delay_us, 0),
        ("max-queue-size", max_queue_size, 1),
        ("instances", instances, 1),
        ("inline-compute-us", inline_compute_us, 0),
        ("long-call-us", long_call_us, 0),
        ("busy-queue-delay-us", busy_queue_delay_us, 0),
    ):
        name = key if prefix == "--" else key.replace("-", "_")
        if value < low:
            raise UserError(f"{prefix}{name} {value}: expected an integer >= {low}")
        check_bound(f"{prefix}{name}", key.replace("-", "_"), value)


def parse_model_option(text: str) -> tuple[str, dict]:
    """``NAME:key=value[,key=value]`` with the keys of MODEL_OPTION_KEYS: integers, and dynamic_batching on/off."""
    name, _, assignments = text.partition(":")
    if not name or not assignments:
        raise UserError(f"--model-option {text!r}: expected NAME:key=value[,key=value]")
    try:
        validate_model_name(name)
    except UserError:
        raise UserError(
            f"--model-option {text!r}: {name!r} is not a model name (1-128 characters from A-Z a-z "
            "0-9 _ . -, starting with a letter or digit, without '..')"
        ) from None
    overrides = {}
    for assignment in assignments.split(","):
        key, _, value = assignment.partition("=")
        if key not in MODEL_OPTION_KEYS:
            raise UserError(
                f"--model-option {text!r}: unknown key {key!r}; expected one of {', '.join(MODEL_OPTION_KEYS)}"
            )
        if key == "dynamic_batching":
            if value not in ("on", "off"):
                raise UserError(
                    f"--model-option {text!r}: dynamic_batching expects on or off, got {value!r}"
                )
            overrides["coalesce"] = value == "on"
            continue
        try:
            overrides[MODEL_OPTION_KEYS[key]] = int(value)
        except ValueError:
            raise UserError(
                f"--model-option {text!r}: {key} expects an integer, got {value!r}"
            ) from None
    return name, overrides


def nonempty_path(text: str) -> Path:
    """A path flag's value; an empty one would mean the working directory, which nobody asks for."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def model_options_from(texts: list[str]) -> dict[str, dict]:
    return dict(parse_model_option(text) for text in texts)


def read_token(path: Path) -> str:
    """The bearer token of --auth-token-file: one word, surrounding whitespace ignored."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"--auth-token-file {str(path)!r}: unreadable ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--auth-token-file {str(path)!r}: not UTF-8 text") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--auth-token-file {str(path)!r}: expected one token without spaces")
    return token


def check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """The certificate chain and key parse as PEM and belong together, the CA bundle parses: checked with
    the standard library before gRPC sees them, so a bad file is a one-line error, not a crash."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise UserError(
            f"--tls-cert {str(cert)!r} / --tls-key {str(key)!r}: not a PEM certificate chain and the "
            f"private key that belongs to it ({exc.reason or exc})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise UserError(
                f"--tls-client-ca {str(client_ca)!r}: not a PEM CA bundle ({exc.reason or exc})"
            ) from None


BOTH_PORTS = PROTOCOLS


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    protocols: tuple[str, ...] = (),
    flag: str = "",
    parse: Callable | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
    action: str | None = None,
    to_setting: Callable | None = None,
    flag_default: Any = dataclasses.MISSING,
    factory: Callable | None = None,
    hidden: bool = False,
):
    """A ServerSettings field and its `bnserve serve` flag, declared together.

    ``doc`` is the help text (the default is appended); ``protocols`` the ports the setting governs;
    ``flag`` the flag when it is not --FIELD-NAME; ``parse`` argparse's type (default: the default's type);
    ``to_setting`` converts the flag's value into the field's (``flag_default`` is then the flag's default).
    """
    metadata = {
        "doc": doc,
        "protocols": protocols,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "metavar": metavar,
        "action": action,
        "to_setting": to_setting,
        "flag_default": flag_default,
        "hidden": hidden,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServerSettings:
    repository: Path = setting(doc="model repository root (REPO/NAME/VERSION/...)", parse=Path)
    model_name: str | None = setting(
        None,
        doc="--repository is one model's directory (its versions 1, 2, ... directly inside, as KServe's "
        "storage initializer leaves a storageUri that names a model), served under this name",
    )
    host: str = setting(
        "127.0.0.1", doc="address the gRPC and HTTP ports listen on", protocols=BOTH_PORTS
    )
    grpc_port: int = setting(
        8500,
        doc="gRPC port (KServe v2, TensorFlow Serving, health, reflection); 0 picks a "
        "free port, logged as 'listening on HOST:PORT'",
        protocols=("gRPC",),
    )
    http_port: int = setting(
        8501,
        doc="HTTP port: KServe v2 REST and TensorFlow Serving REST, the same data plane as "
        "gRPC; 0: no HTTP",
        protocols=("HTTP",),
    )
    backend: str = setting(
        "onnx",
        choices=BACKENDS,
        doc="onnx: ONNX Runtime on model.onnx; tf: TensorFlow on the SavedModel",
    )
    device: str = setting(
        "auto",
        choices=DEVICES,
        doc="auto: the GPU when usable, else the CPU; gpu: stop at start-up without a usable GPU; cpu",
    )
    event_loop: str = setting(
        "uvloop",
        choices=EVENT_LOOPS,
        protocols=BOTH_PORTS,
        doc="the event loop the gRPC and HTTP ports share: uvloop (libuv; 1.0-1.25x asyncio's requests a "
        "second in an interleaved A/B, README) or asyncio (the standard library's)",
    )
    max_batch_size: int = setting(
        BatchingOptions.max_batch_size,
        doc="largest batch one request may carry and one model call may run "
        "(ModelConfig max_batch_size)",
    )
    dynamic_batching: bool = setting(
        BatchingOptions.coalesce,
        choices=("on", "off"),
        flag_default="on",
        to_setting=lambda text: text == "on",
        doc="coalesce concurrent requests into one model call; off: every request runs alone",
    )
    max_queue_delay_us: int = setting(
        BatchingOptions.max_queue_delay_us,
        doc="longest a batch waits for companions after its oldest request arrived, "
        "only while recent concurrency says they are coming (bnserve.server."
        "batching); 0: run as soon as an instance is free",
    )
    busy_queue_delay_us: int = setting(
        BatchingOptions.busy_queue_delay_us,
        doc="the same wait while the event loop is busy (its thread on a CPU at least 3/4 of the "
        "time), where longer: the requests it has not read yet wait inside gRPC meanwhile; "
        "0: off",
    )
    max_queue_size: int = setting(
        BatchingOptions.max_queue_size,
        doc="requests waiting per model version; beyond it RESOURCE_EXHAUSTED at once",
    )
    instances: int = setting(
        BatchingOptions.instances, doc="model calls per version that may run at the same time"
    )
    inline_compute_us: int = setting(
        BatchingOptions.inline_compute_us,
        doc="model calls measured to take at most this many microseconds run on the "
        "event loop, without the thread hand-off; 0: always on model threads",
    )
    long_call_us: int = setting(
        BatchingOptions.long_call_us,
        doc="model calls measured to take at least this many microseconds are handed to the "
        "model thread at once, start the next ready batch before being answered, and let a short "
        "queue wait for the requests their answers bring back; 0: off",
    )
    model_options: dict[str, dict] = setting(
        factory=dict,
        flag="--model-option",
        action="append",
        flag_default=[],
        parse=str,
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        to_setting=model_options_from,
        doc="per-model batching overrides (repeatable), keys: "
        + ", ".join(k if k != "dynamic_batching" else k + "=on|off" for k in MODEL_OPTION_KEYS),
    )
    version_policy: VersionPolicy = setting(
        factory=VersionPolicy,
        flag_default=str(VersionPolicy()),
        to_setting=VersionPolicy.parse,
        doc="which versions of each model to serve: latest:N, all or specific:V1,V2",
    )
    intra_op_threads: int = setting(
        0,
        doc="ONNX Runtime intra-op threads per session; 0: one for a model whose "
        "one-row call takes at most 100 us on one thread, else ONNX Runtime's "
        "default, kept on the cores this process may use",
    )
    model_processes: bool = setting(
        False,
        action="store_true",
        hidden=True,
        doc="experimental, ONNX Runtime on the CPU only: run each instance's model calls in a process "
        "of its own fed through shared memory (bnserve.server.model_process), so the event loop and "
        "the model never share a GIL; an A/B of bench/compute_bound.py, not yet shown to win",
    )
    max_message_bytes: int = setting(
        64 * 1024 * 1024,
        protocols=BOTH_PORTS,
        doc="largest gRPC message received or sent, and largest HTTP request body",
    )
    max_json_bytes: int = setting(
        16 * 1024 * 1024,
        protocols=("HTTP",),
        doc="largest HTTP body sent as JSON (KServe v2 JSON, TensorFlow Serving REST): JSON is parsed "
        "on the event loop (~0.3 s for 16 MiB here), binary tensors take up to --max-message-bytes",
    )
    drain_seconds: float = setting(
        0.0,
        protocols=BOTH_PORTS,
        doc="after SIGTERM, readiness is false at once on gRPC and HTTP but new requests are still "
        "served this long, so that load balancers remove the endpoint first (a second signal ends it "
        "early); then --grace-seconds",
    )
    ready_requires: str = setting(
        "all",
        choices=("all", "any"),
        doc="server readiness with a partly failed repository: all: every model serves what its "
        "version policy asks for (Triton's strict readiness); any: at least one model does",
    )
    grace_seconds: float = setting(
        5.0,
        protocols=BOTH_PORTS,
        doc="time in-flight gRPC and HTTP requests get to finish after SIGTERM/SIGINT, or "
        "after their version was superseded",
    )
    poll_seconds: float = setting(
        2.0,
        doc="interval between repository scans (new, removed, repaired versions); 0: no polling",
    )
    max_connections: int = setting(
        1000,
        protocols=BOTH_PORTS,
        doc="connections each port (gRPC, HTTP) holds at once; more are refused at accept "
        "(the open-file limit is raised to fit when the hard limit allows)",
    )
    connection_idle_seconds: float = setting(
        300.0,
        protocols=BOTH_PORTS,
        doc="close a gRPC (GOAWAY) or HTTP (keep-alive) connection without calls "
        "for this long; clients reconnect on their next call",
    )
    handshake_seconds: float = setting(
        10.0,
        protocols=BOTH_PORTS,
        doc="close a connection that has not completed its HTTP/2 (gRPC) or TLS "
        "(HTTPS) handshake in this time",
    )
    body_seconds: float = setting(
        30.0,
        protocols=("HTTP",),
        doc="an HTTP request body not received whole in this time gets 408 and its connection is "
        "closed, so clients that never finish a body cannot hold the --max-connections slots",
    )
    model_control: str = setting(
        "poll",
        choices=MODEL_CONTROL_MODES,
        doc="Triton's model control modes. poll: follow the repository every "
        "--poll-seconds; none: load it at start only; explicit: load it at start, then "
        "only RepositoryModelLoad/Unload change it (those calls are refused otherwise)",
    )
    share_port: bool = setting(
        False,
        action="store_true",
        hidden=True,
        protocols=BOTH_PORTS,
        doc="bind the gRPC and HTTP ports with SO_REUSEPORT (set by --workers for its "
        "processes only); otherwise a port another process holds stops the start",
    )
    metrics_port: int | None = setting(
        None, parse=int, doc="serve Prometheus metrics on METRICS_HOST:PORT/metrics (0: any port)"
    )
    metrics_host: str = setting(
        "127.0.0.1", doc="address of the metrics endpoint, whatever --host is"
    )
    metrics_auth: bool = setting(
        False,
        action="store_true",
        doc="the metrics endpoint requires the --auth-token-file token too",
    )
    tls_cert: Path | None = setting(
        None,
        parse=Path,
        protocols=BOTH_PORTS,
        doc="PEM certificate chain; with --tls-key the gRPC and HTTP ports speak TLS only",
    )
    tls_key: Path | None = setting(
        None,
        parse=Path,
        protocols=BOTH_PORTS,
        doc="PEM private key of --tls-cert, for the gRPC and HTTP ports",
    )
    tls_client_ca: Path | None = setting(
        None,
        parse=Path,
        protocols=BOTH_PORTS,
        doc="PEM CA bundle: the gRPC and HTTP ports require client certificates it signed",
    )
    auth_token: str | None = setting(
        None,
        flag="--auth-token-file",
        parse=Path,
        to_setting=read_token,
        metavar="FILE",
        protocols=BOTH_PORTS,
        doc="a file holding one token: every gRPC call and HTTP request must carry "
        "'authorization: Bearer <token>'",
    )
    health_without_auth: bool = setting(
        False,
        action="store_true",
        protocols=BOTH_PORTS,
        doc="leave health open for probes when a token is required: gRPC "
        "grpc.health.v1.Health and HTTP /v2/health/live and /v2/health/ready",
    )
    monitor_sample_rate: float = setting(
        0.25, doc="fraction of requests whose inputs feed the drift monitor (0: off)"
    )
    monitor_window: int = setting(
        256, doc="samples per drift window, as the manifest's thresholds were calibrated"
    )
    # On a compute-bound model the monitor's model time comes out of throughput: at 0.1, interleaved A/Bs of
    # ResNet50 and conv6 at c=8 read 2-8% lost, around the 5% bound; 0.05 halves it (docs/compute-bound.md).
    monitor_max_share: float = setting(
        0.05,
        doc="keep the monitor's model time under this fraction of the served "
        "model's compute time (0: no limit); sampled requests beyond it are "
        "skipped",
    )
    capture_dir: Path | None = setting(
        None,
        parse=nonempty_path,
        doc="append sampled request inputs to DIR/NAME/VERSION/*.npz (for bnserve "
        "export --stats adapt:DIR/NAME/VERSION)",
    )
    capture_rate: float = setting(0.0, doc="fraction of requests captured (with --capture-dir)")
    capture_max_bytes: int = setting(
        1 << 30,
        doc="keep the shards this server family wrote under --capture-dir under this size, oldest "
        "first (no other file there is counted or deleted)",
    )
    otlp_endpoint: str | None = setting(
        None,
        doc="send OpenTelemetry spans of inference requests (decode, queue, compute, encode) over "
        "OTLP/gRPC to this collector, e.g. http://collector:4317 (needs the otel extra)",
    )
    trace_sample_rate: float = setting(
        0.01,
        doc="with --otlp-endpoint, the share of requests traced when the caller sends no W3C "
        "traceparent (one with one is traced as its sampled flag says); 1: every request",
    )
    max_image_bytes: int = setting(
        MAX_IMAGE_BYTES,
        protocols=BOTH_PORTS,
        doc="largest encoded image (PNG or JPEG) one image_bytes element may have, on gRPC and HTTP",
    )
    max_image_pixels: int = setting(
        MAX_IMAGE_PIXELS,
        protocols=BOTH_PORTS,
        doc="most pixels (width x height, as its header declares them) an encoded image may have, on "
        "gRPC and HTTP; checked before anything is decoded, against decompression bombs",
    )
    reject_non_finite: bool = setting(
        False,
        action="store_true",
        protocols=BOTH_PORTS,
        doc="refuse an input holding a NaN or an infinity (gRPC INVALID_ARGUMENT, HTTP 400, naming "
        "the tensor); off: it is served as the model computes it, and kept out of the drift moments",
    )

    def model_directory(self, name: str) -> Path:
        """Where model ``name``'s versions are: --repository itself for --model-name, else REPO/NAME."""
        return self.repository if name == self.model_name else self.repository / name

    def __post_init__(self):
        if not self.repository.is_dir():
            raise UserError(f"--repository {str(self.repository)!r}: no such directory")
        if self.otlp_endpoint is not None and not re.fullmatch(
            r"https?://[^\s/:]+(:\d{1,5})?/?", self.otlp_endpoint
        ):
            raise UserError(
                f"--otlp-endpoint {self.otlp_endpoint!r}: expected http://HOST:PORT or "
                "https://HOST:PORT (an OTLP/gRPC collector)"
            )
        if self.model_name is not None:
            try:
                validate_model_name(self.model_name)
            except UserError as exc:
                raise UserError(f"--model-name: {exc}") from None
            if (self.repository / "manifest.json").exists():
                raise UserError(
                    f"--repository {str(self.repository)!r} with --model-name: it holds manifest.json, "
                    "so it is one version; give the model's directory (versions 1, 2, ... inside it) "
                    "or the whole repository"
                )
        addresses: dict[str, set[str]] = {}
        for flag, host in (("--host", self.host), ("--metrics-host", self.metrics_host)):
            try:  # before anything loads: an unresolvable name is not a busy port
                addresses[flag] = {info[4][0] for info in socket.getaddrinfo(host, None)}
            except (socket.gaierror, UnicodeError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise UserError(f"{flag} {host!r}: the name does not resolve ({reason})") from None
        if self.backend not in BACKENDS:
            raise UserError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if not 0 <= self.grpc_port <= 65535:
            raise UserError(f"--grpc-port {self.grpc_port}: expected 0 to 65535")
        if not 0 <= self.http_port <= 65535:
            raise UserError(f"--http-port {self.http_port}: expected 1 to 65535, or 0 for no HTTP")
        check_batching(
            "--",
            self.max_batch_size,
            self.max_queue_delay_us,
            self.max_queue_size,
            self.instances,
            self.inline_compute_us,
            self.long_call_us,
            self.busy_queue_delay_us,
        )
        for name in self.model_options:
            self.batching_options(name)
        if self.intra_op_threads < 0:
            raise UserError(f"--intra-op-threads {self.intra_op_threads}: expected >= 0")
        if self.max_message_bytes < 1024:
            raise UserError(f"--max-message-bytes {self.max_message_bytes}: expected at least 1024")
        if self.grace_seconds < 0:
            raise UserError(f"--grace-seconds {self.grace_seconds}: expected >= 0")
        if self.poll_seconds < 0:
            raise UserError(
                f"--poll-seconds {self.poll_seconds}: expected >= 0 (0 turns polling off)"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise UserError(f"--metrics-port {self.metrics_port}: expected 0 to 65535")
        ports = [("--grpc-port", self.grpc_port), ("--http-port", self.http_port)]
        wildcards = {"", "0.0.0.0", "::", "[::]"}  # a wildcard address overlaps every other address
        if self.metrics_port is not None and (
            self.metrics_host == self.host
            or {self.metrics_host, self.host} & wildcards
            # two names for one address ("localhost" and 127.0.0.1) bind the same socket
            or addresses["--host"] & addresses["--metrics-host"]
        ):
            ports.append(("--metrics-port", self.metrics_port))
        for index, (flag, port) in enumerate(ports):
            for other, same in ports[:index]:
                if port and port == same:  # else the second bind fails with a bare "address in use"
                    raise UserError(f"{flag} {port}: the same port as {other}; each needs its own")
        if self.max_connections < 1:
            raise UserError(
                f"--max-connections {self.max_connections}: expected a positive integer"
            )
        for flag, value in (
            ("--connection-idle-seconds", self.connection_idle_seconds),
            ("--handshake-seconds", self.handshake_seconds),
        ):
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{flag} {value}: expected a positive number of seconds")
        if self.model_control not in MODEL_CONTROL_MODES:
            raise UserError(
                f"--model-control {self.model_control!r}: expected one of {', '.join(MODEL_CONTROL_MODES)}"
            )
        if self.metrics_auth and not self.auth_token:
            raise UserError(
                "--metrics-auth: needs --auth-token-file (the metrics endpoint checks the same token)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UserError("--tls-cert and --tls-key: expected both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise UserError("--tls-client-ca: needs --tls-cert and --tls-key")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
        ):
            if path is not None and not path.is_file():
                raise UserError(f"{flag} {str(path)!r}: no such file")
        if self.tls_cert is not None:
            check_tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        for flag, value in (
            ("--monitor-sample-rate", self.monitor_sample_rate),
            ("--capture-rate", self.capture_rate),
        ):
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise UserError(f"{flag} {value}: expected a fraction from 0 to 1")
        if not (math.isfinite(self.monitor_max_share) and self.monitor_max_share >= 0):
            raise UserError(
                f"--monitor-max-share {self.monitor_max_share}: expected a fraction >= 0 (0: no limit)"
            )
        if self.monitor_window < 16:
            raise UserError(f"--monitor-window {self.monitor_window}: expected at least 16 samples")
        if (self.capture_dir is None) != (self.capture_rate == 0):
            raise UserError(
                "--capture-dir and --capture-rate: expected both (capture on) or neither"
            )
        if self.capture_max_bytes < 1 << 20:
            raise UserError(
                f"--capture-max-bytes {self.capture_max_bytes}: expected at least 1048576 (1 MiB)"
            )
        if (
            self.capture_dir is not None
            and self.capture_dir.exists()
            and not self.capture_dir.is_dir()
        ):
            raise UserError(
                f"--capture-dir {str(self.capture_dir)!r}: exists and is not a directory"
            )
        for key in BOUNDS:  # after the checks above, whose messages say more about the lower ends
            check_bound(flag_of(SETTING_FIELDS[key]), key, getattr(self, key))
        if self.capture_dir is not None:
            capture, repository = self.capture_dir.resolve(), self.repository.resolve()
            if capture.is_relative_to(repository) or repository.is_relative_to(capture):
                raise UserError(
                    f"--capture-dir {str(self.capture_dir)!r}: overlaps --repository "
                    f"{str(self.repository)!r} (after resolving links); capture into a directory "
                    "outside the repository, which it must never write into or delete from"
                )

    @property
    def polling(self) -> bool:
        return self.model_control == "poll" and self.poll_seconds > 0

    def batching_options(self, model: str = "") -> BatchingOptions:
        """The server-wide batching settings with ``model``'s --model-option overrides applied."""
        options = BatchingOptions(
            self.max_batch_size,
            self.max_queue_delay_us,
            self.max_queue_size,
            self.instances,
            coalesce=self.dynamic_batching,
            inline_compute_us=self.inline_compute_us,
            long_call_us=self.long_call_us,
            busy_queue_delay_us=self.busy_queue_delay_us,
        )
        overrides = self.model_options.get(model, {})
        if overrides:
            options = replace(options, **overrides)
            check_batching(
                f"--model-option {model}:",
                options.max_batch_size,
                options.max_queue_delay_us,
                options.max_queue_size,
                options.instances,
                options.inline_compute_us,
                options.long_call_us,
                options.busy_queue_delay_us,
            )
        return options

    def server_credentials(self):
        """grpc server credentials for TLS (None: plaintext)."""
        if self.tls_cert is None:
            return None
        import grpc

        return grpc.ssl_server_credentials(
            [(self.tls_key.read_bytes(), self.tls_cert.read_bytes())],
            root_certificates=self.tls_client_ca.read_bytes() if self.tls_client_ca else None,
            require_client_auth=self.tls_client_ca is not None,
        )


SETTING_FIELDS = {
    setting_field.name: setting_field for setting_field in dataclasses.fields(ServerSettings)
}


def flag_of(setting_field: dataclasses.Field) -> str:
    return setting_field.metadata["flag"] or "--" + setting_field.name.replace("_", "-")


def flag_default(setting_field: dataclasses.Field):
    """The flag's default: the field's own, or its text when the flag's value is converted (``to_setting``)."""
    meta = setting_field.metadata
    if meta["flag_default"] is not dataclasses.MISSING:
        default = meta["flag_default"]
        return list(default) if isinstance(default, list) else default
    if setting_field.default_factory is not dataclasses.MISSING:
        return setting_field.default_factory()
    return None if setting_field.default is dataclasses.MISSING else setting_field.default


def help_text(setting_field: dataclasses.Field) -> str:
    meta, default = setting_field.metadata, flag_default(setting_field)
    shown = "" if default in (None, False, []) or meta["action"] else f" (default {default})"
    return (meta["doc"] + shown).replace("%", "%%")


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerSettings field, from the field's own declaration (``setting``)."""
    for setting_field in dataclasses.fields(ServerSettings):
        meta = setting_field.metadata
        options: dict[str, Any] = {
            "dest": setting_field.name,
            "help": argparse.SUPPRESS if meta["hidden"] else help_text(setting_field),
        }
        if meta["action"] == "store_true":
            options["action"] = "store_true"
        else:
            default = flag_default(setting_field)
            if (
                setting_field.default is dataclasses.MISSING
                and setting_field.default_factory is dataclasses.MISSING
            ):
                options["required"] = True
            else:
                options["default"] = default
            if meta["action"]:
                options["action"] = meta["action"]
            options["type"] = meta["parse"] or (type(default) if default is not None else str)
            if meta["choices"]:
                options["choices"] = meta["choices"]
            if meta["metavar"]:
                options["metavar"] = meta["metavar"]
        parser.add_argument(flag_of(setting_field), **options)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """ServerSettings from the flags that add_setting_flags declared (converted where the field says so)."""
    values = {}
    for setting_field in dataclasses.fields(ServerSettings):
        value = getattr(args, setting_field.name)
        convert = setting_field.metadata["to_setting"]
        values[setting_field.name] = (
            convert(value) if convert is not None and value is not None else value
        )
    return ServerSettings(**values)
