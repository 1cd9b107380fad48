"""mailproxy.testing's scripted sessions: plugins loaded every way an author names them,
options checked as the loader checks them, and each command answered as the SMTP
session answers it (refusals, greetings, fail modes, observe mode, scores, header
lines, resets). The tests are async: the kit's pytest plugin runs them.

Whether these replies are the ones the real proxy sends is checked against a real proxy
in tests/integration/test_testing_kit_proxy.py.
"""

from __future__ import annotations

import asyncio
import itertools
import tomllib
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import mailproxy_plugins.access as access
from mailproxy import Verdict, hookimpl
from mailproxy.testing import ConfigError, ScriptError, SessionClosed, to_toml

DENY = {"deny_senders": ["*@spam.example"]}
SENDER_REFUSED = "550 5.7.1 Sender address rejected"
_names = itertools.count()


def unique(name: str) -> str:
    """Plugin names per test, so that the process-wide counters can be compared."""
    return f"{name}{next(_names)}"


def verdicts(plugin: str, enforced: str) -> float:
    total = 0.0
    for action in ("reject", "tempfail", "disconnect", "accept", "score"):
        labels = {"plugin": plugin, "hook": "smtp_mail", "action": action, "enforced": enforced}
        total += REGISTRY.get_sample_value("mailproxy_verdicts_total", labels) or 0.0
    return total


class Says:
    """A plugin that gives the verdict it is built with in one hook, and writes down
    every hook it hears, in order."""

    def __init__(self, hook: str = "", verdict: Verdict | None = None) -> None:
        self.hook, self.verdict, self.heard = hook, verdict, []

    def _hear(self, hook: str, detail: str = "") -> Verdict | None:
        self.heard.append(f"{hook} {detail}" if detail else hook)
        return self.verdict if hook == self.hook else None

    @hookimpl
    def smtp_connect(self, session):
        return self._hear("smtp_connect", session.client_address)

    @hookimpl
    def smtp_helo(self, hostname):
        return self._hear("smtp_helo", hostname)

    @hookimpl
    def smtp_mail(self, address):
        return self._hear("smtp_mail", address)

    @hookimpl
    def smtp_rcpt(self, address):
        return self._hear("smtp_rcpt", address)

    @hookimpl
    def smtp_data(self, message):
        return self._hear("smtp_data", message.decode())

    @hookimpl
    def smtp_reset(self, envelope):
        self._hear("smtp_reset", envelope.mail_from)

    @hookimpl
    def smtp_disconnect(self):
        self._hear("smtp_disconnect")


# --- loading -----------------------------------------------------------------------------


@pytest.fixture
def dropin(tmp_path: Path) -> Path:
    path = tmp_path / "deny_spam.py"
    path.write_text(
        "from mailproxy import Verdict, hookimpl\n\n"
        "@hookimpl\n"
        "def smtp_mail(address):\n"
        "    if address.endswith('@spam.example'):\n"
        "        return Verdict.reject(550, '5.7.1', 'Sender address rejected')\n"
    )
    return path


@pytest.mark.parametrize("form", ["module", "class", "installed name", "instance", "drop-in path", "drop-in str"])
async def test_a_plugin_loads_however_it_is_named(mailproxy_policy, dropin, form):
    plugin, options = {
        "module": (access, DENY),
        "class": (access.Plugin, DENY),
        "installed name": ("access", DENY),
        "instance": (access.Plugin(access.Plugin.Config(**DENY), None), {}),
        "drop-in path": (dropin, {}),
        "drop-in str": (str(dropin), {}),
    }[form]
    smtp = mailproxy_policy(plugin, options)
    assert str(await smtp.mail("bulk@spam.example")) == SENDER_REFUSED
    assert (await smtp.rset()).code == 250
    assert (await smtp.mail("someone@example.org")).code == 250


async def test_an_installed_module_is_named_after_its_entry_point(mailproxy_policy):
    before = verdicts("access", "true")
    smtp = mailproxy_policy(access, DENY)
    await smtp.mail("bulk@spam.example")
    assert verdicts("access", "true") == before + 1


