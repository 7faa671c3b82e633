"""``--workers N``: N server processes on one port (SO_REUSEPORT), each with its own sessions.

The parent binds the port with SO_REUSEPORT (choosing one when --grpc-port is 0) and holds it, so no
other program can take it, but never listens: the kernel spreads new connections over the workers,
which bind the same port with gRPC's default SO_REUSEPORT. SIGINT/SIGTERM are passed on to every
worker; the parent exits 0 when all of them did.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys

log = logging.getLogger("bnserve.server")


def reserve_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.bind((host, port))
    return reservation


REPLACED = ("--workers", "--grpc-port", "--metrics-port")


def worker_arguments(argv: list[str], port: int, index: int, metrics_port: int | None) -> list[str]:
    """Worker ``index``'s serve arguments: the reserved gRPC port, and metrics on port + index
    (each process has its own counters; with port 0 each picks a free one)."""
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
    kept += ["--grpc-port", str(port), "--workers", "1"]
    if metrics_port is not None:
        kept += ["--metrics-port", str(metrics_port + index if metrics_port else 0)]
    return kept


def run_workers(host: str, port: int, workers: int, argv: list[str], metrics_port: int | None = None) -> int:
    reservation = reserve_port(host, port)
    port = reservation.getsockname()[1]
    children = [subprocess.Popen([sys.executable, "-m", "bnserve.cli", *worker_arguments(argv, port, i, metrics_port)])
                for i in range(workers)]
    log.info("started %d workers on %s:%d (pids %s)", workers, host, port, ", ".join(str(c.pid) for c in children))

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    reservation.close()
    log.info("all workers stopped (exit codes %s)", codes)
    return 0 if all(code == 0 for code in codes) else 1
