"""Starting a real server process on 127.0.0.1 port 0 and stopping it with SIGTERM (tests and bench/)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def loaded_libraries(self) -> str:
        return Path(f"/proc/{self.process.pid}/maps").read_text()


def start_server(repository: Path, *flags: str, timeout: float = 120) -> ServerProcess:
    """`bnserve serve` on 127.0.0.1, port 0."""
    return start_listening([sys.executable, "-m", "bnserve.cli", "serve", "--repository", str(repository),
                            "--grpc-port", "0", *flags], timeout)


def start_listening(command: list[str], timeout: float = 120) -> ServerProcess:
    """Start ``command`` and wait for its "listening on 127.0.0.1:PORT" line."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
