"""``--workers N``: N server processes on one port (SO_REUSEPORT), each with its own sessions.

The parent binds the port with SO_REUSEPORT (choosing one when --grpc-port is 0) and holds it, so no
other program can take it, but never listens: the kernel spreads new connections over the workers,
which bind the same port with gRPC's default SO_REUSEPORT. SO_REUSEPORT alone would also let a second
``--workers`` family of the same user join the port (the kernel then splits connections between two
repositories), so the parent also holds a lock named after each port (an abstract Unix socket, freed by
the kernel when the process dies): a second family stops with "port in use".

SIGINT, SIGTERM and SIGHUP (a terminal that closed) all mean a graceful stop, passed on to every worker
as SIGTERM; the parent exits 0 when all of them did. Workers die with their parent: each asks the kernel
for SIGTERM when the parent goes (PR_SET_PDEATHSIG), so even ``kill -9`` of the parent leaves no server
behind.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bnserve.core.errors import UserError

log = logging.getLogger("bnserve.server")


CLOSING_STATES = {"04", "05", "06", "09", "0B"}
"""/proc/net/tcp states of a connection closed and winding down (FIN_WAIT1, FIN_WAIT2, TIME_WAIT, LAST_ACK,
CLOSING): they keep its local port bound, TIME_WAIT for a minute, while nobody serves on it."""


def held_only_by_closed_connections(port: int) -> bool:
    """Whether every TCP socket on local ``port`` (IPv4 and IPv6, /proc/net/tcp and tcp6) is a closed
    connection winding down; False when one listens or is open, or when /proc cannot tell."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            return False
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states.append(fields[3])
    return bool(states) and all(state in CLOSING_STATES for state in states)


def reserve_port(host: str, port: int) -> socket.socket:
    """The port, bound (never listening) with SO_REUSEPORT only, so that no other server can bind it,
    SO_REUSEADDR ones included, until the workers listen on it.

    A server that stopped leaves the server side of its closed connections in TIME_WAIT for a minute, and
    without SO_REUSEADDR that bind fails: a restart of --workers on the ports of a single server that had
    just answered on them stopped with "port in use". Only then, when /proc shows nothing on the port but
    such connections, is it bound with SO_REUSEADDR too (as gRPC core and asyncio bind every server)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        try:
            reservation.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not port:
                raise
            if not held_only_by_closed_connections(port):
                raise
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            reservation.bind((host, port))
    except OSError:
        reservation.close()
        raise
    return reservation


def lock_port(port: int) -> socket.socket:
    """A lock that only one ``--workers`` family can hold for ``port`` (OSError when another holds it)."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lock.bind(f"\0bnserve-workers-port-{port}")
    return lock


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In the worker before it runs: SIGTERM when the parent dies; exits at once if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


REPLACED = ("--workers", "--grpc-port", "--metrics-port", "--metrics-host", "--http-port")


