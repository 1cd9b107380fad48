"""mailproxy.testing against the real thing: a scripted session answers each command as
a real proxy process answers smtplib, byte for byte where the proxy speaks; a plugin
runs in a real proxy in front of the recording upstream (observe mode counted, a wrong
option refused as `check` refuses it); the scaffold's plugin works there; the example
plugin's own tests pass."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

import mailproxy
from mailproxy.protocol.smtp_message import unstuff
from mailproxy.scaffold import new_plugin
from mailproxy.testing import ConfigError

pytestmark = pytest.mark.integration

ROOT = Path(mailproxy.__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "examples" / "sender_login"

PLUGIN = '''
from mailproxy import PluginSettings, Verdict, hookimpl


class Plugin:
    class Config(PluginSettings):
        greeting: str = ""  # "tempfail" or "reject": refuse every connection

    def __init__(self, settings, context):
        self.greeting = settings.greeting

    @hookimpl
    def smtp_connect(self):
        if self.greeting == "tempfail":
            return Verdict.tempfail(450, "4.7.1", "Busy, come back later")
        if self.greeting == "reject":
            return Verdict.reject(550, "5.7.1", "Not from here")

    @hookimpl
    def smtp_helo(self, hostname):
        if hostname == "bad.example":
            return Verdict.reject(550, "5.7.1", "Bad HELO")

    @hookimpl
    def smtp_auth(self, username):
        if username == "mallory@example.test":
            return Verdict.reject(535, "5.7.8", "Not you")

    @hookimpl
    def smtp_mail(self, envelope, address):
        envelope.add_header("X-Sender-Seen", address)
        if address == "multi@example.org":
            return Verdict.reject(554, "5.7.1", "Refused\\nsee https://example.org/why")
        if address == "raise@example.org":
            raise RuntimeError("a bug in the plugin")

    @hookimpl
    def smtp_rcpt(self, envelope, address):
        envelope.add_header("X-Recipient-Seen", address)
        if address.startswith("later@"):
            return Verdict.tempfail(450, "4.2.0", "Mailbox busy")
        if address.startswith("bye@"):
            return Verdict.disconnect(421, "4.7.0", "Enough")

    @hookimpl
    def smtp_data(self, envelope, message):
        if b"REFUSE" in message:
            return Verdict.reject(554, "5.7.1", "Content refused")
        envelope.add_header("X-Lines", str(message.count(b"\\r\\n")))
'''

# (command, argument): played by a scripted session and by smtplib against a real proxy.
SCRIPT = [
    ("ehlo", "bad.example"),
    ("ehlo", "client.example"),
    ("mail", "raise@example.org"),
    ("mail", "a@example.org"),
    ("rcpt", "b@example.test"),
    ("data", b"Subject: refused\r\n\r\nREFUSE\r\n"),
    # Header lines added for a refused MAIL or RCPT must not reach the message.
    ("mail", "multi@example.org"),
    ("mail", "a@example.org"),
    ("rcpt", "later@example.test"),
    ("rcpt", "b@example.test"),
    ("data", b"Subject: hi\r\n\r\n.a line with a dot\r\nhello\r\n"),
    ("mail", "c@example.org"),
    ("rcpt", "bye@example.test"),
]
USERS = {"alice@example.test": "alice-secret"}


@pytest.fixture
def plugin_file(tmp_path) -> Path:
    path = tmp_path / "agree.py"
    path.write_text(PLUGIN)
    return path


def as_smtplib(result) -> tuple[int, str]:
    """A scripted result as smtplib reports a reply: the code, and the lines without it."""
    return result.code, "\n".join(line[4:] for line in result.lines)


def played(client: smtplib.SMTP, command: str, argument) -> tuple[int, str]:
    if command == "data":
        code, text = client.data(argument)
    else:
        code, text = getattr(client, command)(argument)
    return code, text.decode()


async def test_the_scripted_session_answers_as_the_real_proxy(mailproxy_policy, mailproxy_proxy, plugin_file):
    proxy = mailproxy_proxy(plugin_file)
    smtp = mailproxy_policy(plugin_file)
    with proxy.client() as client:
        for command, argument in SCRIPT:
            scripted = await getattr(smtp, command)(argument)
            real = played(client, command, argument)
            if scripted.origin == "proxy":  # what the proxy says itself: exactly that
                assert real == as_smtplib(scripted), (command, argument)
            else:  # the upstream would answer: both let the command through
                assert real[0] == scripted.code, (command, argument, real)
            if command == "data" and scripted.code == 250:
                delivered = proxy.upstream.messages[-1]
                assert unstuff(delivered + b"\r\n") == scripted.message
        assert scripted.closes
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    assert len(proxy.upstream.messages) == 1


@pytest.mark.parametrize("greeting", ["tempfail", "reject"])
async def test_a_refused_connection_is_greeted_as_the_real_proxy_greets_it(
    mailproxy_policy, mailproxy_proxy, plugin_file, greeting
):
    proxy = mailproxy_proxy(plugin_file, {"greeting": greeting})
    client = smtplib.SMTP(timeout=30)
    try:
        code, text = client.connect(*proxy.address)
    finally:
        client.close()
    scripted = await mailproxy_policy(plugin_file, {"greeting": greeting}).connect()
    assert (code, text.decode()) == as_smtplib(scripted)


@pytest.mark.parametrize(("username", "password"), [
    ("alice@example.test", "alice-secret"),
    ("alice@example.test", "wrong"),
    ("mallory@example.test", "alice-secret"),
])
async def test_auth_is_answered_as_the_real_proxy_answers_it(
    mailproxy_policy, mailproxy_proxy, plugin_file, username, password
):
    proxy = mailproxy_proxy(plugin_file, mode="submission", users=USERS)
    with proxy.client() as client:
        client.ehlo("laptop.example")
        client.user, client.password = username, password
        try:
            code, text = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as refused:
            code, text = refused.smtp_code, refused.smtp_error
    smtp = mailproxy_policy(plugin_file, mode="submission", users=USERS)
    await smtp.ehlo("laptop.example")
    assert (code, text.decode()) == as_smtplib(await smtp.auth(username, password))


def test_a_plugin_in_observe_mode_is_counted_and_not_enforced(mailproxy_proxy, plugin_file):
    proxy = mailproxy_proxy(plugin_file, {"observe": True})
    with proxy.client() as client:
        client.ehlo("client.example")
        assert client.mail("multi@example.org")[0] == 250
        assert client.rcpt("b@example.test")[0] == 250
        assert client.data(b"Subject: tried\r\n\r\nhello\r\n")[0] == 250
    assert proxy.metric("mailproxy_verdicts_total", plugin="agree", action="reject", enforced="false") == 1
    assert "plugin agree smtp_mail: reject (observe mode, not enforced)" in proxy.log()
    [message] = proxy.upstream.messages
    assert message.startswith(b"X-Sender-Seen: multi@example.org\r\n")


def test_a_wrong_option_stops_the_proxy_as_check_would(mailproxy_proxy, plugin_file):
    with pytest.raises(ConfigError, match=r"mailproxy\.toml: plugin\.agree\.greting: unknown key"):
        mailproxy_proxy(plugin_file, {"greting": "reject"})


def test_a_scaffolded_plugin_works_in_a_real_proxy(mailproxy_proxy, tmp_path):
    plugin, _ = new_plugin("no_spam", tmp_path / "plugins.d")
    proxy = mailproxy_proxy(plugin, {"deny_sender_domains": ["spam.example"]})
    with proxy.client() as client:
        client.ehlo("client.example")
        assert client.mail("a@spam.example") == (550, b"5.7.1 Sender domain not accepted here")
        client.sendmail("a@example.org", ["b@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
    assert proxy.upstream.messages == [b"Subject: hi\r\n\r\nhello"]


def test_the_example_plugin_passes_its_own_tests():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout
