"""Changing a published version directory the way a forger or an old exporter would."""

import json

from bnserve.core.golden import GOLDEN
from bnserve.core.repository import MANIFEST, file_digests
from tests.onnx_models import slow_model


def rehash(version_dir):
    """Rewrite the manifest's sha256 list to match the files as they now are (what a careful forger does)."""
    manifest = json.loads((version_dir / MANIFEST).read_text())
    manifest["files"] = file_digests(version_dir)
    manifest["sizes"] = {
        relative: (version_dir / relative).stat().st_size for relative in manifest["files"]
    }
    (version_dir / MANIFEST).write_text(json.dumps(manifest))


def without_golden(version_dir):
    """A version as exported before golden samples existed."""
    (version_dir / GOLDEN).unlink()
    manifest = json.loads((version_dir / MANIFEST).read_text())
    manifest.pop("golden", None)
    (version_dir / MANIFEST).write_text(json.dumps(manifest))
    rehash(version_dir)


def with_slow_model(directory):
    slow_model(directory / "model.onnx", copies=512)
    without_golden(directory)
    rehash(directory)
