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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bnserve.core.drift import MonitorSpec
from bnserve.core.errors import UserError
from bnserve.core.images import ImageMapping

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
MAX_MANIFEST_BYTES = 64 << 20
"""A bound on what a reader parses, not a size manifests approach: the drift monitor records four
per-channel floats for every BN layer, ~5 MB of JSON for DenseNet121 (120 layers, 240k floats); 64 MiB
parses in well under a second and bounds a hostile file's memory."""
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


@dataclass(frozen=True)
class BatchNormProvenance:
    """Where the folded statistics came from."""

    statistics: str
    """"ema" (the EMA shadows), "precise" (re-estimated over the training data with frozen weights) or "adapt"
    (re-estimated the same way over unlabeled target data, ``source``)."""
    decay: float | None
    """The EMA decay (a Keras BN's momentum); None without BN."""
    warmup: bool
    ema_updates: int | None
    """Optimizer steps whose batch moments the shadows consumed (None: not recorded, as in a Keras file)."""
    epsilon: float | None
    layers: int
    """BN calls in the graph."""
    folded: tuple[str, ...]
    """The folded BN calls in graph order: "layer+bn" (into the layer before it) or "bn>dense" (into the
    Dense after it)."""
    input_standardization: str
    source: dict | None = None
    """For "adapt": the unlabeled data the statistics were re-estimated on: {"path", "sha256", "samples"} and,
    when it had labels, {"accuracy_before", "accuracy_after"} on it."""
    multiply_add: tuple[str, ...] = ()
    """The BN calls that could not be folded and became one per-channel multiply-add x * s + t."""

    def to_json(self) -> dict:
        data = asdict(self) | {"folded": list(self.folded), "multiply_add": list(self.multiply_add)}
        return data if self.source is not None else {k: v for k, v in data.items() if k != "source"}


# Manifest fields: name -> (JSON types accepted, required). Readers get a Manifest, never this dict.
MANIFEST_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "format": ((str,), True),
    "inputs": ((list,), True),
    "outputs": ((list,), True),
    "class_labels": ((list,), True),
    "input_values": ((str,), True),
    "batch_normalization": ((dict,), True),
    "heldout_accuracy": ((dict,), True),
    "parity": ((dict,), True),
    "signature": ((str,), False),
    "input_range": ((list,), False),
    "golden": ((dict,), False),
    "source": ((dict,), False),
    "onnx_opset": ((int,), False),
    "versions": ((dict,), False),
    "created": ((str,), False),
    "name": ((str,), False),
    "version": ((int,), False),
    "files": ((dict,), False),
    "sizes": ((dict,), False),
    "monitor": ((dict,), False),
    "image_bytes": ((dict,), False),
}


