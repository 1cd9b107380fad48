"""config/mailproxy.service: the sandbox it promises, a command line the real `mailproxy`
accepts, and a stop timeout longer than the example configuration's drain."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailproxy.config import load_config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "config" / "mailproxy.service"
INSTALLED_PROGRAM = "/opt/mailproxy/.venv/bin/mailproxy"
# The supervisor of several workers waits this long past shutdown_delay, shutdown_grace
# and the longest delivery before it kills a worker (mailproxy/proxy/workers.py).
SUPERVISOR_MARGIN = 5.0


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax, as far as the file uses it: sections, `Key=value` lines
    (a key may repeat), comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not expected"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, f"line {number}: {line!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


SERVICE = parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


def setting(key: str) -> str:
    values = SERVICE.get(key, [])
    assert len(values) == 1, f"{key}: expected once, found {values}"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span: `900`, `15min`, `1h 30s`, `12min30s`."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[a-z]*)+\s*", span), span
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.mark.parametrize("key, value", [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
    ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
    ("KillSignal", "SIGTERM"),
    ("Restart", "on-failure"),
])
def test_hardening(key, value):
    assert setting(key) == value


def test_a_dedicated_unprivileged_user():
    user = SERVICE.get("User", [""])[0]
    assert user not in ("", "root", "0") or SERVICE.get("DynamicUser") == ["yes"]


def test_only_internet_and_unix_sockets():
    assert set(setting("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_system_calls_are_filtered_to_a_service_s_set():
    assert SERVICE["SystemCallFilter"][0] == "@system-service"
    assert all(value.startswith("~") for value in SERVICE["SystemCallFilter"][1:])


def test_no_reload_is_promised():
    assert "ExecReload" not in SERVICE


def mailproxy_help(*args: str) -> str:
    """The help of the real command-line parser, as `mailproxy ARGS --help` prints it."""
    result = subprocess.run(
        [sys.executable, "-m", "mailproxy.cli", *args, "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"mailproxy {' '.join(args)} --help: {result.stderr}"
    return result.stdout


def options_of(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", help_text.split("options:", 1)[1]))


@pytest.mark.parametrize("key, subcommand", [("ExecStartPre", "check"), ("ExecStart", "run")])
def test_the_command_line_is_one_mailproxy_accepts(key, subcommand):
    program, *arguments = shlex.split(setting(key))
    assert program == INSTALLED_PROGRAM
    assert arguments[0] == subcommand
    accepted = options_of(mailproxy_help(subcommand))
    flags = [argument for argument in arguments[1:] if argument.startswith("-")]
    assert set(flags) <= accepted, f"{key}: {set(flags) - accepted} not accepted by `mailproxy {subcommand}`"
    assert {"-c", "--config"} & set(flags), f"{key}: no configuration file"


def test_check_validates_the_file_run_will_use():
    def config_of(key: str) -> str:
        arguments = shlex.split(setting(key))
        return arguments[arguments.index("-c") + 1]

    assert config_of("ExecStartPre") == config_of("ExecStart")
    assert Path(config_of("ExecStart")).is_absolute()


def test_the_stop_timeout_outlasts_the_drain_of_the_example_configuration(tmp_path, cert_pair):
    # config/ as shipped, with the demo certificate it points at in place.
    shutil.copytree(REPO / "config", tmp_path / "config")
    tls = tmp_path / "var" / "demo-tls"
    tls.mkdir(parents=True)
    shutil.copy(cert_pair[0], tls / "cert.pem")
    shutil.copy(cert_pair[1], tls / "key.pem")
    config = load_config(tmp_path / "config" / "mailproxy.toml")

    proxy = config.proxy
    drain = proxy.shutdown_delay + proxy.shutdown_grace + config.longest_delivery + SUPERVISOR_MARGIN
    assert seconds(setting("TimeoutStopSec")) > drain


@pytest.mark.parametrize("span, expected", [("900", 900), ("15min", 900), ("1h 30s", 3630), ("12min30s", 750)])
def test_time_spans_are_read_as_systemd_reads_them(span, expected):
    assert seconds(span) == expected


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_itself_accepts_the_unit(tmp_path):
    # verify also checks that the program exists: point it at this environment's.
    program = Path(sys.executable).with_name("mailproxy")
    assert program.is_file()
    unit = tmp_path / "mailproxy.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED_PROGRAM, str(program)), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60,
    )
    # Unknown keys and bad values are warnings on stderr with status 0: both must be clean.
    assert (result.returncode, result.stderr.strip(), result.stdout.strip()) == (0, "", "")
