"""What the repository holds, found without reading any file: one scan per model, each version inspected on
its own so that a bad one never hides the others."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bnserve.core.errors import UserError
from bnserve.core.repository import is_directory, validate_model_name, version_dirs, version_files


@dataclass(frozen=True)
class ScannedVersion:
    """What a scan found of one version directory, without reading any file."""

    directory: Path
    signature: tuple = ()
    """((relative path, size, mtime_ns), ...): changes when a file appears, vanishes or is rewritten."""
    problem: str = ""
    """Why the version cannot be served as it is (a special file, a link out of the repository ...)."""


def scan_model(
    repository: Path, name: str, model_directory: Path | None = None
) -> dict[int, ScannedVersion]:
    """Every version directory of one model (in ``model_directory``, default REPO/NAME), each inspected on
    its own: a bad one never hides the others."""
    scanned = {}
    for version, directory in version_dirs(model_directory or repository / name).items():
        try:
            files = version_files(directory, repository)
        except UserError as exc:
            scanned[version] = ScannedVersion(directory, problem=str(exc))
            continue
        scanned[version] = ScannedVersion(
            directory,
            tuple(
                sorted(
                    (relative, status.st_size, status.st_mtime_ns)
                    for relative, status in files.items()
                )
            ),
        )
    return scanned


@dataclass(frozen=True)
class RepositoryScan:
    models: dict[str, dict[int, ScannedVersion]]
    problems: dict[str, str]
    """{entry name: reason} for top-level entries that cannot be models (an invalid name, a link out)."""


def scan_repository(repository: Path, single_model: str | None = None) -> RepositoryScan:
    """Every model of the repository, per model and per version isolated; reads no file and never blocks.
    With ``single_model`` the repository is that one model's directory (--model-name)."""
    if single_model is not None:
        versions = scan_model(repository, single_model, repository)
        return RepositoryScan({single_model: versions} if versions else {}, {})
    models, problems = {}, {}
    root = repository.resolve()
    for entry in sorted(os.scandir(repository), key=lambda e: e.name):
        if entry.name.startswith(".") or not is_directory(entry):
            continue
        try:
            validate_model_name(entry.name)
        except UserError:
            problems[entry.name] = (
                "not a valid model name (1-128 characters from A-Z a-z 0-9 _ . -, starting with "
                "a letter or digit, without '..')"
            )
            continue
        if not Path(entry.path).resolve().is_relative_to(root):
            problems[entry.name] = "a link leading outside the repository"
            continue
        versions = scan_model(repository, entry.name)
        if versions:
            models[entry.name] = versions
    return RepositoryScan(models, problems)