def test_options_are_checked_as_the_loader_checks_them(mailproxy_policy):
    with pytest.raises(ConfigError, match=r"^config: plugin\.access\.deny_clients: 'x' is not an IP network"):
        mailproxy_policy(access, {"deny_clients": ["x"]})
    with pytest.raises(ConfigError, match=r"^config: plugin\.access\.deny_sender: unknown key$"):
        mailproxy_policy("access", {"deny_sender": []})
    # An instance is built already: its section holds what every plugin's holds.
    with pytest.raises(ConfigError, match=r"^config: plugin\.says\.deny_senders: unknown key$"):
        mailproxy_policy(Says(), {"deny_senders": []}, name="says")
    with pytest.raises(ConfigError, match=r"^config: plugin\.says\.fail_mode: "):
        mailproxy_policy(Says(), {"fail_mode": "ignore"}, name="says")


class MisnamedArgument:
    @hookimpl
    def smtp_mail(self, sender):
        return None


def test_a_hook_argument_the_hook_does_not_have_is_a_configuration_error(mailproxy_policy):
    with pytest.raises(ConfigError, match=r"(?s)plugin 'misnamed' .*\{'sender'\} are declared in the hookimpl"):
        mailproxy_policy(MisnamedArgument(), name="misnamed")


def test_a_plugin_that_is_not_there_is_named_in_the_error(mailproxy_policy, tmp_path):
    with pytest.raises(ConfigError, match=r"no installed plugin named 'acess' \(installed: .*access"):
        mailproxy_policy("acess")
    with pytest.raises(ConfigError, match="no such plugin file"):
        mailproxy_policy(tmp_path / "missing.py")


# --- replies -----------------------------------------------------------------------------


@pytest.mark.parametrize(("verdict", "greeting"), [
    (Verdict.tempfail(450, "4.7.1", "Come back later"), "421 4.7.1 proxy.test Come back later"),
    (Verdict.reject(550, "5.7.1", "Go away"), "554 5.7.1 Go away"),
    (Verdict.disconnect(), "421 4.7.0 proxy.test Closing connection"),
])
async def test_a_refusal_at_connect_is_the_greeting_and_ends_the_session(mailproxy_policy, verdict, greeting):
    plugin = Says("smtp_connect", verdict)
    smtp = mailproxy_policy(plugin, name=unique("says"))
    result = await smtp.connect("198.51.100.7")
    assert (str(result), result.closes, result.origin) == (greeting, True, "proxy")
    assert plugin.heard == ["smtp_connect 198.51.100.7", "smtp_disconnect"]
    with pytest.raises(SessionClosed, match=greeting):
        await smtp.ehlo("client.example")


async def test_a_command_first_connects_and_a_refused_connection_says_so(mailproxy_policy):
    smtp = mailproxy_policy(Says(), name=unique("says"))
    assert str(await smtp.ehlo("client.example")) == "250 proxy.test"
    assert smtp.session.client_address == "192.0.2.1"
    refusing = mailproxy_policy(Says("smtp_connect", Verdict.reject(554, "5.7.1", "No")), name=unique("says"))
    with pytest.raises(SessionClosed, match="the connection was refused: 554 5.7.1 No"):
        await refusing.mail("a@example.org")


async def test_observe_mode_counts_a_refusal_and_sends_none(mailproxy_policy):
    name = unique("observed")
    smtp = mailproxy_policy(Says("smtp_mail", Verdict.reject()), {"observe": True}, name=name)
    result = await smtp.mail("a@example.org")
    assert (result.code, result.refused, result.origin) == (250, False, "upstream")
    assert verdicts(name, "false") == 1


class Fails:
    def __init__(self, how: str) -> None:
        self.how = how

    @hookimpl
    async def smtp_rcpt(self, address):
        if self.how == "raise":
            raise RuntimeError("a bug")
        if self.how == "hang":
            await asyncio.sleep(60)  # the plugin's timeout ends it long before
        return "yes"  # not a Verdict


@pytest.mark.parametrize(("how", "options", "reply"), [
    ("raise", {}, "451 4.3.0 Temporary local problem, try again later"),
    ("raise", {"fail_mode": "reject"}, "554 5.3.0 Rejected by local policy"),
    ("raise", {"fail_mode": "continue"}, "250 2.1.5 Ok"),
    ("hang", {"timeout": 0.05}, "451 4.3.0 Temporary local problem, try again later"),
    ("return something else", {}, "451 4.3.0 Temporary local problem, try again later"),
])
async def test_a_failing_plugin_gets_its_fail_mode(mailproxy_policy, how, options, reply):
    smtp = mailproxy_policy(Fails(how), options, name=unique("fails"))
    await smtp.mail("a@example.org")
    assert str(await smtp.rcpt("b@example.test")) == reply