@dataclass(frozen=True)
class Manifest:
    """REPO/NAME/VERSION/manifest.json, format MANIFEST_FORMAT: the one definition every reader and writer uses.

    inputs / outputs         tensor names, KServe datatypes and shapes (-1: the batch dimension)
    class_labels             one label per logit
    input_values             what the input holds (raw values; normalisation is in the graph)
    input_range              [min, max] of the training inputs (absent before golden samples existed)
    batch_normalization      BN provenance (BatchNormProvenance)
    heldout_accuracy         {"ema": a[, "precise": b]}: held-out accuracy in inference mode per statistics
    parity                   the export certificate: tolerance, passed, per artifact max_abs/max_rel/...
    golden                   {"file": "golden.npz", "tolerance": t, "sets": {set: rows}} (absent on old versions)
    image_bytes              pixel -> value mapping of the image_bytes input (bnserve.core.images.ImageMapping),
                             from input_range (absent without one: encoded images are then refused)
    monitor                  the drift monitor (bnserve.core.drift.MonitorSpec): monitor.onnx, window W, threshold
                             calibration and every layer's scale, shift, frozen moments and threshold
    source, versions, onnx_opset, created, signature: provenance
    name, version, files, sizes: set when the version is published (sha256 and byte size of every file)
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    class_labels: tuple[str, ...]
    input_values: str
    batch_normalization: BatchNormProvenance
    heldout_accuracy: dict[str, float]
    parity: dict
    signature: str = SIGNATURE
    input_range: tuple[float, float] | None = None
    golden: dict | None = None
    source: dict = field(default_factory=dict)
    onnx_opset: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    name: str = ""
    version: int = 0
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT
    monitor: MonitorSpec | None = None
    image_bytes: ImageMapping | None = None
    """How an encoded image's pixels become input values (bnserve.core.images); None: image_bytes is not
    accepted (a version exported without an input range)."""

    @property
    def accuracy(self) -> float | None:
        """Held-out accuracy with the statistics that were folded (None: exported without labels)."""
        return self.heldout_accuracy.get(self.batch_normalization.statistics)

    def to_json(self) -> dict:
        data = {
            "format": self.format,
            "signature": self.signature,
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "class_labels": list(self.class_labels),
            "input_values": self.input_values,
            "batch_normalization": self.batch_normalization.to_json(),
            "heldout_accuracy": dict(self.heldout_accuracy),
            "parity": self.parity,
            "source": self.source,
            "versions": self.versions,
            "created": self.created,
            "files": self.files,
            "sizes": self.sizes,
        }
        optional = {
            "input_range": list(self.input_range) if self.input_range else None,
            "golden": self.golden,
            "monitor": self.monitor.to_json() if self.monitor else None,
            "image_bytes": self.image_bytes.to_json() if self.image_bytes else None,
            "onnx_opset": self.onnx_opset,
            "name": self.name or None,
            "version": self.version or None,
        }
        return data | {key: value for key, value in optional.items() if value is not None}

    @classmethod
    def from_json(cls, data, where: str = MANIFEST) -> "Manifest":
        """Parse and check a manifest; an old or foreign one gets a UserError naming the field."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != MANIFEST_FORMAT:
            raise UserError(f"{where}: format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        for key, (types, required) in MANIFEST_FIELDS.items():
            if key not in data:
                if required:
                    raise UserError(f"{where}: field {key!r} is missing")
                continue
            if not isinstance(data[key], types) or (int in types and isinstance(data[key], bool)):
                raise UserError(
                    f"{where}: field {key!r} must be a JSON {types[0].__name__}, got "
                    f"{type(data[key]).__name__}"
                )
        files, sizes = data.get("files", {}), data.get("sizes", {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise UserError(f"{where}: field 'files' must map relative paths to sha256 hex digests")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes.values()
        ):
            raise UserError(f"{where}: field 'sizes' must map relative paths to byte counts")
        inputs = tensor_specs(data["inputs"], f"{where}: field 'inputs'")
        outputs = tensor_specs(data["outputs"], f"{where}: field 'outputs'")
        bn = data["batch_normalization"]
        try:
            provenance = BatchNormProvenance(
                **{
                    **bn,
                    "folded": tuple(bn["folded"]),
                    "multiply_add": tuple(bn.get("multiply_add", ())),
                }
            )
        except (TypeError, KeyError) as exc:
            raise UserError(f"{where}: field 'batch_normalization': {exc}") from None
        statistics = provenance.statistics
        if data["heldout_accuracy"] and statistics not in data["heldout_accuracy"]:
            raise UserError(
                f"{where}: field 'heldout_accuracy' has no entry for the folded statistics {statistics!r}"
            )
        input_range = data.get("input_range")
        if input_range is not None and (
            len(input_range) != 2 or not all(isinstance(v, (int, float)) for v in input_range)
        ):
            raise UserError(f"{where}: field 'input_range' must be [min, max]")
        monitor = None
        if "monitor" in data:
            try:
                monitor = MonitorSpec.from_json(data["monitor"])
            except (TypeError, KeyError, ValueError) as exc:
                raise UserError(
                    f"{where}: field 'monitor': expected file, window, margin, quantile, clean_windows, "
                    f"clean_samples and layers ({type(exc).__name__}: {exc})"
                ) from None
        image_bytes = None
        if "image_bytes" in data:
            try:
                image_bytes = ImageMapping.from_json(data["image_bytes"])
            except ValueError as exc:
                raise UserError(f"{where}: field 'image_bytes': {exc}") from None
        return cls(
            inputs,
            outputs,
            tuple(str(label) for label in data["class_labels"]),
            data["input_values"],
            provenance,
            data["heldout_accuracy"],
            data["parity"],
            data.get("signature", SIGNATURE),
            tuple(input_range) if input_range is not None else None,
            data.get("golden"),
            data.get("source", {}),
            data.get("onnx_opset"),
            data.get("versions", {}),
            data.get("created", ""),
            data.get("name", ""),
            data.get("version", 0),
            files,
            sizes,
            monitor=monitor,
            image_bytes=image_bytes,
        )


def tensor_specs(items: list, where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for position, item in enumerate(items):
        try:
            spec = TensorSpec.from_json(item)
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(
                f"{where}[{position}]: expected {{name, datatype, shape}} ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(spec.name, str) or not isinstance(spec.datatype, str):
            raise UserError(f"{where}[{position}]: name and datatype must be strings")
        specs.append(spec)
    return tuple(specs)


def validate_model_name(name: str) -> str:
    """Names become directory names: letters, digits, ``_ . -``, starting with a letter or digit."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name) or ".." in name:
        raise UserError(
            f"--name {name!r}: expected 1-128 characters from A-Z a-z 0-9 _ . -, starting with a"
            " letter or digit, without '..'"
        )
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
    return {
        version: Path(entry.path)
        for entry in entries
        if (version := parse_version(entry.name)) is not None and is_directory(entry)
    }


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
            raise UserError(
                f"{path.name!r} has {status.st_size} bytes, more than the {limit} allowed"
            )
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
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a link"),
    ):
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
                raise UserError(
                    f"{path.name!r} grew beyond the {limit} bytes allowed while being hashed"
                )
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
        raise UserError(
            f"the version directory leads outside the repository (to {str(resolved)!r})"
        )

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
                raise UserError(
                    f"{relative!r} is a link leading outside the repository (to {str(target)!r})"
                )
            if stat.S_ISDIR(status.st_mode):
                if path.is_symlink():
                    raise UserError(
                        f"{relative!r} is a link to a directory (versions hold plain directories)"
                    )
            elif stat.S_ISREG(status.st_mode):
                files[relative] = status
            else:
                raise UserError(f"{relative!r} is not a regular file ({file_kind(status.st_mode)})")
    return files


def file_digests(version_dir: Path) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file of a version except the manifest."""
    return {
        p.relative_to(version_dir).as_posix(): sha256_of(p)
        for p in sorted(version_dir.rglob("*"))
        if p.is_file() and p != version_dir / MANIFEST
    }


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST
    try:
        data = json.loads(read_regular(path, MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise UserError(f"{str(version_dir)!r}: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{str(path)!r}: unreadable manifest ({exc})") from None
    except UserError as exc:
        raise UserError(f"{str(path)!r}: {exc}") from None
    return Manifest.from_json(data, repr(str(path)))


def verify_files(version_dir: Path, manifest: Manifest, root: Path | None = None) -> None:
    """Every file listed in the manifest exists with its size (when declared) and sha256, no file is
    missing from the list, and nothing in the version is a special file or a link out of ``root``
    (default: the repository, two levels up). Reads each file once, never beyond its declared size."""
    expected, sizes = manifest.files, manifest.sizes
    try:
        actual = version_files(version_dir, root if root is not None else version_dir.parent.parent)
    except UserError as exc:
        raise UserError(f"{str(version_dir)!r}: {exc}") from None
    for relative, digest in expected.items():
        if relative not in actual:
            raise UserError(
                f"{str(version_dir)!r}: file {relative!r} listed in the manifest is missing"
            )
        declared = sizes.get(relative)
        if declared is not None and actual[relative].st_size != declared:
            raise UserError(
                f"{str(version_dir)!r}: file {relative!r} has {actual[relative].st_size} bytes, "
                f"the manifest says {declared}"
            )
        try:
            found = sha256_of(
                version_dir / relative, declared if declared is not None else MAX_FILE_BYTES
            )
        except UserError as exc:
            raise UserError(f"{str(version_dir)!r}: file {relative!r}: {exc}") from None
        if found != digest:
            raise UserError(
                f"{str(version_dir)!r}: file {relative!r} has sha256 {found[:12]}..., "
                f"the manifest says {digest[:12]}..."
            )
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
        raise UserError(
            f"--version {version}: {str(repository / name / str(version))!r} already exists;"
            " versions are never overwritten"
        )


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
        raise UserError(
            f"--repository {str(repository)!r}: cannot write ({exc.strerror})"
        ) from None


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
        raise UserError(
            f"--version {target_version}: {str(target)!r} already exists; versions are never overwritten"
        )
    manifest_path = built / MANIFEST
    files = file_digests(built)
    manifest = replace(
        Manifest.from_json(json.loads(manifest_path.read_text())),
        name=name,
        version=target_version,
        files=files,
        sizes={relative: (built / relative).stat().st_size for relative in files},
    )
    write_json(manifest_path, manifest.to_json())
    # Read back as every reader will (its size cap and schema), so nothing unreadable is ever published.
    read_manifest(built)
    fsync_tree(built)
    try:
        os.rename(built, target)
    except OSError as exc:
        raise UserError(
            f"--version {target_version}: could not publish {str(target)!r} ({exc.strerror})"
        ) from None
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
