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
import stat
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
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 16 << 30
"""Largest file a reader hashes when the manifest does not declare its size (older manifests)."""


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
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name) or ".." in name:
        raise UserError(f"--name {name!r}: expected 1-128 characters from A-Z a-z 0-9 _ . -, starting with a"
                        " letter or digit, without '..'")
    return name


def parse_version(text: str) -> int | None:
    """The version a canonical decimal string names ("1", "12"), else None: no sign, no blanks, no leading
    zero, ASCII digits only ("01", " 1", "+1" and other scripts' digits are not versions)."""
    return int(text) if isinstance(text, str) and VERSION_PATTERN.fullmatch(text) else None


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Published versions of one model: {version: directory}, ignoring anything not a canonical positive
    integer name (and anything that cannot be listed)."""
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return {}
    return {version: Path(entry.path) for entry in entries
            if (version := parse_version(entry.name)) is not None and is_directory(entry)}


def is_directory(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a link; a dangling one is not a directory
    except OSError:
        return False


def open_regular(path: Path, limit: int) -> int:
    """A descriptor for reading ``path`` that never blocks: only a regular file of at most ``limit`` bytes.

    O_NONBLOCK makes opening a FIFO return at once; fstat then refuses it, a device or a socket, so
    nothing the repository holds can hang a reader or feed it without end.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise UserError(f"{path.name!r} is not a regular file ({file_kind(status.st_mode)})")
        if status.st_size > limit:
            raise UserError(f"{path.name!r} has {status.st_size} bytes, more than the {limit} allowed")
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def read_regular(path: Path, limit: int) -> bytes:
    descriptor = open_regular(path, limit)
    with os.fdopen(descriptor, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{path.name!r} grew beyond the {limit} bytes allowed while being read")
    return data


def file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a link")):
        if test(mode):
            return kind
    return "not a regular file"


def sha256_of(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    digest = hashlib.sha256()
    read = 0
    with os.fdopen(open_regular(path, limit), "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            read += len(block)
            if read > limit:
                raise UserError(f"{path.name!r} grew beyond the {limit} bytes allowed while being hashed")
            digest.update(block)
    return digest.hexdigest()


def version_files(version_dir: Path, root: Path) -> dict[str, os.stat_result]:
    """Every file of a version: {relative POSIX path: stat}. Raises UserError (naming the entry) for a link
    that dangles, loops or leads outside ``root`` (the repository), and for anything that is neither a
    regular file nor a directory; reads no file."""
    root = root.resolve()
    try:
        resolved = version_dir.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"the version directory cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(root):
        raise UserError(f"the version directory leads outside the repository (to {str(resolved)!r})")

    def refuse(error: OSError):
        raise UserError(f"cannot list {error.filename!r} ({error.strerror})")

    files = {}
    for directory, subdirectories, names in os.walk(version_dir, onerror=refuse):
        for name in [*subdirectories, *names]:
            path = Path(directory) / name
            relative = path.relative_to(version_dir).as_posix()
            try:
                target = path.resolve(strict=True)
                status = path.stat()
            except (OSError, RuntimeError):
                raise UserError(f"{relative!r} is a dangling or looping symbolic link") from None
            if not target.is_relative_to(root):
                raise UserError(f"{relative!r} is a link leading outside the repository (to {str(target)!r})")
            if stat.S_ISDIR(status.st_mode):
                if path.is_symlink():
                    raise UserError(f"{relative!r} is a link to a directory (versions hold plain directories)")
            elif stat.S_ISREG(status.st_mode):
                files[relative] = status
            else:
                raise UserError(f"{relative!r} is not a regular file ({file_kind(status.st_mode)})")
    return files


def file_digests(version_dir: Path) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file of a version except the manifest."""
    return {p.relative_to(version_dir).as_posix(): sha256_of(p)
            for p in sorted(version_dir.rglob("*")) if p.is_file() and p != version_dir / MANIFEST}


def read_manifest(version_dir: Path) -> dict:
    path = version_dir / MANIFEST
    try:
        manifest = json.loads(read_regular(path, MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise UserError(f"{str(version_dir)!r}: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{str(path)!r}: unreadable manifest ({exc})") from None
    except UserError as exc:
        raise UserError(f"{str(path)!r}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UserError(f"{str(path)!r}: format {found!r}, expected {MANIFEST_FORMAT!r}")
    files, sizes = manifest.get("files", {}), manifest.get("sizes", {})
    if not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        raise UserError(f"{str(path)!r}: 'files' must map relative paths to sha256 hex digests")
    if not (isinstance(sizes, dict) and all(isinstance(v, int) and v >= 0 for v in sizes.values())):
        raise UserError(f"{str(path)!r}: 'sizes' must map relative paths to byte counts")
    return manifest


def verify_files(version_dir: Path, manifest: dict, root: Path | None = None) -> None:
    """Every file listed in the manifest exists with its size (when declared) and sha256, no file is
    missing from the list, and nothing in the version is a special file or a link out of ``root``
    (default: the repository, two levels up). Reads each file once, never beyond its declared size."""
    expected, sizes = manifest.get("files", {}), manifest.get("sizes", {})
    try:
        actual = version_files(version_dir, root if root is not None else version_dir.parent.parent)
    except UserError as exc:
        raise UserError(f"{str(version_dir)!r}: {exc}") from None
    for relative, digest in expected.items():
        if relative not in actual:
            raise UserError(f"{str(version_dir)!r}: file {relative!r} listed in the manifest is missing")
        declared = sizes.get(relative)
        if declared is not None and actual[relative].st_size != declared:
            raise UserError(f"{str(version_dir)!r}: file {relative!r} has {actual[relative].st_size} bytes, "
                            f"the manifest says {declared}")
        try:
            found = sha256_of(version_dir / relative, declared if declared is not None else MAX_FILE_BYTES)
        except UserError as exc:
            raise UserError(f"{str(version_dir)!r}: file {relative!r}: {exc}") from None
        if found != digest:
            raise UserError(f"{str(version_dir)!r}: file {relative!r} has sha256 {found[:12]}..., "
                            f"the manifest says {digest[:12]}...")
    unlisted = sorted(set(actual) - set(expected) - {MANIFEST})
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
    files = file_digests(built)
    manifest.update(name=name, version=target_version, files=files,
                    sizes={relative: (built / relative).stat().st_size for relative in files})
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
