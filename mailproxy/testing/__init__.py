"""Test a mailproxy plugin in a few lines.

Installed with mailproxy, and with it two pytest fixtures (the `pytest11` entry point
`mailproxy`; turn them off with `-p no:mailproxy`):

`mailproxy_policy` is `policy_session`: the plugin loaded as the proxy loads it, and a
scripted SMTP session against the real policy engine, without sockets. Each command
returns the reply the proxy would send::

    async def test_refuses_spam_senders(mailproxy_policy):
        smtp = mailproxy_policy(PLUGIN_FILE, {"deny_sender_domains": ["spam.example"]})
        result = await smtp.mail("someone@spam.example")
        assert str(result) == "550 5.7.1 Sender domain not accepted here"

`mailproxy_proxy` starts a `PluginProxy`: `mailproxy run` as a real process with the
plugin, in front of a `RecordingUpstream` that keeps the bytes delivered; it is stopped
after the test, which fails if the proxy did not exit cleanly::

    def test_delivers(mailproxy_proxy):
        proxy = mailproxy_proxy(PLUGIN_FILE, {"deny_sender_domains": ["spam.example"]})
        with proxy.client() as client:
            client.sendmail("a@example.org", ["b@example.test"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        assert proxy.upstream.messages == [b"Subject: hi\\r\\n\\r\\nhello"]

An `async def` test that takes one of these fixtures runs in an event loop of its own,
unless another plugin runs it (a test marked `asyncio`, `anyio` or `trio`).
"""

from ..config import ConfigError
from .policy import Result, ScriptedSession, ScriptError, SessionClosed, policy_session
from .proxy import PluginProxy
from .recorder import RecordedSession, RecordingUpstream
from .toml_writer import to_toml

__all__ = [
    "ConfigError",
    "PluginProxy",
    "RecordedSession",
    "RecordingUpstream",
    "Result",
    "ScriptError",
    "ScriptedSession",
    "SessionClosed",
    "policy_session",
    "to_toml",
]
