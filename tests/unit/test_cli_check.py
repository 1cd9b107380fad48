"""`mailproxy check` and `mailproxy plugins` as an administrator runs them, on config files
in tmp_path: exit 0 and a readable summary, or exit 2 and one clean message on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailproxy.auth.file import hash_password

BASE = """
[auth]
backends = ["file"]
users_file = "users"

[upstreams.main]
address = "127.0.0.1:2526"

[[listeners]]
name = "mx"
mode = "mx"
address = "127.0.0.1:2525"
upstream = "main"
local_domains = ["example.test"]

[[listeners]]
name = "submission"
mode = "submission"
address = "127.0.0.1:2587"
upstream = "main"
"""

PLUGINS = """
[plugins]
enabled = ["access"]

[plugin.access]
deny_senders = ["*@spam.example"]
"""

GOOD = BASE + PLUGINS

ACCESS_HOOKS = "smtp_connect, smtp_helo, smtp_mail, smtp_rcpt"

DROPIN = '''
"""A drop-in plugin, as an administrator would write one."""
from mailproxy import Verdict, hookimpl


class Plugin:
    def __init__(self, settings, context):
        self.settings = settings

    @hookimpl
    def smtp_mail(self, address):
        return Verdict.reject() if address.endswith("@blocked.example") else None
'''


@pytest.fixture(scope="module")
def users_line() -> str:
    return f"alice@example.test:{hash_password('secret')}\n"


@pytest.fixture
def confdir(tmp_path: Path, users_line: str) -> Path:
    directory = tmp_path.resolve()
    (directory / "users").write_text(users_line)
    return directory


def mailproxy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailproxy.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(directory: Path, text: str, name: str = "mailproxy.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def assert_config_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr == message + "\n"
    assert result.returncode == 2


# --- good configurations -----------------------------------------------------------------


def test_check_good_config(confdir):
    path = write(confdir, GOOD)
    result = mailproxy("check", "-c", str(path), cwd=confdir)
    assert result.stderr == ""
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"configuration {path}: OK",
        "upstream main: 127.0.0.1:2526 tls=none identity=auto",
        "listener mx: smtp mx on 127.0.0.1:2525 tls=none -> main",
        "listener submission: smtp submission on 127.0.0.1:2587 tls=none -> main",
        "plugins (in order):",
        "  auth:file: authenticate  (built-in credential backend)",
        f"  access: {ACCESS_HOOKS}  (entry point mailproxy_plugins.access)",
    ]


def test_check_with_tls_and_observe_mode(confdir, cert_pair):
    write_dropins(confdir, {"local_rules.py": DROPIN})
    origin = confdir / "plugins.d" / "local_rules.py"
    text = (
        BASE.replace('upstream = "main"\nlocal_domains', 'upstream = "main"\ntls = "starttls"\n'
                     'cert_file = "cert.pem"\nkey_file = "key.pem"\nlocal_domains')
        .replace('address = "127.0.0.1:2526"', 'address = "127.0.0.1:2526"\ntls = "starttls"\nverify = false')
        + '[plugins]\nenabled = ["local_rules", "access"]\ndirectories = ["plugins.d"]\n'
        + "[plugin.access]\nobserve = true\n"
    )
    path = write(confdir, text)
    result = mailproxy("check", "-c", str(path), cwd=confdir)
    assert result.stderr == ""
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"configuration {path}: OK",
        "upstream main: 127.0.0.1:2526 tls=starttls (not verified) identity=auto",
        "listener mx: smtp mx on 127.0.0.1:2525 tls=starttls -> main",
        "listener submission: smtp submission on 127.0.0.1:2587 tls=none -> main",
        "plugins (in order):",
        "  auth:file: authenticate  (built-in credential backend)",
        f"  local_rules: smtp_mail  ({origin})",
        f"  access [observe]: {ACCESS_HOOKS}  (entry point mailproxy_plugins.access)",
    ]


def test_relative_config_path_is_relative_to_the_working_directory(confdir):
    write(confdir, GOOD)
    result = mailproxy("check", "-c", "mailproxy.toml", cwd=confdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "configuration mailproxy.toml: OK"


def test_console_script(confdir):
    script = Path(sys.executable).parent / "mailproxy"
    if not script.exists():
        pytest.skip("the mailproxy console script is not installed next to this Python")
    path = write(confdir, GOOD)
    result = subprocess.run(
        [str(script), "check", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == f"configuration {path}: OK"


# --- bad configurations ------------------------------------------------------------------


BAD = [
    pytest.param(
        GOOD.replace("[[listeners]]", "bogus = 1\n[[listeners]]", 1),
        "{path}: upstreams.main.bogus: unknown key",
        id="unknown-key",
    ),
    pytest.param(
        GOOD.replace('"127.0.0.1:2587"', '"mail.example.test:587"'),
        "{path}: listeners[1].address: 'mail.example.test' is not an IP address to listen on",
        id="hostname-listen",
    ),
    pytest.param(
        GOOD.replace('upstream = "main"\nlocal_domains', 'upstream = "backup"\nlocal_domains'),
        "{path}: listeners[0].upstream: no upstream named 'backup' (main)",
        id="unknown-upstream",
    ),
    pytest.param(
        GOOD.replace('users_file = "users"', 'users_file = "passwd"'),
        "{path}: auth.users_file: file not found: {dir}/passwd",
        id="missing-users-file",
    ),
    pytest.param(
        GOOD.replace('"127.0.0.1:2587"', '"127.0.0.1:2525"'),
        "{path}: listeners[1].address: 127.0.0.1:2525 is used twice",
        id="duplicate-address",
    ),
    pytest.param(
        GOOD + "[plugin.greylist]\ndelay = 60\n",
        "{path}: plugin.greylist: section for a plugin that is not enabled",
        id="section-not-enabled",
    ),
    pytest.param(
        GOOD + "[proxy\n",
        "{path}: not valid TOML: Expected ']' at the end of a table declaration "
        f"(at line {len(GOOD.splitlines()) + 1}, column 7)",
        id="invalid-toml",
    ),
    pytest.param(
        BASE + '[plugins]\nenabled = ["access", "nosuch"]\n',
        "{path}: plugins.enabled: unknown plugin 'nosuch' (available: access, dnsbl, greylist, headers, helo, imap_audit, pregreet, ratelimit, retention, route, spf)",
        id="unknown-plugin",
    ),
    pytest.param(
        BASE + '[plugins]\nenabled = ["access"]\n[plugin.access]\ndeny_clients = ["not-a-net"]\n',
        "{path}: plugin.access.deny_clients: 'not-a-net' is not an IP network (like 192.0.2.0/24)",
        id="bad-plugin-option",
    ),
    pytest.param(
        BASE + '[plugins]\nenabled = ["access"]\n[plugin.access]\ndeny_sender = []\n',
        "{path}: plugin.access.deny_sender: unknown key",
        id="unknown-plugin-option",
    ),
    pytest.param(
        BASE + '[plugins]\nenabled = ["access"]\n[plugin.access]\ntimeout = 0\n',
        "{path}: plugin.access.timeout: Input should be greater than 0",
        id="bad-common-plugin-option",
    ),
]


@pytest.mark.parametrize("text, message", BAD)
def test_check_bad_config(confdir, text, message):
    path = write(confdir, text)
    result = mailproxy("check", "-c", str(path), cwd=confdir)
    assert_config_error(result, message.format(path=path, dir=confdir))


def test_check_missing_file(confdir):
    path = confdir / "nowhere.toml"
    assert_config_error(mailproxy("check", "-c", str(path), cwd=confdir), f"{path}: file not found")


def test_unreadable_users_file_content(confdir):
    (confdir / "users").write_text("alice:secret\n")
    path = write(confdir, GOOD)
    assert_config_error(
        mailproxy("check", "-c", str(path), cwd=confdir),
        f"{path}: auth.users_file: {confdir}/users:1: "
        "expected 'username:$argon2id$...' or a bcrypt hash",
    )


def test_plugins_command_fails_the_same_way(confdir):
    path = write(confdir, BASE + '[plugins]\nenabled = ["nosuch"]\n')
    assert_config_error(
        mailproxy("plugins", "-c", str(path), cwd=confdir),
        f"{path}: plugins.enabled: unknown plugin 'nosuch' (available: access, dnsbl, greylist, headers, helo, imap_audit, pregreet, ratelimit, retention, route, spf)",
    )


# --- drop-in plugins ---------------------------------------------------------------------


def write_dropins(confdir: Path, files: dict[str, str]) -> None:
    directory = confdir / "plugins.d"
    directory.mkdir(exist_ok=True)
    for name, source in files.items():
        (directory / name).write_text(source)


def dropin_config(confdir: Path, enabled: list[str], files: dict[str, str]) -> Path:
    write_dropins(confdir, files)
    names = ", ".join(f'"{n}"' for n in enabled)
    return write(confdir, BASE + f'[plugins]\nenabled = [{names}]\ndirectories = ["plugins.d"]\n')


def test_dropin_plugin_is_discovered_and_listed(confdir):
    path = dropin_config(
        confdir,
        ["local_rules", "access"],
        {"local_rules.py": DROPIN, "spare.py": DROPIN, "_helper.py": "x = 1\n", "notes.txt": "no"},
    )
    origin = confdir / "plugins.d" / "local_rules.py"
    result = mailproxy("plugins", "-c", str(path), cwd=confdir)
    assert result.stderr == ""
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "plugins (in order):",
        "  auth:file: authenticate  (built-in credential backend)",
        f"  local_rules: smtp_mail  ({origin})",
        f"  access: {ACCESS_HOOKS}  (entry point mailproxy_plugins.access)",
        "available, not enabled: dnsbl, greylist, headers, helo, imap_audit, pregreet, ratelimit, retention, route, spare, spf",
    ]

    result = mailproxy("check", "-c", str(path), cwd=confdir)
    assert result.returncode == 0, result.stderr
    assert f"  local_rules: smtp_mail  ({origin})" in result.stdout.splitlines()


def test_unknown_plugin_lists_dropins_as_available(confdir):
    path = dropin_config(confdir, ["local_rulez"], {"local_rules.py": DROPIN, "abuse_rules.py": DROPIN})
    assert_config_error(
        mailproxy("check", "-c", str(path), cwd=confdir),
        f"{path}: plugins.enabled: unknown plugin 'local_rulez' "
        "(available: abuse_rules, access, dnsbl, greylist, headers, helo, imap_audit, local_rules, pregreet, ratelimit, retention, route, spf)",
    )


def test_dropin_with_syntax_error(confdir):
    path = dropin_config(confdir, ["broken"], {"broken.py": "def broken(:\n    pass\n"})
    origin = confdir / "plugins.d" / "broken.py"
    result = mailproxy("check", "-c", str(path), cwd=confdir)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    # The wording of a SyntaxError varies between Python versions; its place does not.
    assert line.startswith(f"plugin 'broken' ({origin}) failed to import: SyntaxError: ")
    assert line.endswith("(broken.py, line 1)")


def test_dropin_raising_at_import(confdir):
    path = dropin_config(confdir, ["needs"], {"needs.py": "import no_such_module_here\n"})
    origin = confdir / "plugins.d" / "needs.py"
    assert_config_error(
        mailproxy("check", "-c", str(path), cwd=confdir),
        f"plugin 'needs' ({origin}) failed to import: "
        "ModuleNotFoundError: No module named 'no_such_module_here'",
    )


def test_broken_dropin_that_is_not_enabled_is_harmless(confdir):
    path = dropin_config(confdir, ["local_rules"], {"local_rules.py": DROPIN, "broken.py": "def broken(:\n"})
    result = mailproxy("plugins", "-c", str(path), cwd=confdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "available, not enabled: access, broken, dnsbl, greylist, headers, helo, imap_audit, pregreet, ratelimit, retention, route, spf"


def test_dropin_with_unknown_hook(confdir):
    source = DROPIN.replace("def smtp_mail(", "def smtp_mial(")
    path = dropin_config(confdir, ["typo"], {"typo.py": source})
    origin = confdir / "plugins.d" / "typo.py"
    result = mailproxy("check", "-c", str(path), cwd=confdir)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"plugin 'typo' ({origin}): unknown hook 'smtp_mial' in plugin ")


def test_dropin_with_wrong_hook_argument(confdir):
    source = DROPIN.replace("def smtp_mail(self, address)", "def smtp_mail(self, sender)")
    path = dropin_config(confdir, ["badarg"], {"badarg.py": source})
    origin = confdir / "plugins.d" / "badarg.py"
    result = mailproxy("check", "-c", str(path), cwd=confdir)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert result.stderr.startswith(f"plugin 'badarg' ({origin}): Plugin 'badarg' for hook 'smtp_mail'")
    assert "Argument(s) {'sender'} are declared in the hookimpl but can not be found" in result.stderr


def test_dropin_with_the_name_of_an_installed_plugin(confdir):
    path = dropin_config(confdir, ["access"], {"access.py": DROPIN})
    origin = confdir / "plugins.d" / "access.py"
    assert_config_error(
        mailproxy("check", "-c", str(path), cwd=confdir),
        f"plugin 'access' is defined twice: entry point mailproxy_plugins.access and {origin}",
    )
