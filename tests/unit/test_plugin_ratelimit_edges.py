"""The ratelimit plugin at its edges: what the widest and narrowest client networks
count together, an authenticated session's connections (there is no per-user
connection limit), and each limit as the proxy reaches it, through the policy engine
(its settings' bounds are in test_plugin_settings.py). The counting is the plugin's
own, so these run on the memory backend with the test's clock
(tests/unit/test_plugin_ratelimit.py runs the flows on Redis too)."""

from __future__ import annotations

import asyncio

from mailproxy.testing import policy_session
from tests.support.clock import Clock
from tests.unit.test_plugin_ratelimit import CLIENT, NO_LIMITS, OVER, SENDER, Ratelimit, outcome, scenario


def on_memory(steps, **options) -> None:
    scenario("memory", None, steps, **options)  # the memory backend needs no Redis server


def test_the_widest_prefixes_count_the_widest_networks_together():
    # ipv4_prefix = 8 and ipv6_prefix = 16: one limit for a whole /8 or /16.
    async def steps(r: Ratelimit):
        assert await r.connect(client="192.0.2.1") is None
        assert await r.connect(client="192.255.0.1") == OVER  # the same /8
        assert await r.connect(client="193.0.2.1") is None  # another /8
        assert await r.connect(client="2001:db8::1") is None
        assert await r.connect(client="2001:ffff::1") == OVER  # the same /16
        assert await r.connect(client="2002:db8::1") is None  # another /16

    on_memory(steps, client_connections=1, ipv4_prefix=8, ipv6_prefix=16)


def test_the_narrowest_prefixes_tell_every_host_apart():
    # ipv4_prefix = 32 and ipv6_prefix = 128: a neighbour's connections are its own.
    async def steps(r: Ratelimit):
        assert await r.connect(client="192.0.2.1") is None
        assert await r.connect(client="192.0.2.2") is None
        assert await r.connect(client="192.0.2.1") == OVER
        assert await r.connect(client="2001:db8::1") is None
        assert await r.connect(client="2001:db8::2") is None
        assert await r.connect(client="2001:db8::1") == OVER

    on_memory(steps, client_connections=1, ipv4_prefix=32, ipv6_prefix=128)


# -- an authenticated session's connections -------------------------------------------------

def test_an_authenticated_session_has_no_connection_limit():
    # There is no user_connections setting: a session already logged in when it connects
    # (the SMTP session logs in only later, with AUTH, but the hook is handed whatever
    # session it gets) is neither refused nor counted, for its user or its client.
    async def steps(r: Ratelimit):
        session = r.session(CLIENT, "alice@example.test")
        assert [outcome(await r.plugin.smtp_connect(session=session)) for _ in range(5)] == [None] * 5
        # Nothing was counted against the client's own limit of 1 either.
        assert await r.connect() is None
        assert await r.connect() == OVER

    on_memory(steps, client_connections=1, user_messages=1, user_recipients=1)


# -- the proxy calls it ----------------------------------------------------------------------

def proxy_with(**limits):
    """A client connection to a proxy running the installed ratelimit plugin through the
    real policy engine, with the test's clock."""
    scripted = policy_session("ratelimit", {**NO_LIMITS, "skip_clients": [], **limits})
    scripted.plugin.clock = Clock(1_750_000_000.0 - 1_750_000_000.0 % 60)  # the start of a window
    return scripted


def test_the_proxy_limits_connections_at_connect():
    # The tests above call the methods directly; the proxy knows them only as hooks.
    async def steps():
        first = proxy_with(client_connections=1)
        assert (await first.connect(CLIENT)).lines == ["220 proxy.test ESMTP"]
        return (await first.new_session().connect(CLIENT)).lines

    # Refused at connect: a temporary refusal is the greeting, 421, and the connection ends.
    assert asyncio.run(steps()) == [
        "421 4.7.1 proxy.test Error: too many connections from your network, try again later"
    ]


def test_the_proxy_limits_messages_at_mail():
    # A client past its message limit is told at MAIL, before it sends recipients or data;
    # a second message on the same connection counts like one on a new connection.
    async def steps():
        session = proxy_with(client_messages=1)
        await session.connect(CLIENT)
        assert (await session.mail(SENDER)).lines == ["250 2.1.0 Ok"]
        await session.rset()
        return (await session.mail(SENDER)).lines

    assert asyncio.run(steps()) == ["450 4.7.1 Error: too many messages from your network, try again later"]


def test_the_proxy_limits_recipients_at_rcpt():
    # Recipients count one RCPT at a time: the one past the limit is refused, and the
    # sender can retry it later; those already accepted still go.
    async def steps():
        session = proxy_with(client_recipients=1)
        await session.connect(CLIENT)
        await session.mail(SENDER)
        assert (await session.rcpt("bob@example.test")).lines == ["250 2.1.5 Ok"]
        return (await session.rcpt("carol@example.test")).lines

    assert asyncio.run(steps()) == ["450 4.7.1 Error: too many recipients from your network, try again later"]
