"""The models being served: loading versions from the repository by policy, states, lookup."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnserve.errors import UserError
from bnserve.golden import GOLDEN, GoldenCheck, check_golden, read_golden
from bnserve.repository import (INPUT_NAME, OUTPUT_NAMES, TensorSpec, read_manifest, validate_model_name,
                                verify_files, version_dirs)
from server import metrics
from server.backends import Backend, load_backend
from server.errors import ModelNotFound, StartupError
from server.settings import ServerSettings, VersionPolicy
from server.statistics import VersionStatistics

log = logging.getLogger("bnserve.server")

READY, UNAVAILABLE, UNLOADED = "READY", "UNAVAILABLE", "UNLOADED"


@dataclass
class ServedVersion:
    name: str
    version: int
    manifest: dict
    backend: Backend
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    golden: GoldenCheck | None = None
    """The load-time golden check on this backend and device; None: exported without golden samples."""
    statistics: VersionStatistics = field(default_factory=VersionStatistics)

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]


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


def open_version(name: str, version: int, directory: Path, settings: ServerSettings) -> ServedVersion:
    """Verify the manifest and every file's hash, then load the backend; raises with the reason."""
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    inputs = [TensorSpec.from_json(spec) for spec in manifest["inputs"]]
    outputs = tuple(TensorSpec.from_json(spec) for spec in manifest["outputs"])
    if [spec.name for spec in inputs] != [INPUT_NAME] or tuple(spec.name for spec in outputs) != OUTPUT_NAMES:
        raise UserError(f"manifest declares inputs {[s.name for s in inputs]} and outputs {[s.name for s in outputs]}")
    backend = load_backend(settings.backend, directory, settings.device, settings.intra_op_threads)
    # Warm-up: one inference before the version takes traffic (first-call allocations, and a model
    # that loads but cannot run is refused here rather than on a client's request).
    warm = backend.run(np.zeros((1, *inputs[0].shape[1:]), np.float32), [spec.name for spec in outputs])
    for spec in outputs:
        if warm[spec.name].shape != (1, *spec.shape[1:]):
            raise UserError(f"output {spec.name!r}: the model answered shape {list(warm[spec.name].shape)} for one "
                            f"input row; the manifest declares {list(spec.shape)}")
    golden = prove_golden(name, version, directory, manifest, backend,
                          settings.batching_options(name).max_batch_size)
    return ServedVersion(name, version, manifest, backend, inputs[0], outputs, golden)


def prove_golden(name: str, version: int, directory: Path, manifest: dict, backend: Backend,
                 max_batch_size: int) -> GoldenCheck | None:
    """Run the version's golden samples on this backend and device, in batches of at most the
    served maximum; refuse the version (UserError) when an output differs beyond the certificate's
    tolerance. None for versions exported before golden samples existed (they load, unverified)."""
    if GOLDEN not in manifest.get("files", {}):
        log.warning("model %r version %d is unverified: it has no %s (exported before load-time parity checks)",
                    name, version, GOLDEN)
        return None
    check = check_golden(lambda images: backend.run(images, list(OUTPUT_NAMES)), read_golden(directory / GOLDEN),
                         max_batch_size)
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

    def model_names_on_disk(self) -> list[str]:
        return sorted(p.name for p in self.settings.repository.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and version_dirs(p))

    def load_all(self) -> None:
        for name in self.model_names_on_disk():
            self.load(name)

    def load(self, name: str) -> list[VersionState]:
        """(Re)load ``name`` by the version policy; versions that fail are refused, the rest serve."""
        try:
            validate_model_name(name)
        except UserError:
            raise ModelNotFound(name) from None
        directory = self.settings.repository / name
        available = version_dirs(directory)
        if not available:
            raise ModelNotFound(name, reason=f"no version directory under {str(directory)!r}")
        policy = self.settings.version_policy
        served, states = {}, {}
        with self._lock:
            previous = dict(self._served.get(name, {}))
        for version in chosen_versions(list(available), policy):
            if policy.kind == "latest" and len(served) == policy.count:
                break
            if version in previous:
                served[version] = previous[version]
                states[version] = VersionState(name, version, READY)
                continue
            try:
                served[version] = open_version(name, version, available[version], self.settings)
            except StartupError:
                raise
            except Exception as exc:  # any reason a version cannot serve: refuse it, keep the others
                reason = str(exc).replace(str(available[version]), f"{name}/{version}")
                states[version] = VersionState(name, version, UNAVAILABLE, reason)
                log.warning("refused model %r version %d: %s", name, version, reason)
                metrics.LOAD_FAILURES.labels(name).inc()
                continue
            states[version] = VersionState(name, version, READY)
            backend = served[version].backend
            log.info("loaded model %r version %d (%s on %s)", name, version, backend.platform, backend.device)
        for version in available:
            states.setdefault(version, VersionState(name, version, UNLOADED, "not selected by the version policy"
                                                    f" {policy}"))
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
            self._states[name] = {v: VersionState(name, v, UNLOADED, reason) for v in self._states[name]}
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
            try:
                number = int(version)
            except (TypeError, ValueError):
                raise ModelNotFound(name, version, reason="versions are positive integers") from None
            if number not in versions:
                state = self._states.get(name, {}).get(number)
                raise ModelNotFound(name, version, reason=f"{state.state.lower()}: {state.reason}" if state else "")
            return versions[number]

    def served_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._served.get(name, {}))

    def served(self) -> list[ServedVersion]:
        with self._lock:
            return [v for versions in self._served.values() for _, v in sorted(versions.items())]

    def index(self) -> list[VersionState]:
        with self._lock:
            return [state for name in sorted(self._states) for _, state in sorted(self._states[name].items())]

    def states(self, name: str) -> list[VersionState]:
        with self._lock:
            if name not in self._states:
                raise ModelNotFound(name)
            return [state for _, state in sorted(self._states[name].items())]
