"""The shared records round-trip and refuse what they cannot read; the base package imports none of the parts."""

import ast
import json
from pathlib import Path

import pytest

from bnserve.core.errors import UserError
from bnserve.core.records import RunRecord
from bnserve.trainer.rundir import read_run_record
from tests.helpers.imports import absolute_imports

ROOT = Path(__file__).resolve().parent.parent


def test_the_run_record_round_trips_through_run_json(digits_run):
    run_dir, record = digits_run
    data = json.loads((run_dir / "run.json").read_text())
    assert RunRecord.from_json(data) == record == read_run_record(run_dir)
    assert RunRecord.from_json(record.to_json()).to_json() == data
    assert (
        record.dataset.image_shape == (8, 8, 1)
        and record.epochs[-1].epoch == record.config["epochs"]
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d.update(format="bnserve.run/0"),
            "format 'bnserve.run/0', expected 'bnserve.run/1'",
        ),
        (lambda d: d.pop("dataset"), "field 'dataset' is missing or not a JSON dict"),
        (
            lambda d: d.update(status="paused"),
            "field 'status' is 'paused', expected one of running, completed, failed",
        ),
        (lambda d: d["epochs"][0].pop("loss"), "field 'epochs[0]'"),
        (lambda d: d["dataset"].pop("sha256"), "field 'dataset'"),
    ],
)
def test_an_old_or_foreign_run_record_gets_a_precise_error(digits_run, tmp_path, change, message):
    run_dir, _ = digits_run
    data = json.loads((run_dir / "run.json").read_text())
    change(data)
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        read_run_record(tmp_path)
    assert message in str(caught.value), str(caught.value)


def imported_packages(path: Path) -> set[str]:
    """Top-level project modules a file imports (bnserve.core, bnserve.cli ... count as their own layer)."""
    found = set()
    for name in absolute_imports(path):
        parts = name.split(".")
        found.add(".".join(parts[:2]) if parts[0] == "bnserve" else parts[0])
    return found


# Each layer and what it may import among the project's packages: the arrows all point down.
ALLOWED = {
    "bnserve/core": {"bnserve.core"},
    "protos": {"bnserve.protos"},
    "trainer": {"bnserve.core", "bnserve.trainer"},
    "exporter": {"bnserve.core", "bnserve.trainer", "bnserve.exporter"},
    "server": {"bnserve.core", "bnserve.protos", "bnserve.server"},
}
PROJECT = {
    "bnserve",
    "bnserve.core",
    "bnserve.cli",
    "bnserve.verify",
    "bnserve.trainer",
    "bnserve.exporter",
    "bnserve.server",
    "bnserve.protos",
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_runs_back_up(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        used = imported_packages(path) & PROJECT - {
            "bnserve"
        }  # `import bnserve` is the version string only
        assert used <= ALLOWED[layer], (
            f"{path.relative_to(ROOT)} imports {sorted(used - ALLOWED[layer])}"
        )


def server_imports(path: Path) -> set[str]:
    """The bnserve.server modules a server file imports (``from bnserve.server import x`` counts as x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("bnserve.server")
        ):
            if node.module == "bnserve.server":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {
                a.name.split(".")[2] for a in node.names if a.name.startswith("bnserve.server.")
            }
    return found


# Within the server: each protocol adapter stands on the shared floors (data plane, documents, codecs, errors,
# settings) and never on another protocol's adapter. KServe v2 and TensorFlow Serving are separate protocols on
# each port; rest.py (the HTTP routes) may use both HTTP codecs, and app.py assembles everything.
PROTOCOL_MODULES = {
    "grpc_v2": "grpc",
    "grpc_tfserving": "grpc",
    "grpc_monitor": "grpc",
    "rest_v2": "http",
    "rest_tfserving": "http",
    "rest": "http",
    "http_site": "http",
}
ADAPTER_PEERS = {"rest": {"rest_v2", "rest_tfserving"}, "http_site": {"rest"}}


@pytest.mark.parametrize("module", sorted(PROTOCOL_MODULES))
def test_no_protocol_layer_imports_another(module):
    used = server_imports(ROOT / "server" / f"{module}.py") & set(PROTOCOL_MODULES)
    assert used <= ADAPTER_PEERS.get(module, set()), f"server/{module}.py imports {sorted(used)}"


def test_settings_stand_on_the_ground_floor():
    used = imported_packages(ROOT / "server" / "settings.py") & PROJECT
    assert used <= {"bnserve.core"} and not server_imports(ROOT / "server" / "settings.py"), used
