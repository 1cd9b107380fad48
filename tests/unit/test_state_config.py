"""The [state] section: defaults, every problem as `FILE: state.key: problem` (a URL's
password never repeated), and what `mailproxy check` says about workers and state."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailproxy.config import ConfigError, StateSettings, load_config
from tests.support.configs import MINIMAL_TOML

BASE = "[proxy]\nworkers = {workers}\n" + MINIMAL_TOML + "\n[state]\n"


def write(tmp_path, state_lines: str, workers: int = 1):
    path = tmp_path / "mailproxy.toml"
    path.write_text(BASE.format(workers=workers) + state_lines + "\n")
    return path


def test_defaults():
    settings = StateSettings()
    assert settings.backend == "memory"
    assert (settings.url, settings.key_prefix, settings.timeout) == ("redis://127.0.0.1:6379/0", "mailproxy:", 1.0)


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "redis://redis.example",
    "redis://:secret@[2001:db8::1]:6380/15",
    "rediss://mailproxy:secret@redis.example:6380/1",
    "unix:///run/redis/redis.sock",
])
def test_redis_urls_that_load(tmp_path, url):
    config = load_config(write(tmp_path, f'backend = "redis"\nurl = "{url}"'))
    assert (config.state.backend, config.state.url) == ("redis", url)


@pytest.mark.parametrize("lines, problem", [
    ('backend = "mongo"', "state.backend: Input should be 'memory' or 'redis'"),
    ('url = "http://127.0.0.1:6379/0"', "state.url: not a Redis URL"),
    ('url = "redis://:secret@127.0.0.1:99999/0"', "state.url: not a Redis URL"),
    ('url = "redis://:secret@127.0.0.1:6379/zero"', "state.url: not a Redis URL"),
    ('url = "redis:///0"', "state.url: not a Redis URL"),
    ('url = "unix://"', "state.url: not a Redis URL"),
    ("timeout = 0", "state.timeout: Input should be greater than 0"),
    ("timeout = 31", "state.timeout: Input should be less than or equal to 30"),
    ('key_prefix = "' + "x" * 65 + '"', "state.key_prefix: String should have at most 64 characters"),
    ("port = 6379", "state.port: unknown key"),
])
def test_problems_name_file_key_and_problem(tmp_path, lines, problem):
    path = write(tmp_path, lines)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    text = str(error.value)
    assert text.startswith(f"{path}: {problem}"), text
    assert "\n" not in text and "secret" not in text


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailproxy.cli", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_check_does_not_warn_about_workers_with_redis_state(tmp_path):
    # `check` does not connect: Redis may come up after the proxy, whose operations
    # then fail as documented until it answers.
    path = write(tmp_path, 'backend = "redis"\nurl = "redis://127.0.0.1:1/0"', workers=4)
    result = check(path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"configuration {path}: OK")


def test_check_warns_about_workers_with_memory_state(tmp_path):
    result = check(write(tmp_path, 'backend = "memory"', workers=2))
    assert result.returncode == 0
    assert "proxy.workers = 2 with state.backend = \"memory\"" in result.stderr
    assert 'shared across processes by state.backend = "redis"' in result.stderr
