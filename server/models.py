"""The registry of the models being served: loading versions by policy, their states, lookup. What is on
disk is found by bnserve.server.repository_scan."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bnserve.core.errors import UserError
from bnserve.core.golden import GOLDEN, GoldenCheck, check_golden, read_golden
from bnserve.core.images import IMAGE_BYTES_INPUT
from bnserve.core.repository import (
    INPUT_NAME,
    OUTPUT_NAMES,
    Manifest,
    TensorSpec,
    parse_version,
    read_manifest,
    validate_model_name,
    verify_files,
)
from bnserve.server import metrics
from bnserve.server.backends import Backend, check_signature, load_backend
from bnserve.server.errors import ModelNotFound, StartupError
from bnserve.server.repository_scan import RepositoryScan, ScannedVersion, scan_model
from bnserve.server.settings import ServerSettings, VersionPolicy
from bnserve.server.statistics import VersionStatistics

log = logging.getLogger("bnserve.server")

READY, UNAVAILABLE, UNLOADED = "READY", "UNAVAILABLE", "UNLOADED"
UNLOADING = "UNLOADING"
"""A served version while the server drains: it finishes what it holds and takes nothing new."""
SERVED_DATATYPES = ("FP32",)


@dataclass
class ServedVersion:
    name: str
    version: int
    manifest: Manifest
    backend: Backend
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    golden: GoldenCheck | None = None
    """The load-time golden check on this backend and device; None: exported without golden samples."""
    signature: tuple = ()
    """The files as they were when this version was verified (see ScannedVersion.signature)."""
    calibration: dict[int, int] = field(default_factory=dict)
    """{batch rows: ns} of the load-time calls (warm-up, golden samples): the batcher's first compute times."""
    statistics: VersionStatistics = field(default_factory=VersionStatistics)
    in_flight: int = 0
    """Requests inside DataPlane.infer for this version (bnserve_inflight_requests, read at scrape)."""
    directory: Path | None = None
    """REPO/NAME/VERSION, where the monitor finds monitor.onnx."""

    @functools.cached_property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """What metadata declares: the tensor input, then, where the manifest maps pixels to values, the
        alternative BYTES input of encoded images [N] (bnserve.core.images)."""
        if self.manifest.image_bytes is None:
            return (self.input,)
        return (self.input, TensorSpec(IMAGE_BYTES_INPUT, "BYTES", (-1,)))

    @functools.cached_property
    def output_names(self) -> list[str]:
        """Shared by every request that asks for all outputs: read, never modified."""
        return [spec.name for spec in self.outputs]

    @functools.cached_property
    def output_row_bytes(self) -> dict[str, int]:
        """Bytes one row of each output takes (FP32): prod(shape[1:]) x 4."""
        return {spec.name: math.prod(spec.shape[1:]) * 4 for spec in self.outputs}

    @functools.cached_property
    def all_outputs_row_bytes(self) -> int:
        """Bytes one row of all outputs takes: the sum of output_row_bytes."""
        return sum(self.output_row_bytes.values())


@dataclass(frozen=True)
class VersionState:
    """One row of RepositoryIndex: READY, UNAVAILABLE (with the reason) or UNLOADED."""

    name: str
    version: int
    state: str
    reason: str = ""


def chosen_versions(available: list[int], policy: VersionPolicy) -> list[int]:
    """Versions to try, newest first. For latest:N the caller stops after N successful loads."""
    newest_first = sorted(available, reverse=True)
    if policy.kind == "specific":
        return [v for v in newest_first if v in policy.versions]
    return newest_first


