"""The shared records round-trip and refuse what they cannot read; the base package imports none of the parts."""

import ast
import json
from pathlib import Path

import pytest

from bnserve.core.errors import UserError
from bnserve.core.records import RunRecord
from bnserve.trainer.rundir import read_run_record

ROOT = Path(__file__).resolve().parent.parent


def test_the_run_record_round_trips_through_run_json(digits_run):
    run_dir, record = digits_run
    data = json.loads((run_dir / "run.json").read_text())
    assert RunRecord.from_json(data) == record == read_run_record(run_dir)
    assert RunRecord.from_json(record.to_json()).to_json() == data
    assert record.dataset.image_shape == (8, 8, 1) and record.epochs[-1].epoch == record.config["epochs"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="bnserve.run/0"), "format 'bnserve.run/0', expected 'bnserve.run/1'"),
    (lambda d: d.pop("dataset"), "field 'dataset' is missing or not a JSON dict"),
    (lambda d: d.update(status="paused"), "field 'status' is 'paused', expected one of running, completed, failed"),
    (lambda d: d["epochs"][0].pop("loss"), "field 'epochs[0]'"),
    (lambda d: d["dataset"].pop("sha256"), "field 'dataset'"),
])
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
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
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
PROJECT = {"bnserve", "bnserve.core", "bnserve.cli", "bnserve.verify", "bnserve.trainer", "bnserve.exporter",
           "bnserve.server", "bnserve.protos"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_runs_back_up(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        used = imported_packages(path) & PROJECT - {"bnserve"}  # `import bnserve` is the version string only
        assert used <= ALLOWED[layer], f"{path.relative_to(ROOT)} imports {sorted(used - ALLOWED[layer])}"


def test_every_server_setting_has_a_serve_flag_with_the_settings_default(tmp_path):
    """Settings are declared once: each ServerSettings field is a `bnserve serve` flag whose default is the field's."""
    import dataclasses

    from bnserve.cli import build_parser
    from bnserve.server.settings import ServerSettings, VersionPolicy

    args = build_parser().parse_args(["serve", "--repository", str(tmp_path)])
    # Flags whose text is parsed into the field (bnserve.cli.run_serve converts them).
    parsed = {"dynamic_batching": "dynamic_batching", "model_options": "model_option", "version_policy": "version_policy",
              "auth_token": "auth_token_file"}
    for field in dataclasses.fields(ServerSettings):
        flag = parsed.get(field.name, field.name)
        assert hasattr(args, flag), f"ServerSettings.{field.name} has no --{flag.replace('_', '-')} flag"
        if field.name in parsed or field.name == "repository":
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert getattr(args, flag) == default, (field.name, getattr(args, flag), default)
    assert VersionPolicy.parse(args.version_policy) == ServerSettings.__dataclass_fields__["version_policy"].default_factory()
    assert (args.dynamic_batching == "on") == ServerSettings.dynamic_batching
