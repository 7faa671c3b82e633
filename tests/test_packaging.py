"""One import root: the wheel and the editable install both put everything under ``bnserve.``.

The repository keeps its top-level folders (trainer/, exporter/, server/, protos/); pyproject's package-dir
maps them to bnserve.trainer, bnserve.exporter, bnserve.server and bnserve.protos. A wheel that installed
them as top-level packages would silently replace PyPI's own ``trainer``, ``exporter`` or ``protos``.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers.imports import absolute_imports

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("trainer", "exporter", "server", "protos")
# What a user of each installed part imports first; the digits data set is package data of bnserve.trainer.
PROBE = (
    "import bnserve.server.app, bnserve.protos.inference_pb2, bnserve.exporter.fold, bnserve.trainer.data as d; "
    "import bnserve.server as s; print(s.__file__); print(d.load_dataset('digits').images.shape)"
)


def run(command, cwd, env=None):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def build_wheel(out: Path) -> Path:
    # From a copy: setuptools builds in place, and a build/ left in the checkout would carry deleted modules.
    source = out.parent / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "*.egg-info",
            "runs",
            "models",
            ".bench",
            "__pycache__",
            ".pytest_cache",
        ),
    )
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        source,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("bnserve-*.whl")
    return wheel


def test_the_wheel_installs_one_top_level_package_into_a_fresh_venv(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"bnserve", "bnserve-0.1.0.dist-info"}, sorted(
        names
    )[:20]
    for path in (
        "bnserve/server/app.py",
        "bnserve/server/backends/onnx.py",
        "bnserve/protos/inference_pb2.py",
        "bnserve/protos/inference.proto",
        "bnserve/trainer/data/digits.npz",
        "bnserve/exporter/fold.py",
    ):
        assert path in names, path

    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path).returncode == 0
    python = venv / "bin" / "python"
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (site,) = venv.glob("lib/python3*/site-packages")
    top_level = {p.name for p in site.iterdir() if not p.name.startswith(("_", "."))}
    assert top_level == {"bnserve", "bnserve-0.1.0.dist-info"}, sorted(top_level)

    # The fresh venv's bnserve, with this interpreter's dependencies behind it (the wheel came --no-deps).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path[1:]])}
    result = run([str(python), "-c", PROBE], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        str(site / "bnserve" / "server" / "__init__.py"),
        "(1797, 8, 8, 1)",
    ]


def test_the_editable_install_maps_the_folders_into_the_namespace(tmp_path):
    result = run(
        [sys.executable, "-c", PROBE], tmp_path
    )  # outside the checkout: only the install can answer
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(ROOT / "server" / "__init__.py")
    for name in FOLDERS:
        result = run([sys.executable, "-c", f"import {name}"], tmp_path)
        assert f"No module named {name!r}" in result.stderr, (name, result.stderr)


def test_no_module_imports_a_folder_by_its_bare_name():
    """Inside the checkout ``import server`` still resolves (the folder is on sys.path), so only this check sees
    an import that the installed package could not satisfy."""
    offenders = []
    for folder in ("bnserve", *FOLDERS, "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            offenders += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in absolute_imports(path)
                if name.split(".")[0] in FOLDERS
            ]
    assert not offenders, offenders