def open_version(
    name: str, version: int, directory: Path, settings: ServerSettings, signature: tuple = ()
) -> ServedVersion:
    """Verify the manifest and every file's hash, then load the backend; raises with the reason."""
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    inputs, outputs = list(manifest.inputs), manifest.outputs
    if [spec.name for spec in inputs] != [INPUT_NAME] or tuple(
        spec.name for spec in outputs
    ) != OUTPUT_NAMES:
        raise UserError(
            f"manifest declares inputs {[s.name for s in inputs]} and outputs {[s.name for s in outputs]}"
        )
    for spec in (*inputs, *outputs):
        if spec.datatype not in SERVED_DATATYPES:
            raise UserError(
                f"manifest: {spec.name!r} is declared {spec.datatype}; this server serves "
                f"{', '.join(SERVED_DATATYPES)} tensors only"
            )
    backend = load_backend(settings.backend, directory, settings.device, settings.intra_op_threads)
    check_signature(
        inputs,
        list(outputs),
        backend,
        "model.onnx" if settings.backend == "onnx" else "the SavedModel",
    )
    # Warm-up: one inference before the version takes traffic (first-call allocations, and a model
    # that loads but cannot run is refused here rather than on a client's request).
    warm = backend.run(
        np.zeros((1, *inputs[0].shape[1:]), np.float32), [spec.name for spec in outputs]
    )
    for spec in outputs:
        if warm[spec.name].shape != (1, *spec.shape[1:]):
            raise UserError(
                f"output {spec.name!r}: the model answered shape {list(warm[spec.name].shape)} for one "
                f"input row; the manifest declares {list(spec.shape)}"
            )
    calibration: dict[int, int] = {}

    def timed_run(images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        started = time.perf_counter_ns()
        results = backend.run(images, names)
        calibration[len(images)] = time.perf_counter_ns() - started
        return results

    timed_run(
        np.zeros((1, *inputs[0].shape[1:]), np.float32), [spec.name for spec in outputs]
    )  # after first-call costs
    golden = prove_golden(
        name,
        version,
        directory,
        manifest,
        timed_run,
        settings.batching_options(name).max_batch_size,
    )
    return ServedVersion(
        name,
        version,
        manifest,
        backend,
        inputs[0],
        outputs,
        golden,
        signature,
        calibration,
        directory=directory,
    )


def prove_golden(
    name: str,
    version: int,
    directory: Path,
    manifest: Manifest,
    run: Callable[[np.ndarray, list[str]], dict[str, np.ndarray]],
    max_batch_size: int,
) -> GoldenCheck | None:
    """Run the version's golden samples on this backend and device, in batches of at most the
    served maximum; refuse the version (UserError) when an output differs beyond the certificate's
    tolerance. None for versions exported before golden samples existed (they load, unverified)."""
    if GOLDEN not in manifest.files:
        log.warning(
            "model %r version %d is unverified: it has no %s (exported before load-time parity checks)",
            name,
            version,
            GOLDEN,
        )
        return None
    check = check_golden(
        lambda images: run(images, list(OUTPUT_NAMES)),
        read_golden(directory / GOLDEN),
        max_batch_size,
    )
    if not check.passed:
        raise UserError(check.describe())
    log.info("model %r version %d: %s", name, version, check.describe())
    metrics.PARITY_MAX_ABS_ERROR.labels(name, str(version)).set(check.max_abs_error)
    return check


def forget_version_metrics(name: str, version: int) -> None:
    try:
        metrics.PARITY_MAX_ABS_ERROR.remove(name, str(version))
    except KeyError:  # an unverified version never had the gauge
        pass


class ModelRegistry:
    """Loads models from the repository; lookups are safe from any thread (one lock)."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._served: dict[str, dict[int, ServedVersion]] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._problems: dict[str, str] = {}

    def load_all(self, scan: RepositoryScan) -> None:
        self.set_problems(scan.problems)
        for name, versions in scan.models.items():
            self.load(name, versions)

    def set_problems(self, problems: dict[str, str]) -> None:
        """Top-level entries that are not models: each logged once when it appears, listed by index()."""
        with self._lock:
            new = {
                name: reason
                for name, reason in problems.items()
                if self._problems.get(name) != reason
            }
            self._problems = dict(problems)
        for name, reason in new.items():
            log.warning("ignored repository entry %r: %s", name, reason)

    def load(
        self, name: str, scanned: dict[int, ScannedVersion] | None = None
    ) -> list[VersionState]:
        """(Re)load ``name`` by the version policy; versions that fail are refused, the rest serve.

        ``scanned`` is the model's part of a repository scan (scanned now when None). A version already
        served keeps serving while its files are unchanged; when they changed, it is verified again
        from scratch, and served no more if that fails.
        """
        try:
            validate_model_name(name)
        except UserError:
            raise ModelNotFound(name) from None
        directory = self.settings.model_directory(name)
        available = (
            scanned
            if scanned is not None
            else scan_model(self.settings.repository, name, directory)
        )
        if not available:
            raise ModelNotFound(name, reason=f"no version directory under {str(directory)!r}")
        policy = self.settings.version_policy
        served, states = {}, {}
        with self._lock:
            previous = dict(self._served.get(name, {}))
        for version in chosen_versions(list(available), policy):
            if policy.kind == "latest" and len(served) == policy.count:
                break
            found = available[version]
            if version in previous and previous[version].signature == found.signature:
                served[version] = previous[version]
                states[version] = VersionState(name, version, READY)
                continue
            if version in previous:
                log.warning(
                    "model %r version %d changed on disk after it was loaded (versions are immutable): "
                    "verifying it again",
                    name,
                    version,
                )
            try:
                if found.problem:
                    raise UserError(found.problem)
                served[version] = open_version(
                    name, version, found.directory, self.settings, found.signature
                )
            except StartupError:
                raise
            # Any reason a version cannot serve: refuse it, keep the others
            except Exception as exc:
                reason = str(exc).replace(str(found.directory), f"{name}/{version}")
                if version in previous:
                    reason = f"changed on disk after it was loaded, no longer served: {reason}"
                states[version] = VersionState(name, version, UNAVAILABLE, reason)
                log.warning("refused model %r version %d: %s", name, version, reason)
                metrics.LOAD_FAILURES.labels(name).inc()
                continue
            states[version] = VersionState(name, version, READY)
            backend = served[version].backend
            log.info(
                "loaded model %r version %d (%s on %s)",
                name,
                version,
                backend.platform,
                backend.device,
            )
        for version in available:
            states.setdefault(
                version,
                VersionState(
                    name, version, UNLOADED, f"not selected by the version policy {policy}"
                ),
            )
        with self._lock:
            self._served[name] = served
            self._states[name] = states
        metrics.LOADED_VERSIONS.labels(name).set(len(served))
        for version in set(previous) - set(served):
            forget_version_metrics(name, version)
            log.info("unloaded model %r version %d", name, version)
        return sorted(states.values(), key=lambda s: s.version)

    def unload(self, name: str, reason: str = "unloaded by request") -> None:
        with self._lock:
            if name not in self._states:
                raise ModelNotFound(name)
            served = self._served.pop(name, {})
            self._states[name] = {
                v: VersionState(name, v, UNLOADED, reason) for v in self._states[name]
            }
        metrics.LOADED_VERSIONS.labels(name).set(0)
        for version in served:
            forget_version_metrics(name, version)
            log.info("unloaded model %r version %d", name, version)

    def get(self, name: str, version: str | int | None = None) -> ServedVersion:
        """The requested version, or the newest served one when ``version`` is empty."""
        with self._lock:
            versions = self._served.get(name)
            if not versions:
                raise ModelNotFound(name, version)
            if version in (None, ""):
                return versions[max(versions)]
            number = version if isinstance(version, int) else parse_version(version)
            if number is None:
                raise ModelNotFound(
                    name,
                    repr(version),
                    reason="versions are canonical positive decimal integers (1, 2, ...)",
                )
            if number not in versions:
                state = self._states.get(name, {}).get(number)
                raise ModelNotFound(
                    name, version, reason=f"{state.state.lower()}: {state.reason}" if state else ""
                )
            return versions[number]

    def served_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._served.get(name, {}))

    def served(self) -> list[ServedVersion]:
        with self._lock:
            return [v for versions in self._served.values() for _, v in sorted(versions.items())]

    def index(self) -> list[VersionState]:
        """Every version's state, then the repository entries that are not models (version 0, UNAVAILABLE)."""
        with self._lock:
            return [
                state
                for name in sorted(self._states)
                for _, state in sorted(self._states[name].items())
            ] + [
                VersionState(name, 0, UNAVAILABLE, reason)
                for name, reason in sorted(self._problems.items())
            ]

    def meets_policy(self, name: str) -> bool:
        """Whether ``name`` serves every version its policy asks for (VersionPolicy.asked_for the versions on
        disk), and at least one: each of them loaded and passed its golden check."""
        with self._lock:
            served, on_disk = len(self._served.get(name, {})), list(self._states.get(name, {}))
        return served >= max(1, self.settings.version_policy.asked_for(on_disk))

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._states)

    def states(self, name: str) -> list[VersionState]:
        with self._lock:
            if name not in self._states:
                raise ModelNotFound(name)
            return [state for _, state in sorted(self._states[name].items())]
