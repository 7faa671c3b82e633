"""Server settings, declared once, validated before anything starts."""

from __future__ import annotations

import math

from dataclasses import dataclass, field, replace
from pathlib import Path

from bnserve.core.errors import UserError
from bnserve.server.backends import BACKENDS, DEVICES
from bnserve.server.batching import BatchingOptions


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
        raise UserError(f"--version-policy {text!r}: expected latest:N (N >= 1), all, or specific:V1,V2 (V >= 1)")

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        return "all" if self.kind == "all" else "specific:" + ",".join(map(str, self.versions))


MODEL_OPTION_KEYS = {"max_batch_size": "max_batch_size", "max_queue_delay_us": "max_queue_delay_us",
                     "max_queue_size": "max_queue_size", "instances": "instances", "dynamic_batching": "coalesce",
                     "inline_compute_us": "inline_compute_us"}


def check_batching(prefix: str, max_batch_size: int, max_queue_delay_us: int, max_queue_size: int,
                   instances: int, inline_compute_us: int = 0) -> None:
    """Range checks shared by the server-wide flags (prefix "--") and --model-option overrides."""
    for key, value, low in (("max-batch-size", max_batch_size, 1), ("max-queue-delay-us", max_queue_delay_us, 0),
                            ("max-queue-size", max_queue_size, 1), ("instances", instances, 1),
                            ("inline-compute-us", inline_compute_us, 0)):
        if value < low:
            name = key if prefix == "--" else key.replace("-", "_")
            raise UserError(f"{prefix}{name} {value}: expected an integer >= {low}")


def parse_model_option(text: str) -> tuple[str, dict]:
    """``NAME:key=value[,key=value]`` with keys max_batch_size, max_queue_delay_us, max_queue_size,
    instances, inline_compute_us (integers) and dynamic_batching (on/off)."""
    name, _, assignments = text.partition(":")
    if not name or not assignments:
        raise UserError(f"--model-option {text!r}: expected NAME:key=value[,key=value]")
    overrides = {}
    for assignment in assignments.split(","):
        key, _, value = assignment.partition("=")
        if key not in MODEL_OPTION_KEYS:
            raise UserError(f"--model-option {text!r}: unknown key {key!r}; expected one of {', '.join(MODEL_OPTION_KEYS)}")
        if key == "dynamic_batching":
            if value not in ("on", "off"):
                raise UserError(f"--model-option {text!r}: dynamic_batching expects on or off, got {value!r}")
            overrides["coalesce"] = value == "on"
            continue
        try:
            overrides[MODEL_OPTION_KEYS[key]] = int(value)
        except ValueError:
            raise UserError(f"--model-option {text!r}: {key} expects an integer, got {value!r}") from None
    return name, overrides


MODEL_CONTROL_MODES = ("poll", "none", "explicit")
STREAM_WINDOW = 16
"""Requests of one ModelStreamInfer stream read and not yet answered to the client, at most."""