class Scores:
    @hookimpl
    def smtp_connect(self):
        return Verdict.score("DYNAMIC_CLIENT", 3)

    @hookimpl
    def smtp_mail(self, address):
        return Verdict.score("FREEMAIL", 1.5 if address.endswith("@free.example") else 0)


async def test_session_and_message_scores_meet_the_thresholds(mailproxy_policy):
    smtp = mailproxy_policy(Scores(), name=unique("scores"), policy={"reject_score": 4.5, "tempfail_score": 4})
    assert (await smtp.connect()).code == 220
    assert str(await smtp.mail("a@example.org")) == "250 2.1.0 Ok"
    await smtp.rset()
    assert str(await smtp.mail("a@free.example")) == "550 5.7.1 Message scored as spam (score 4.5; DYNAMIC_CLIENT, FREEMAIL)"
    assert (smtp.session.score, smtp.envelope.score) == (3, 1.5)


async def test_a_message_is_tagged_by_the_action_stage_as_the_proxy_tags_it(mailproxy_policy):
    smtp = mailproxy_policy(Scores(), name=unique("scores"), policy={"add_header_score": 4, "reject_score": 10})
    await smtp.mail("a@free.example")
    await smtp.rcpt("b@example.test")
    result = await smtp.data(b"Subject: hi\r\n\r\nbody\r\n")
    assert result.message == (
        b"X-Spam-Flag: YES\r\nX-Spam-Score: 4.5\r\nX-Spam-Status: Yes, score=4.5 required=4.0\r\n"
        b"X-Spam-Symbols: DYNAMIC_CLIENT(3.0), FREEMAIL(1.5)\r\nSubject: hi\r\n\r\nbody\r\n")


async def test_a_multi_line_refusal_is_rendered_line_by_line(mailproxy_policy):
    refusal = Verdict.reject(554, "5.7.1", "Message refused\nsee https://example.org/why")
    smtp = mailproxy_policy(Says("smtp_mail", refusal), name=unique("says"))
    result = await smtp.mail("a@example.org")
    assert result.lines == ["554-5.7.1 Message refused", "554 5.7.1 see https://example.org/why"]
    assert str(result) == "554-5.7.1 Message refused\n554 5.7.1 see https://example.org/why"


# --- the transaction ---------------------------------------------------------------------


class Tags:
    @hookimpl
    def smtp_mail(self, envelope, address):
        envelope.add_header("X-Sender-Seen", address)
        if address.startswith("bounce"):
            return Verdict.reject()

    @hookimpl
    def smtp_rcpt(self, envelope, address):
        envelope.add_header("X-Recipient-Seen", address)
        if address.startswith("no"):
            return Verdict.reject(550, "5.1.1", "No such user")

    @hookimpl
    def smtp_data(self, envelope, message):
        envelope.add_header("X-Size", str(len(message)))


async def test_header_lines_of_refused_commands_are_dropped_and_the_others_lead_the_message(mailproxy_policy):
    smtp = mailproxy_policy(Tags(), name=unique("tags"))
    assert (await smtp.mail("bounce@example.org")).code == 550
    assert smtp.envelope.added_headers == []
    await smtp.mail("a@example.org")
    await smtp.rcpt("yes@example.test")
    assert str(await smtp.rcpt("no@example.test")) == "550 5.1.1 No such user"
    result = await smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
    assert result.message == (
        b"X-Sender-Seen: a@example.org\r\nX-Recipient-Seen: yes@example.test\r\nX-Size: 22\r\n"
        b"Subject: hi\r\n\r\nhello\r\n"
    )
    assert smtp.envelope.mail_from is None  # the next transaction


