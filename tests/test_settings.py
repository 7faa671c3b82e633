"""`bnserve serve`'s flags are generated from ServerSettings: one default, one help text, one list of choices,
and the help names every port a setting governs."""

import dataclasses
import subprocess
import sys

import pytest

from bnserve.cli import build_parser
from bnserve.server.settings import (
    BACKENDS,
    DEVICES,
    MODEL_CONTROL_MODES,
    MODEL_OPTION_KEYS,
    PROTOCOLS,
    ServerSettings,
    flag_of,
    help_text,
    settings_from_args,
)


def serve_parser():
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return commands.choices["serve"]


def test_every_flag_left_unset_gives_the_settings_own_default(tmp_path):
    args = build_parser().parse_args(["serve", "--repository", str(tmp_path)])
    assert settings_from_args(args) == ServerSettings(repository=tmp_path)


def test_every_setting_is_one_flag_and_the_flag_sets_it(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    given = [
        "serve",
        "--repository",
        str(tmp_path),
        "--dynamic-batching",
        "off",
        "--version-policy",
        "all",
        "--model-option",
        "m:inline_compute_us=7",
        "--auth-token-file",
        str(token),
        "--metrics-port",
        "0",
        "--max-message-bytes",
        "4096",
        "--health-without-auth",
    ]
    settings = settings_from_args(build_parser().parse_args(given))
    assert (settings.dynamic_batching, str(settings.version_policy), settings.model_options) == (
        False,
        "all",
        {"m": {"inline_compute_us": 7}},
    )
    assert (settings.auth_token, settings.metrics_port, settings.max_message_bytes) == (
        "s3cret",
        0,
        4096,
    )
    assert settings.health_without_auth
    flags = {option for action in serve_parser()._actions for option in action.option_strings}
    for setting in dataclasses.fields(ServerSettings):
        assert flag_of(setting) in flags, f"ServerSettings.{setting.name} has no {flag_of(setting)}"


@pytest.mark.parametrize(
    "setting",
    [s for s in dataclasses.fields(ServerSettings) if s.metadata["protocols"]],
    ids=lambda s: s.name,
)
def test_the_help_names_every_port_the_setting_governs(setting):
    text = help_text(setting)
    assert set(setting.metadata["protocols"]) <= set(PROTOCOLS)
    for protocol in setting.metadata["protocols"]:
        assert protocol in text, f"{flag_of(setting)}: the help does not name {protocol}: {text!r}"


def test_help_choices_and_keys_come_from_the_declarations():
    actions = {action.dest: action for action in serve_parser()._actions}
    assert (
        tuple(actions["backend"].choices) == BACKENDS
        and tuple(actions["device"].choices) == DEVICES
    )
    assert tuple(actions["model_control"].choices) == MODEL_CONTROL_MODES
    for key in MODEL_OPTION_KEYS:
        assert key in actions["model_options"].help, key
    for flag in ("max_message_bytes", "auth_token", "max_connections", "connection_idle_seconds"):
        assert "gRPC" in actions[flag].help and "HTTP" in actions[flag].help, flag


def test_building_every_parser_imports_neither_grpc_nor_prometheus():
    """`bnserve train --help` lists no serve flag, but the parser is built whole: settings must stay light."""
    probe = (
        "import sys; from bnserve.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('grpc', 'prometheus_client', 'aiohttp', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
