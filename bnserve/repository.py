"""The model repository format: layout, manifest schema, hashing, atomic publication.

    REPO/NAME/VERSION/manifest.json      this module's schema (MANIFEST_FORMAT)
    REPO/NAME/VERSION/model.onnx
    REPO/NAME/VERSION/saved_model/       signature "serving_default"

VERSION is a positive integer directory name. Versions are built under REPO/.staging/ (same file
system) and renamed into place, so a reader sees a whole version or none; a published version is
never rewritten. Both the exporter (writer) and the server (reader) use this module; it imports
neither TensorFlow nor tf2onnx.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bnserve.errors import UserError

MANIFEST = "manifest.json"
ONNX_MODEL = "model.onnx"
SAVED_MODEL = "saved_model"
STAGING = ".staging"
MANIFEST_FORMAT = "bnserve.model/1"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: KServe v2 datatype (``FP32``) and shape with -1 for the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        return asdict(self) | {"shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], data["datatype"], tuple(int(d) for d in data["shape"]))


def validate_model_name(name: str) -> str:
    """Names become directory names: letters, digits, ``_ . -``, starting with a letter or digit."""
    if not MODEL_NAME_PATTERN.match(name) or ".." in name:
        raise UserError(f"--name {name!r}: expected 1-128 characters from A-Z a-z 0-9 _ . -, starting with a"
                        " letter or digit, without '..'")
    return name


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Published versions of one model: {version: directory}, ignoring anything not a positive integer."""
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(version_dir: Path) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file of a version except the manifest."""
    return {p.relative_to(version_dir).as_posix(): sha256_of(p)
            for p in sorted(version_dir.rglob("*")) if p.is_file() and p != version_dir / MANIFEST}


def read_manifest(version_dir: Path) -> dict:
    path = version_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{str(version_dir)!r}: no {MANIFEST}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{str(path)!r}: unreadable manifest ({exc})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{str(path)!r}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def verify_files(version_dir: Path, manifest: dict) -> None:
    """Every file listed in the manifest exists with its sha256, and no file is missing from the list."""
    expected = manifest.get("files", {})
    actual = file_digests(version_dir)
    for relative, digest in expected.items():
        if relative not in actual:
            raise UserError(f"{str(version_dir)!r}: file {relative!r} listed in the manifest is missing")
        if actual[relative] != digest:
            raise UserError(f"{str(version_dir)!r}: file {relative!r} has sha256 {actual[relative][:12]}..., "
                            f"the manifest says {digest[:12]}...")
    unlisted = sorted(set(actual) - set(expected))
    if unlisted:
        raise UserError(f"{str(version_dir)!r}: file {unlisted[0]!r} is not listed in the manifest")


def check_new_version(repository: Path, name: str, version: int | None) -> None:
    """A valid name, a positive version that does not exist yet, a repository that can be written.

    Creates nothing: a refused export leaves the file system as it was.
    """
    validate_model_name(name)
    if version is not None and version < 1:
        raise UserError(f"--version {version}: expected a positive integer")
    existing = repository
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--repository {str(repository)!r}: {str(existing)!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--repository {str(repository)!r}: {str(existing)!r} is not writable")
    if version is not None and (repository / name / str(version)).exists():
        raise UserError(f"--version {version}: {str(repository / name / str(version))!r} already exists;"
                        " versions are never overwritten")


STALE_STAGING_SECONDS = 3600


def staging_dir(repository: Path) -> Path:
    """A fresh directory on the repository's file system for building a version.

    Staging directories untouched for an hour are what killed exporters left behind: removed here.
    """
    staging = repository / STAGING
    try:
        staging.mkdir(parents=True, exist_ok=True)
        for leftover in staging.glob("version-*"):
            if time.time() - leftover.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=staging, prefix="version-"))
    except OSError as exc:
        raise UserError(f"--repository {str(repository)!r}: cannot write ({exc.strerror})") from None


def publish(built: Path, repository: Path, name: str, version: int | None) -> tuple[int, Path]:
    """Seal ``built`` (hash its files into its manifest) and rename it to REPO/NAME/VERSION.

    ``version`` None means highest published + 1. rename(2) is atomic and refuses to replace a
    non-empty directory, so an existing version is never overwritten, even by a concurrent exporter.
    """
    model_dir = repository / validate_model_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    target_version = version if version is not None else max(version_dirs(model_dir), default=0) + 1
    target = model_dir / str(target_version)
    if target.exists():
        raise UserError(f"--version {target_version}: {str(target)!r} already exists; versions are never overwritten")
    manifest_path = built / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest.update(name=name, version=target_version, files=file_digests(built))
    write_json(manifest_path, manifest)
    fsync_tree(built)
    try:
        os.rename(built, target)
    except OSError as exc:
        raise UserError(f"--version {target_version}: could not publish {str(target)!r} ({exc.strerror})") from None
    fsync_directory(model_dir)
    return target_version, target


def discard(built: Path) -> None:
    shutil.rmtree(built, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    with open(path, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=True)
        stream.write("\n")


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under root, so the rename publishes data that is on disk."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
        else:
            fsync_directory(path)
    fsync_directory(root)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
