"""`bnserve serve`'s flags are generated from ServerSettings: one default, one help text, one list of choices,
and the help names every port a setting governs."""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import requests

from bnserve.cli import build_parser
from bnserve.core.errors import UserError
from bnserve.server.settings import (
    BACKENDS,
    BOUNDS,
    DEVICES,
    MODEL_CONTROL_MODES,
    MODEL_OPTION_KEYS,
    PROTOCOLS,
    SETTING_FIELDS,
    ServerSettings,
    flag_of,
    help_text,
    settings_from_args,
)
from tests.helpers.cli import assert_user_error, bnserve
from tests.helpers.serving import infer_request, stub_for
from tests.servers import start_server


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


HOSTILE_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e-9", "1e12", "2147483648", "1" + "0" * 20, "abc",
                   "", "0x10", "1_000", " 5", "3.5", "-0", "65536", "1e400"]  # fmt: skip


def numeric_flags() -> list[str]:
    return sorted(flag_of(SETTING_FIELDS[key]) for key in BOUNDS)


def test_a_seeded_fuzz_of_the_numeric_flags_either_refuses_in_one_line_or_stays_in_the_table(
    tmp_path,
):
    """600 cases: every value a flag accepts lies in BOUNDS (finite); everything else is one `error:` line."""
    rng = np.random.default_rng(0)
    flags = numeric_flags()
    refused = accepted = 0
    for case in range(600):
        flag = flags[case % len(flags)]
        pick = rng.integers(0, 3)
        if pick == 0:
            value = HOSTILE_NUMBERS[rng.integers(0, len(HOSTILE_NUMBERS))]
        elif pick == 1:
            value = str(int(rng.integers(-5, 5)) * 10 ** int(rng.integers(0, 22)))
        else:
            value = repr(float(rng.normal()) * 10 ** float(rng.uniform(-12, 12)))
        argv = ["serve", "--repository", str(tmp_path), flag, value]
        if flag == "--capture-rate":
            argv += ["--capture-dir", str(tmp_path.parent / "capture-fuzz")]
        try:
            settings = settings_from_args(build_parser().parse_args(argv))
        except UserError as exc:
            assert "\n" not in str(exc) and "Traceback" not in str(exc), (flag, value, str(exc))
            refused += 1
            continue
        accepted += 1
        for key, (low, high) in BOUNDS.items():
            held = getattr(settings, key)
            assert held is None or (math.isfinite(held) and low <= held <= high), (
                flag,
                value,
                key,
                held,
            )
    assert refused > 100 and accepted > 50, (refused, accepted)


