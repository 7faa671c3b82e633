"""The traffic capture: sampled request inputs appended to DIR/NAME/VERSION/*.npz shards, written by the
monitor's capture thread (never on the request path), for ``bnserve export --stats adapt:DIR/NAME/VERSION``."""

from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bnserve.server import metrics
from bnserve.server.errors import RateLimitedLog

log = logging.getLogger("bnserve.server")

MARKER = ".bnserve-capture"
"""A file in the capture directory holding the directory's marker: the servers that capture into it name
their shards bnserve-capture-MARKER-..., and only files with such names are ever counted or deleted."""
SHARD = re.compile(r"bnserve-capture-(?P<marker>[0-9a-f]{16})-\d{20}-\d+-\d{6}\.npz")


def capture_marker(directory: Path) -> str:
    """The directory's marker, made (atomically) the first time a server captures into it."""
    path = directory / MARKER
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as stream:
            stream.write(secrets.token_hex(8) + "\n")
    except FileExistsError:
        pass
    marker = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{16}", marker):
        raise OSError(f"{path} does not hold a capture marker (16 hexadecimal digits)")
    return marker


class Capture:
    """Appends sampled request inputs to DIR/NAME/VERSION/bnserve-capture-MARKER-*.npz shards (each written
    aside and renamed into place), keeping the shards bearing DIR's marker under ``max_bytes`` by removing
    the oldest of them (no other file is counted or touched); a shard that cannot be written (full disk, a
    link out of DIR) is dropped with a log line and bnserve_capture_failures_total."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        shard_samples: int = 256,
        max_shard_seconds: float = 10.0,
    ):
        self.directory = directory
        self.max_bytes = max_bytes
        self.shard_samples = shard_samples
        self.max_shard_seconds = max_shard_seconds
        self.pending: dict[tuple[str, int], list[np.ndarray]] = {}
        self.started: dict[tuple[str, int], float] = {}
        self.sequence = 0
        self.failure_log = RateLimitedLog(log, 10.0, "failures")
        self.root = directory.resolve()
        self.marker: str | None = None
        self.shards: collections.deque | None = None
        """(path, bytes) of every shard under the directory, oldest first: scanned once, then kept up to date, so
        keeping the budget costs no directory walk per shard."""

    def add(self, name: str, version: int, images: np.ndarray) -> None:
        key = (name, version)
        self.pending.setdefault(key, []).append(images)
        self.started.setdefault(key, time.monotonic())
        if sum(len(a) for a in self.pending[key]) >= self.shard_samples:
            self.flush(key)

    def flush_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for key in list(self.pending):
            if force or now - self.started[key] >= self.max_shard_seconds:
                self.flush(key)

    def flush(self, key: tuple[str, int]) -> None:
        arrays = self.pending.pop(key, [])
        self.started.pop(key, None)
        if not arrays:
            return
        images = np.concatenate(arrays)
        target_dir = self.directory / key[0] / str(key[1])
        self.sequence += 1
        try:
            if self.marker is None:
                self.marker = capture_marker(self.directory)
            # Sortable by time within the marker: the oldest shards go first when over the budget.
            target = target_dir / (
                f"bnserve-capture-{self.marker}-{time.time_ns():020d}-{os.getpid()}-{self.sequence:06d}.npz"
            )
            # Checked before mkdir too: a DIR/NAME link must not even get a directory made behind it.
            for _ in range(2):
                if not self.inside(target_dir):
                    raise OSError(
                        f"{target_dir} leads outside --capture-dir {self.directory} (a link)"
                    )
                target_dir.mkdir(parents=True, exist_ok=True)
            needed = images.nbytes + 4096
            if shutil.disk_usage(target_dir).free < 2 * needed:
                raise OSError(28, "not enough free space for the shard")
            handle, temporary = tempfile.mkstemp(
                dir=target_dir, prefix=".shard-", suffix=".npz.tmp"
            )
            try:
                with os.fdopen(handle, "wb") as stream:
                    np.savez(stream, x=images)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            metrics.CAPTURED_SAMPLES.labels(key[0], str(key[1])).inc(len(images))
            self.enforce_budget(target)
        except OSError as exc:
            metrics.CAPTURE_FAILURES.labels(key[0], str(key[1])).inc()
            self.failure_log.log(
                logging.ERROR,
                "capture: could not write a shard of %d samples under %s (%s); the "
                "samples are dropped, serving is not affected",
                len(images),
                target_dir,
                exc.strerror or exc,
            )

    def inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def own_shards(self) -> list[Path]:
        """This directory's shards (its marker in their names), oldest first; files of any other name, and
        anything behind a link that leaves the directory, are never counted or touched."""
        found = []
        for path in self.directory.glob("*/*/bnserve-capture-*.npz"):
            match = SHARD.fullmatch(path.name)
            if (
                match
                and match["marker"] == self.marker
                and not path.is_symlink()
                and self.inside(path)
            ):
                found.append(path)
        return sorted(found, key=lambda p: p.name)

    def enforce_budget(self, written: Path) -> None:
        """Remove this directory's oldest shards until they hold at most max_bytes together."""
        if self.shards is None:  # shards left by an earlier run count too
            found = self.own_shards()
            self.shards = collections.deque((p, p.stat().st_size) for p in found)
            self.total = sum(size for _, size in self.shards)
        else:
            size = written.stat().st_size
            self.shards.append((written, size))
            self.total += size
        while self.total > self.max_bytes and self.shards:
            oldest, size = self.shards.popleft()
            oldest.unlink(missing_ok=True)
            self.total -= size
