"""`mailproxy plugin new NAME`: a working single-file drop-in plugin, and its test.

The plugin is `DIR/NAME.py`, ready for a directory of `[plugins] directories`; its test
is `DIR/tests/test_NAME.py` (a subdirectory, so that the proxy, which loads every
`*.py` of a plugin directory it is told to, never sees it) and passes as written, with
the fixtures of `mailproxy.testing`. Nothing is overwritten.
"""

from __future__ import annotations

import importlib.metadata
import keyword
from pathlib import Path
from string import Template

from .plugins import ENTRY_POINT_GROUP


class ScaffoldError(Exception):
    """Why nothing was written, in one line."""


PLUGIN = Template('''\
"""$name: refuse mail from the sender domains it is given.

A mailproxy drop-in plugin: put this file in a directory that `[plugins] directories`
names, and enable it:

    [plugins]
    directories = ["/etc/mailproxy/plugins.d"]
    enabled = ["$name"]

    [plugin.$name]
    deny_sender_domains = ["spam.example"]
    observe = true   # to try it out: refusals are logged and counted, not sent

Every hook, what it receives and what it may return: docs/hooks.md.
"""

from __future__ import annotations

from mailproxy import PluginSettings, Session, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        """The options of [plugin.$name]: an unknown key or a wrong type is a configuration error."""

        deny_sender_domains: list[str] = []

    def __init__(self, settings: Config, context) -> None:
        self.denied = {domain.lower() for domain in settings.deny_sender_domains}

    # A hook takes the arguments it needs, by name (session, envelope, address, params).
    @hookimpl
    def smtp_mail(self, session: Session, address: str) -> Verdict | None:
        domain = address.rpartition("@")[2].lower()
        if domain in self.denied:
            return Verdict.reject(550, "5.7.1", "Sender domain not accepted here")
        return None  # no opinion: the other plugins, then the mail server, decide
''')

TEST = Template('''\
"""Tests of the $name plugin: python -m pytest $test_path

`mailproxy_policy` loads the plugin as the proxy does and plays an SMTP session
against it: each command returns the reply the proxy would send. `mailproxy_proxy`
runs a real proxy with the plugin in front of a recording mail server, for tests end
to end. Both come with mailproxy (mailproxy.testing).
"""

from pathlib import Path

import pytest

from mailproxy.testing import ConfigError

PLUGIN = Path(__file__).resolve().parent.parent / "$name.py"
OPTIONS = {"deny_sender_domains": ["spam.example"]}


async def test_a_sender_from_a_denied_domain_is_refused(mailproxy_policy):
    smtp = mailproxy_policy(PLUGIN, OPTIONS)
    await smtp.ehlo("mail.client.example")
    result = await smtp.mail("someone@SPAM.example")
    assert str(result) == "550 5.7.1 Sender domain not accepted here"


async def test_other_senders_pass(mailproxy_policy):
    smtp = mailproxy_policy(PLUGIN, OPTIONS)
    await smtp.ehlo("mail.client.example")
    assert (await smtp.mail("someone@example.org")).code == 250
    assert (await smtp.rcpt("postmaster@example.test")).code == 250


async def test_in_observe_mode_nothing_is_refused(mailproxy_policy):
    smtp = mailproxy_policy(PLUGIN, {**OPTIONS, "observe": True})
    assert not (await smtp.mail("someone@spam.example")).refused


def test_a_misspelt_option_is_a_configuration_error(mailproxy_policy):
    with pytest.raises(ConfigError, match=r"plugin\\.$name\\.deny_sender_domain: unknown key"):
        mailproxy_policy(PLUGIN, {"deny_sender_domain": ["spam.example"]})
''')


def check_name(name: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ScaffoldError(f"{name!r} is not a plugin name: use letters, digits and _, not starting with a digit")
    if name.startswith("_"):
        raise ScaffoldError(f"{name!r} starts with _, and the proxy skips such files in a plugin directory")
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            raise ScaffoldError(f"{name!r} is the name of an installed plugin ({entry_point.value}): choose another")


def new_plugin(name: str, directory: Path) -> tuple[Path, Path]:
    """Write DIR/NAME.py and DIR/tests/test_NAME.py; return their paths."""
    check_name(name)
    plugin = directory / f"{name}.py"
    test = directory / "tests" / f"test_{name}.py"
    for path in (plugin, test):
        if path.exists():
            raise ScaffoldError(f"{path} already exists; nothing was written")
    try:
        test.parent.mkdir(parents=True, exist_ok=True)
        with plugin.open("x", encoding="utf-8") as out:
            out.write(PLUGIN.substitute(name=name))
        with test.open("x", encoding="utf-8") as out:
            out.write(TEST.substitute(name=name, test_path=test.relative_to(directory)))
    except OSError as exc:
        raise ScaffoldError(f"cannot write {exc.filename or directory}: {exc.strerror or exc}") from None
    return plugin, test