@pytest.mark.parametrize(
    "option, message",
    [
        ("m:max_batch_size=1099511627776", "--model-option m:max_batch_size 1099511627776: expected an integer from 1 to 65536"),
        ("m:max_batch_size=2**40", "max_batch_size expects an integer, got '2**40'"),
        ("../x:instances=2", "'../x' is not a model name"),
        ("m:instances=100000", "expected an integer from 1 to 256"),
    ],
)  # fmt: skip
def test_model_options_are_bounded_by_the_same_table(tmp_path, option, message):
    with pytest.raises(UserError) as caught:
        settings_from_args(
            build_parser().parse_args(
                ["serve", "--repository", str(tmp_path), "--model-option", option]
            )
        )
    assert message in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-message-bytes", "2147483648"], "--max-message-bytes 2147483648: expected an integer from 1024 to 2.14748e+09"),
        (["--max-connections", "1000000000000"], "--max-connections 1000000000000: expected an integer from 1 to 1e+06"),
        (["--connection-idle-seconds", "1e12"], "--connection-idle-seconds 1000000000000.0: expected a number from 0.1 to 2e+06"),
        (["--connection-idle-seconds", "1e-9"], "expected a number from 0.1 to 2e+06"),
        (["--handshake-seconds", "1e12"], "--handshake-seconds 1000000000000.0: expected a number from 0.1 to 3600"),
        (["--grace-seconds", "nan"], "--grace-seconds nan: expected a number from 0 to 86400"),
        (["--poll-seconds", "nan"], "--poll-seconds nan: expected a number from 0 to 86400"),
        (["--max-batch-size", "100000000000000000000"], "expected an integer from 1 to 65536"),
    ],
)  # fmt: skip
def test_the_numbers_of_the_probe_are_refused_in_one_line(repository, flags, message):
    result = bnserve(
        "serve", "--repository", repository, "--grpc-port", "0", "--http-port", "0", *flags
    )
    assert_user_error(result, message)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], (1000, 4000)),
        (["--busy-queue-delay-us", "0"], (1000, 0)),
        (["--max-queue-delay-us", "200", "--busy-queue-delay-us", "2500"], (200, 2500)),
        (["--busy-queue-delay-us", "-1"], "--busy-queue-delay-us -1: expected an integer >= 0"),
        (["--busy-queue-delay-us", "60000001"], "--busy-queue-delay-us 60000001: expected an integer from 0 to 6e+07"),
        (["--model-option", "m:busy_queue_delay_us=0"], (1000, 0)),
        (["--model-option", "m:busy_queue_delay_us=-2"], "--model-option m:busy_queue_delay_us -2: expected an integer >= 0"),
    ],
)  # fmt: skip
def test_the_wait_while_the_event_loop_is_busy_is_a_flag_and_a_model_option(
    tmp_path, flags, expected
):
    argv = ["serve", "--repository", str(tmp_path), *flags]
    if isinstance(expected, str):
        with pytest.raises(UserError) as caught:
            settings_from_args(build_parser().parse_args(argv))
        assert str(caught.value) == expected
        return
    options = settings_from_args(build_parser().parse_args(argv)).batching_options("m")
    assert (options.max_queue_delay_us, options.busy_queue_delay_us) == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grpc-port", "9000", "--http-port", "9000"], "--http-port 9000: the same port as --grpc-port; each needs its own"),
        (["--grpc-port", "9000", "--http-port", "9001", "--metrics-port", "9001"], "--metrics-port 9001: the same port as --http-port; each needs its own"),
        (["--grpc-port", "9000", "--metrics-port", "9000", "--metrics-host", "0.0.0.0"], "--metrics-port 9000: the same port as --grpc-port; each needs its own"),
        (["--grpc-port", "9000", "--http-port", "9001", "--metrics-port", "9001", "--metrics-host", "127.0.0.2"], None),
        (["--grpc-port", "9000", "--http-port", "9001", "--metrics-port", "9001", "--metrics-host", "localhost"], "--metrics-port 9001: the same port as --http-port; each needs its own"),
        (["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"], None),
    ],
)  # fmt: skip
def test_two_ports_of_one_server_on_the_same_number_are_refused_by_name(tmp_path, flags, message):
    """Else the second bind fails with a bare "address already in use", as if another program held it.
    Port 0 picks a free port each time; different addresses (neither a wildcard) do not collide, and two names
    of one address ("localhost" for 127.0.0.1) do."""
    argv = ["serve", "--repository", str(tmp_path), "--host", "127.0.0.1", *flags]
    if message is None:
        settings_from_args(build_parser().parse_args(argv))
        return
    with pytest.raises(UserError) as caught:
        settings_from_args(build_parser().parse_args(argv))
    assert str(caught.value) == message


@pytest.mark.parametrize("end", [0, 1], ids=["lower", "upper"])
def test_every_numeric_flag_at_the_same_end_of_its_range_gives_a_server_that_answers(
    repository, tmp_path, end
):
    """The fuzz above proves that what is accepted lies in BOUNDS; this proves BOUNDS itself serves: every
    numeric flag at once at its lowest (then its highest) value, and a real request answered."""
    flags = []
    for key, bounds in BOUNDS.items():
        if key.endswith("_port") or (key == "capture_rate" and end == 0):
            continue  # start_server chooses the ports; a capture rate of 0 is capture off, as unset
        flags += [flag_of(SETTING_FIELDS[key]), str(bounds[end])]
    if end == 1:
        flags += ["--capture-dir", str(tmp_path / "capture")]
    server = start_server(repository, *flags, http=True)
    try:
        channel, stub = stub_for(server.url)
        answer = stub.ModelInfer(infer_request(), timeout=60)
        assert len(answer.raw_output_contents) == 2
        channel.close()
        health = requests.get(f"{server.http_url}/v2/health/ready", timeout=10)
        assert health.status_code == 200, health.text
    finally:  # at the upper end --drain-seconds is a day: the second signal is what ends it
        assert (server.stop_cutting_the_drain() if end == 1 else server.stop()) == 0