async def test_a_data_hook_reads_the_message_as_the_proxy_passes_it(mailproxy_policy):
    plugin = Says()
    smtp = mailproxy_policy(plugin, name=unique("says"))
    await smtp.mail("a@example.org")
    await smtp.rcpt("b@example.test")
    result = await smtp.data(b"Subject: dots\n\n.leading dot\r..two\rlast line")
    content = "Subject: dots\r\n\r\n.leading dot\r\n..two\r\nlast line\r\n"
    assert plugin.heard[-1] == f"smtp_data {content}"
    assert result.message == content.encode()


async def test_a_message_over_the_size_limit_is_refused_before_the_data_hooks(mailproxy_policy):
    plugin = Says()
    smtp = mailproxy_policy(plugin, name=unique("says"), listener={"max_message_size": 1024})
    await smtp.mail("a@example.org")
    await smtp.rcpt("b@example.test")
    result = await smtp.data(b"x" * 1100)
    assert str(result) == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert plugin.heard[-1] == "smtp_reset a@example.org"


async def test_resets_and_the_end_are_told_as_the_proxy_tells_them(mailproxy_policy):
    plugin = Says("smtp_data", Verdict.tempfail(451, "4.7.0", "Later"))
    smtp = mailproxy_policy(plugin, name=unique("says"))
    await smtp.ehlo("client.example")
    await smtp.mail("one@example.org")
    await smtp.rset()  # a transaction was open: smtp_reset
    await smtp.rset()  # none was: nothing
    await smtp.mail("two@example.org")
    await smtp.rcpt("b@example.test")
    assert str(await smtp.data(b"hello\r\n")) == "451 4.7.0 Later"  # refused: smtp_reset
    await smtp.mail("three@example.org")
    assert str(await smtp.quit()) == "221 2.0.0 Bye"
    assert plugin.heard == [
        "smtp_connect 192.0.2.1", "smtp_helo client.example",
        "smtp_mail one@example.org", "smtp_reset one@example.org",
        "smtp_mail two@example.org", "smtp_rcpt b@example.test", "smtp_data hello\r\n",
        "smtp_reset two@example.org",
        "smtp_mail three@example.org", "smtp_reset three@example.org", "smtp_disconnect",
    ]


async def test_a_delivered_message_is_not_reset(mailproxy_policy):
    plugin = Says()
    smtp = mailproxy_policy(plugin, name=unique("says"))
    await smtp.mail("a@example.org")
    await smtp.rcpt("b@example.test")
    await smtp.data(b"hello\r\n")
    await smtp.disconnect()
    assert plugin.heard[-2:] == ["smtp_data hello\r\n", "smtp_disconnect"]
    assert smtp.session.transactions == 1


async def test_a_disconnect_verdict_ends_the_session_after_its_reply(mailproxy_policy):
    plugin = Says("smtp_rcpt", Verdict.disconnect())
    smtp = mailproxy_policy(plugin, name=unique("says"))
    await smtp.mail("a@example.org")
    result = await smtp.rcpt("b@example.test")
    assert (str(result), result.closes) == ("421 4.7.0 Closing connection", True)
    assert plugin.heard[-2:] == ["smtp_reset a@example.org", "smtp_disconnect"]
    with pytest.raises(SessionClosed):
        await smtp.rset()


class Commands:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def smtp_command(self, verb, argument):
        self.seen.append((verb, argument))
        return Verdict.reject(502, "5.5.1", "Not here") if verb == "VRFY" else None


async def test_smtp_command_hears_every_command_first(mailproxy_policy):
    plugin = Commands()
    smtp = mailproxy_policy(plugin, name=unique("commands"), users={"alice": "secret"})
    await smtp.ehlo("client.example")
    await smtp.auth("alice", "secret")
    await smtp.mail("a@example.org", {"size": "10", "SMTPUTF8": True})
    await smtp.rcpt("b@example.test")
    await smtp.data(b"hello\r\n")
    assert str(await smtp.command("vrfy", "b")) == "502 5.5.1 Not here"
    assert str(await smtp.command("NOOP")) == "250 2.0.0 Ok"
    await smtp.quit()
    assert plugin.seen == [
        ("EHLO", "client.example"), ("AUTH", "PLAIN"), ("MAIL", "FROM:<a@example.org> SIZE=10 SMTPUTF8"),
        ("RCPT", "TO:<b@example.test>"), ("DATA", ""), ("VRFY", "b"), ("NOOP", ""), ("QUIT", ""),
    ]


