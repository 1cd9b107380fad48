"""`mailproxy plugin new NAME`: the plugin and test it writes work as written (its test
passes under pytest, `mailproxy check` loads the plugin); it never overwrites; a bad
name or directory is one line on stderr, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mailproxy

# The tree under test: its mailproxy, and its pytest plugin, in every subprocess.
ROOT = Path(mailproxy.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def plugin_new(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run("-m", "mailproxy.cli", "plugin", "new", *args, cwd=cwd)


def refused_in_one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("mailproxy plugin new: ")
    return line


def test_the_generated_test_passes_at_once(tmp_path):
    written = plugin_new("no_spam", "--dir", "plugins.d", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert written.stdout.splitlines()[:2] == ["wrote plugins.d/no_spam.py", "wrote plugins.d/tests/test_no_spam.py"]
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_no_spam.py", cwd=tmp_path / "plugins.d")
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout


def test_the_generated_plugin_is_a_drop_in_the_proxy_loads(tmp_path):
    assert plugin_new("no_spam", "--dir", "plugins.d", cwd=tmp_path).returncode == 0
    (tmp_path / "mailproxy.toml").write_text(
        '[upstreams.main]\naddress = "127.0.0.1:2526"\n\n'
        '[[listeners]]\nname = "mx"\nmode = "mx"\naddress = "127.0.0.1:2525"\nupstream = "main"\n'
        'local_domains = ["example.test"]\n\n'
        '[plugins]\nenabled = ["no_spam"]\ndirectories = ["plugins.d"]\n\n'
        '[plugin.no_spam]\ndeny_sender_domains = ["spam.example"]\n'
    )
    check = run("-m", "mailproxy.cli", "check", "-c", "mailproxy.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "  no_spam: smtp_mail  (" in check.stdout
    # Its test lives below the plugin directory, where the proxy does not look.
    listed = run("-m", "mailproxy.cli", "plugins", "-c", "mailproxy.toml", cwd=tmp_path)
    assert "test_no_spam" not in listed.stdout


@pytest.mark.parametrize("existing", ["no_spam.py", "tests/test_no_spam.py"])
def test_nothing_is_overwritten(tmp_path, existing):
    target = tmp_path / existing
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# mine\n")
    line = refused_in_one_line(plugin_new("no_spam", cwd=tmp_path))
    assert line == f"mailproxy plugin new: {existing} already exists; nothing was written"
    assert target.read_text() == "# mine\n"
    assert sorted(p.name for p in tmp_path.rglob("*.py")) == [Path(existing).name]


@pytest.mark.parametrize(("name", "why"), [
    ("1st", "is not a plugin name"),
    ("no-spam", "is not a plugin name"),
    ("class", "is not a plugin name"),
    ("spam check", "is not a plugin name"),
    ("_hidden", "starts with _, and the proxy skips such files"),
    ("access", "is the name of an installed plugin (mailproxy_plugins.access)"),
])
def test_a_bad_name_is_refused_in_one_line(tmp_path, name, why):
    line = refused_in_one_line(plugin_new(name, "--dir", "out", cwd=tmp_path))
    assert f"{name!r} {why}" in line
    assert not (tmp_path / "out").exists()


def test_a_directory_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file, not a directory\n")
    line = refused_in_one_line(plugin_new("no_spam", "--dir", "taken", cwd=tmp_path))
    assert line.startswith("mailproxy plugin new: cannot write taken/tests:")
