"""Starting a real server process on 127.0.0.1 port 0 and stopping it with SIGTERM (tests and bench/)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"listening on (?:127\.0\.0\.1|0\.0\.0\.0):(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log: list[str] = field(default_factory=list)
    http_port: int | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop_cutting_the_drain(self, timeout: float = 30) -> int:
        """SIGTERM, and once the server says it is stopping, a second one: that ends --drain-seconds."""
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not any(line.startswith("stopping") or " stopping: " in line for line in self.log):
            if time.monotonic() > deadline or self.process.poll() is not None:
                break
            time.sleep(0.05)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))

    def loaded_libraries(self) -> str:
        return Path(f"/proc/{self.process.pid}/maps").read_text()


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0, released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    repository: Path,
    *flags: str,
    timeout: float = 120,
    http: bool = False,
    pin: str | None = None,
    prefix: tuple[str, ...] = (),
) -> ServerProcess:
    """`bnserve serve` on 127.0.0.1, gRPC port 0; with ``http`` the HTTP port too (a free one), else no HTTP
    (its default, 8501, would collide between servers); ``pin``: under ``taskset -c PIN`` (bench/); ``prefix``:
    under that command (bench/instructions.py: valgrind)."""
    http_port = free_port() if http else 0
    server = start_listening(
        [
            *prefix,
            *(["taskset", "-c", pin] if pin else []),
            sys.executable,
            "-m",
            "bnserve.cli",
            "serve",
            "--repository",
            str(repository),
            "--grpc-port",
            "0",
            "--http-port",
            str(http_port),
            *flags,
        ],
        timeout,
    )
    server.http_port = http_port or None
    return server


def start_listening(
    command: list[str], timeout: float = 120, env: dict | None = None, cwd: Path | None = None
) -> ServerProcess:
    """Start ``command`` (in ``env`` and ``cwd`` when given) and wait for its "listening on
    127.0.0.1:PORT" line."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    lines: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def pump():  # keeps draining the pipe so the server never blocks on a full stdout
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = LISTENING.search(line)
            if match and not port:
                port.append(int(match.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("server did not start:\n" + "\n".join(lines))
    if not port:
        process.wait(timeout=10)
        raise RuntimeError(f"server exited with {process.returncode}:\n" + "\n".join(lines))
    return ServerProcess(process, port[0], lines)