def check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """The certificate chain and key parse as PEM and belong together, the CA bundle parses: checked with
    the standard library before gRPC sees them, so a bad file is a one-line error, not a crash."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise UserError(f"--tls-cert {str(cert)!r} / --tls-key {str(key)!r}: not a PEM certificate chain and the "
                        f"private key that belongs to it ({exc.reason or exc})") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise UserError(f"--tls-client-ca {str(client_ca)!r}: not a PEM CA bundle ({exc.reason or exc})") from None


@dataclass(frozen=True)
class ServerSettings:
    repository: Path
    """Model repository root (REPO/NAME/VERSION/...)."""
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    """0 picks a free port; the chosen one is logged ("listening on HOST:PORT")."""
    http_port: int = 8501
    """KServe v2 REST and TensorFlow Serving REST on this port, same data plane as gRPC; 0: no HTTP."""
    backend: str = "onnx"
    """"onnx" (ONNX Runtime) or "tf" (TensorFlow SavedModel)."""
    device: str = "auto"
    """"auto": GPU when usable, else CPU; "gpu": fail at start-up without a usable GPU; "cpu"."""
    max_batch_size: int = BatchingOptions.max_batch_size
    """Largest batch one request may carry, and one model call may run (ModelConfig max_batch_size)."""
    dynamic_batching: bool = BatchingOptions.coalesce
    """Coalesce concurrent requests into one model call; off: every request runs alone."""
    max_queue_delay_us: int = BatchingOptions.max_queue_delay_us
    """Longest a batch waits for companions after its oldest request arrived (only while recent
    concurrency says they are coming, see bnserve.server.batching); 0: run as soon as an instance is free."""
    max_queue_size: int = BatchingOptions.max_queue_size
    """Requests waiting per model version; beyond it RESOURCE_EXHAUSTED at once."""
    instances: int = BatchingOptions.instances
    """Model calls per version that may run at the same time."""
    inline_compute_us: int = BatchingOptions.inline_compute_us
    """Model calls measured to take at most this many microseconds run on the event loop, without the
    thread hand-off (see BatchingOptions.inline_compute_us); 0: always on model threads."""
    model_options: dict[str, dict] = field(default_factory=dict)
    """Per-model overrides of the batching settings above: {model: {"max_batch_size": 8, ...}}."""
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    intra_op_threads: int = 0
    """ONNX Runtime intra-op threads per session; 0: one for a light model (a one-row call within
    bnserve.server.backends.onnx.LIGHT_CALL_S on one thread), else ONNX Runtime's default, kept on the cores this
    process may use (bnserve.server.backends.onnx.cpu_pool_threads)."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message received or sent, and largest HTTP request body."""
    grace_seconds: float = 5.0
    """How long in-flight requests may take to finish after SIGTERM/SIGINT, or after their version was superseded."""
    poll_seconds: float = 2.0
    """Interval between repository scans (new, removed, repaired versions); 0: no polling."""
    max_connections: int = 1000
    """Connections each port holds at once (gRPC's max_allowed_incoming_connections; on the HTTP port, counted
    by bnserve.server.rest.CappedSite); more are refused at accept. The process's open-file limit is raised to fit when the hard limit allows."""
    connection_idle_seconds: float = 300.0
    """A connection without calls for this long is closed (GOAWAY); clients reconnect on their next call."""
    handshake_seconds: float = 10.0
    """A connection that has not completed the HTTP/2 handshake (a bare preface, a stalled TLS hello) in
    this time is closed; on the HTTP port, the TLS handshake timeout."""
    model_control: str = "poll"
    """Triton's model control modes. "poll": load the repository at start and follow it every ``poll_seconds``
    (0: never); "none": load it at start, never change; "explicit": load it at start, then change only by the
    RepositoryModelLoad/Unload RPCs. The load/unload RPCs are refused unless "explicit"."""
    share_port: bool = False
    """Bind the gRPC port with SO_REUSEPORT (set for the processes of --workers only); otherwise a port
    that another process holds stops the start with an error."""
    metrics_port: int | None = None
    """Port of the Prometheus /metrics endpoint; None: no endpoint, 0: any free port."""
    metrics_host: str = "127.0.0.1"
    """Address of the /metrics endpoint: loopback unless asked, whatever ``host`` is."""
    metrics_auth: bool = False
    """The /metrics endpoint also requires ``authorization: Bearer <token>`` (the --auth-token-file token)."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key`` the port speaks TLS only."""
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed."""
    auth_token: str | None = None
    """Every RPC must carry ``authorization: Bearer <token>``."""
    health_without_auth: bool = False
    """Leave grpc.health.v1.Health open for probes when a token is required."""
    monitor_sample_rate: float = 0.25
    """Fraction of requests whose inputs feed the drift monitor (0: off). See the README for the measured cost."""
    monitor_window: int = 256
    """Samples per drift window (W); the thresholds in the manifest were calibrated for the export's W."""
    monitor_max_share: float = 0.1
    """The monitor's model time is kept at most this fraction of the served model's compute time (0: no limit)."""
    capture_dir: Path | None = None
    """Append sampled request inputs to DIR/NAME/VERSION/*.npz (off unless set)."""
    capture_rate: float = 0.0
    """Fraction of requests whose inputs are captured (with --capture-dir)."""
    capture_max_bytes: int = 1 << 30
    """--capture-dir is kept under this many bytes; the oldest shards go first."""

    def __post_init__(self):
        if not self.repository.is_dir():
            raise UserError(f"--repository {str(self.repository)!r}: no such directory")
        if self.backend not in BACKENDS:
            raise UserError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if not 0 <= self.grpc_port <= 65535:
            raise UserError(f"--grpc-port {self.grpc_port}: expected 0 to 65535")
        if not 0 <= self.http_port <= 65535:
            raise UserError(f"--http-port {self.http_port}: expected 1 to 65535, or 0 for no HTTP")
        check_batching("--", self.max_batch_size, self.max_queue_delay_us, self.max_queue_size, self.instances,
                       self.inline_compute_us)
        for name in self.model_options:
            self.batching_options(name)
        if self.intra_op_threads < 0:
            raise UserError(f"--intra-op-threads {self.intra_op_threads}: expected >= 0")
        if self.max_message_bytes < 1024:
            raise UserError(f"--max-message-bytes {self.max_message_bytes}: expected at least 1024")
        if self.grace_seconds < 0:
            raise UserError(f"--grace-seconds {self.grace_seconds}: expected >= 0")
        if self.poll_seconds < 0:
            raise UserError(f"--poll-seconds {self.poll_seconds}: expected >= 0 (0 turns polling off)")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise UserError(f"--metrics-port {self.metrics_port}: expected 0 to 65535")
        if self.max_connections < 1:
            raise UserError(f"--max-connections {self.max_connections}: expected a positive integer")
        for flag, value in (("--connection-idle-seconds", self.connection_idle_seconds),
                            ("--handshake-seconds", self.handshake_seconds)):
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{flag} {value}: expected a positive number of seconds")
        if self.model_control not in MODEL_CONTROL_MODES:
            raise UserError(f"--model-control {self.model_control!r}: expected one of {', '.join(MODEL_CONTROL_MODES)}")
        if self.metrics_auth and not self.auth_token:
            raise UserError("--metrics-auth: needs --auth-token-file (the metrics endpoint checks the same token)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UserError("--tls-cert and --tls-key: expected both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise UserError("--tls-client-ca: needs --tls-cert and --tls-key")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--tls-client-ca", self.tls_client_ca)):
            if path is not None and not path.is_file():
                raise UserError(f"{flag} {str(path)!r}: no such file")
        if self.tls_cert is not None:
            check_tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        for flag, value in (("--monitor-sample-rate", self.monitor_sample_rate), ("--capture-rate", self.capture_rate)):
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise UserError(f"{flag} {value}: expected a fraction from 0 to 1")
        if not (math.isfinite(self.monitor_max_share) and self.monitor_max_share >= 0):
            raise UserError(f"--monitor-max-share {self.monitor_max_share}: expected a fraction >= 0 (0: no limit)")
        if self.monitor_window < 16:
            raise UserError(f"--monitor-window {self.monitor_window}: expected at least 16 samples")
        if (self.capture_dir is None) != (self.capture_rate == 0):
            raise UserError("--capture-dir and --capture-rate: expected both (capture on) or neither")
        if self.capture_max_bytes < 1 << 20:
            raise UserError(f"--capture-max-bytes {self.capture_max_bytes}: expected at least 1048576 (1 MiB)")
        if self.capture_dir is not None and self.capture_dir.exists() and not self.capture_dir.is_dir():
            raise UserError(f"--capture-dir {str(self.capture_dir)!r}: exists and is not a directory")

    @property
    def polling(self) -> bool:
        return self.model_control == "poll" and self.poll_seconds > 0

    def batching_options(self, model: str = "") -> BatchingOptions:
        """The server-wide batching settings with ``model``'s --model-option overrides applied."""
        options = BatchingOptions(self.max_batch_size, self.max_queue_delay_us, self.max_queue_size, self.instances,
                                  coalesce=self.dynamic_batching, inline_compute_us=self.inline_compute_us)
        overrides = self.model_options.get(model, {})
        if overrides:
            options = replace(options, **overrides)
            check_batching(f"--model-option {model}:", options.max_batch_size, options.max_queue_delay_us,
                           options.max_queue_size, options.instances, options.inline_compute_us)
        return options

    def server_credentials(self):
        """grpc server credentials for TLS (None: plaintext)."""
        if self.tls_cert is None:
            return None
        import grpc

        return grpc.ssl_server_credentials(
            [(self.tls_key.read_bytes(), self.tls_cert.read_bytes())],
            root_certificates=self.tls_client_ca.read_bytes() if self.tls_client_ca else None,
            require_client_auth=self.tls_client_ca is not None)