# --- AUTH and TLS ------------------------------------------------------------------------


class Logins:
    @hookimpl
    def smtp_auth(self, username):
        if username == "mallory":
            return Verdict.reject(535, "5.7.8", "Not you")

    @hookimpl
    def authenticate(self, username, password):
        if username == "broken":
            raise ConnectionError("directory unreachable")
        return True if (username, password) == ("bob", "hunter2") else None


@pytest.mark.parametrize(("username", "password", "reply"), [
    ("alice", "secret", "235 2.7.0 Authentication successful"),  # the users given
    ("alice", "wrong", "535 5.7.8 Authentication credentials invalid"),  # decided before the plugin
    ("bob", "hunter2", "235 2.7.0 Authentication successful"),  # the plugin's authenticate
    ("carol", "x", "535 5.7.8 Authentication credentials invalid"),  # nobody knows her
    ("broken", "x", "454 4.7.0 Temporary authentication failure"),
    ("mallory", "secret", "535 5.7.8 Not you"),  # smtp_auth refused: nothing checked
])
async def test_auth_asks_the_policy_then_the_users_then_the_plugin(mailproxy_policy, username, password, reply):
    smtp = mailproxy_policy(Logins(), name=unique("logins"), mode="submission", users={"alice": "secret"})
    await smtp.ehlo("laptop.example")
    assert str(await smtp.auth(username, password)) == reply
    assert smtp.session.authenticated is reply.startswith("235")
    assert smtp.session.username == (username if reply.startswith("235") else None)


async def test_starttls_forgets_what_was_said_before(mailproxy_policy):
    smtp = mailproxy_policy(Says(), name=unique("says"), mode="submission", users={"alice": "secret"})
    await smtp.ehlo("laptop.example")
    await smtp.auth("alice", "secret")
    assert str(await smtp.starttls()) == "220 2.0.0 Ready to start TLS"
    session = smtp.session
    assert (session.tls, session.authenticated, session.username, session.host_name) == (True, False, None, None)


# --- sessions and scripts ----------------------------------------------------------------


class CountsConnections:
    def __init__(self, settings, context) -> None:
        self.connections = 0

    @hookimpl
    def smtp_connect(self):
        self.connections += 1
        return Verdict.tempfail(450, "4.7.1", "Too many") if self.connections > 1 else None


async def test_a_new_session_has_the_same_plugin_instance(mailproxy_policy):
    first = mailproxy_policy(CountsConnections, name=unique("counts"))
    assert (await first.connect()).code == 220
    second = first.new_session()
    assert second.plugin is first.plugin
    assert str(await second.connect()) == "421 4.7.1 proxy.test Too many"


async def test_a_script_no_client_could_play_is_an_error(mailproxy_policy):
    smtp = mailproxy_policy(Says(), name=unique("says"))
    with pytest.raises(ScriptError, match="rcpt"):
        await smtp.rcpt("b@example.test")
    await smtp.mail("a@example.org")
    with pytest.raises(ScriptError, match="inside a transaction"):
        await smtp.mail("a@example.org")
    with pytest.raises(ScriptError, match="data"):
        await smtp.data(b"hello\r\n")
    with pytest.raises(ScriptError, match="connect"):
        await smtp.connect()


# --- the TOML the real proxy is configured with ------------------------------------------------


def test_a_configuration_survives_toml():
    config = {
        "proxy": {"hostname": "proxy.test", "shutdown_grace": 2.0, "resolve_client_names": False},
        "upstreams": {"up": {"address": "127.0.0.1:2526"}},
        "listeners": [{"name": "mx", "local_domains": ["example.test"]}, {"name": "submission", "max_errors": 5}],
        "plugins": {"enabled": ["x"], "directories": [Path("/etc/mailproxy/plugins.d")]},
        "plugin": {"x": {
            "aliases": {"alice@example.org": ["sales@example.org"], "b c": []},
            "rules": [{"match": "a\"b\\c\n\x7f\u00e9\U0001F600", "points": -1.5}],
            "nested": {"deeper": {"on": True, "limit": float("inf")}},
        }},
    }
    expected = {**config, "plugins": {"enabled": ["x"], "directories": ["/etc/mailproxy/plugins.d"]}}
    assert tomllib.loads(to_toml(config)) == expected