def worker_arguments(
    argv: list[str], port: int, index: int, metrics_port: int | None, http_port: int = 0
) -> list[str]:
    """Worker ``index``'s serve arguments: the reserved gRPC and HTTP ports, and ``metrics_port`` on
    127.0.0.1 (its own counters, which the parent sums into the replica's /metrics)."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument in REPLACED:
            skip = True
            continue
        if argument.startswith(tuple(f"{flag}=" for flag in REPLACED)):
            continue
        kept.append(argument)
    kept += [
        "--grpc-port",
        str(port),
        "--http-port",
        str(http_port),
        "--workers",
        "1",
        "--share-port",
    ]
    if metrics_port is not None:  # the worker's own, private: the parent serves the replica's total
        kept += ["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]
    return kept


RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STABLE_AFTER_S = 60.0
"""A worker that ran this long before dying is restarted after RESTART_DELAY_S again, not the grown delay."""
EXIT_USER_ERROR = 2


def private_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_workers(
    host: str,
    port: int,
    workers: int,
    argv: list[str],
    metrics_port: int | None = None,
    http_port: int = 0,
    metrics_host: str = "127.0.0.1",
    metrics_token: str | None = None,
) -> int:
    """Start the workers, restart any that dies (delay doubling from 1 s up to 30 s), pass SIGTERM/SIGINT on.

    A worker that exits with status 2 (a user error, e.g. a port it cannot bind) is not restarted: every
    worker is stopped and the parent exits 2. On shutdown the parent exits 0 when every worker did.
    """
    held = []
    for flag, wanted in (("--grpc-port", port), ("--http-port", http_port)):
        if flag == "--http-port" and not wanted:
            continue
        try:
            reservation = reserve_port(host, wanted)
            held.append(reservation)
            bound = reservation.getsockname()[1]
            held.append(lock_port(bound))
        except OSError as exc:
            for sock in held:
                sock.close()
            raise UserError(
                f"{flag} {wanted}: port {wanted} is in use on {host} ({exc.strerror or exc})"
            ) from None
        if flag == "--grpc-port":
            port = bound
    parent = os.getpid()
    worker_metrics = [private_port() for _ in range(workers)] if metrics_port is not None else []
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry

        from bnserve.server.auth import BearerToken
        from bnserve.server.metrics import WorkersCollector, serve_metrics

        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkersCollector(worker_metrics, metrics_token))
        try:
            bound = serve_metrics(
                metrics_host,
                metrics_port,
                BearerToken(metrics_token) if metrics_token else None,
                registry,
            )
        except OSError as exc:
            for sock in held:
                sock.close()
            raise UserError(
                f"--metrics-port {metrics_port}: cannot serve metrics on {metrics_host}:"
                f"{metrics_port} ({exc.strerror})"
            ) from None
        log.info(
            "metrics on http://%s:%d/metrics (the sum of the %d workers)",
            metrics_host,
            bound,
            workers,
        )

    def start(index: int) -> subprocess.Popen:
        private = worker_metrics[index] if worker_metrics else None
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bnserve.cli",
                *worker_arguments(argv, port, index, private, http_port),
            ],
            preexec_fn=lambda: die_with_parent(parent),
        )

    children = [start(i) for i in range(workers)]
    started = [time.monotonic()] * workers
    delays = [RESTART_DELAY_S] * workers
    restart_at: dict[int, float] = {}
    log.info(
        "started %d workers on %s:%d (pids %s)",
        workers,
        host,
        port,
        ", ".join(str(c.pid) for c in children),
    )
    stopping = []

    def forward(signum, frame):
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    user_error = False
    while True:
        now = time.monotonic()
        for index, child in enumerate(children):
            code = child.poll()
            if code is None or stopping or index in restart_at:
                continue
            if code == EXIT_USER_ERROR:
                log.error(
                    "worker %d (pid %d) refused to start (exit status 2): stopping every worker",
                    index,
                    child.pid,
                )
                user_error = True
                forward(signal.SIGTERM, None)
                break
            if now - started[index] > STABLE_AFTER_S:
                delays[index] = RESTART_DELAY_S
            log.error(
                "worker %d (pid %d) died with exit status %s; restarting it in %.0f s",
                index,
                child.pid,
                code,
                delays[index],
            )
            restart_at[index] = now + delays[index]
        for index, when in list(restart_at.items()):
            if stopping:
                del restart_at[index]
            elif now >= when:
                del restart_at[index]
                children[index] = start(index)
                started[index] = time.monotonic()
                delays[index] = min(2 * delays[index], MAX_RESTART_DELAY_S)
                log.info("restarted worker %d (pid %d)", index, children[index].pid)
        if stopping and all(child.poll() is not None for child in children):
            break
        time.sleep(0.1)
    codes = [child.wait() for child in children]
    for sock in held:
        sock.close()
    log.info("all workers stopped (exit codes %s)", codes)
    if user_error:
        return EXIT_USER_ERROR
    return 0 if all(code == 0 for code in codes) else 1
