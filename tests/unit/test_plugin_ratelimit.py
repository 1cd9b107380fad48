"""The ratelimit plugin's hooks with real Session objects, on the memory backend and on a
real redis-server, with the plugin's clock (and the memory backend's) in the test's hand."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from mailproxy import Action, PluginContext
from mailproxy.config import ConfigError
from mailproxy.state_redis import RedisState
from mailproxy_plugins.ratelimit import Plugin
from tests.support.plugins import client_session, load_plugin, sender_envelope
from tests.support.clock import Clock
from tests.support.redis import Backend, RedisServer

CLIENT, SENDER = "192.0.2.1", "alice@sender.example"
OVER = (Action.TEMPFAIL, 450, "4.7.1")
NO_LIMITS = {name: 0 for name in (
    "client_connections", "client_messages", "client_recipients", "user_messages", "user_recipients",
)}


class Ratelimit:
    """A ratelimit plugin with only the given limits, on fresh state of one backend;
    `other_worker()` is a second instance on the same state."""

    def __init__(self, kind: str, redis_server: RedisServer, **options) -> None:
        self.clock = Clock(1_750_000_000.0 - 1_750_000_000.0 % 60)  # the start of a window
        self.backend = Backend(kind, redis_server, self.clock)
        self.options = {**NO_LIMITS, "skip_clients": [], **options}
        self.plugin = self.other_worker()

    def other_worker(self) -> Plugin:
        context = PluginContext(self.backend.state(), None, logging.getLogger("test"))
        plugin = Plugin(Plugin.Config(**self.options), context)
        plugin.clock = self.clock
        return plugin

    async def connect(self, client=CLIENT, plugin=None, **session):
        return outcome(await (plugin or self.plugin).smtp_connect(session=client_session(client, **session)))

    async def mail(self, client=CLIENT, sender=SENDER, user=None, plugin=None):
        session = self.session(client, user)
        return outcome(await (plugin or self.plugin).smtp_mail(session=session, address=sender))

    async def rcpt(self, client=CLIENT, sender=SENDER, user=None, plugin=None):
        session = self.session(client, user)
        envelope = sender_envelope(sender)
        return outcome(await (plugin or self.plugin).smtp_rcpt(session=session, envelope=envelope))

    @staticmethod
    def session(client: str, user: str | None):
        session = client_session(client, mode="submission" if user else "mx")
        session.authenticated, session.username = user is not None, user
        return session


def outcome(verdict):
    return None if verdict is None else (verdict.action, verdict.reply.code, verdict.reply.enhanced)


def scenario(kind, redis_server, steps, **options) -> None:
    async def main():
        ratelimit = Ratelimit(kind, redis_server, **options)
        try:
            await steps(ratelimit)
        finally:
            await ratelimit.backend.close()

    asyncio.run(main())


def checks(limit: str, result: str) -> float:
    labels = {"plugin": "ratelimit", "check": limit, "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


def test_connections_per_client(backend, redis_server):
    before = (checks("client_connections", "within"), checks("client_connections", "over"))

    async def steps(r: Ratelimit):
        assert [await r.connect() for _ in range(3)] == [None] * 3
        assert await r.connect() == OVER
        assert await r.connect(client="192.0.2.2") is None  # another client
        assert await r.connect() == OVER  # refused attempts count too

    scenario(backend, redis_server, steps, client_connections=3)
    after = (checks("client_connections", "within"), checks("client_connections", "over"))
    assert (after[0] - before[0], after[1] - before[1]) == (4, 2)


def test_messages_and_recipients_per_client(backend, redis_server):
    async def steps(r: Ratelimit):
        assert [await r.mail() for _ in range(2)] == [None, None]
        assert await r.mail() == OVER
        assert [await r.rcpt() for _ in range(4)] == [None] * 4
        assert await r.rcpt() == OVER
        # Connections were not limited, and not counted against the other limits.
        assert await r.connect() is None

    scenario(backend, redis_server, steps, client_messages=2, client_recipients=4)


def test_ipv6_clients_count_per_64(backend, redis_server):
    async def steps(r: Ratelimit):
        assert await r.connect(client="2001:db8:1:2::1") is None
        assert await r.connect(client="2001:db8:1:2::ffff") == OVER
        assert await r.connect(client="2001:db8:1:3::1") is None
        assert await r.connect(client="::ffff:192.0.2.1") is None
        assert await r.connect(client="192.0.2.1") == OVER  # IPv4-mapped: the same client

    scenario(backend, redis_server, steps, client_connections=1)


def test_an_authenticated_user_counts_per_user_not_per_client(backend, redis_server):
    async def steps(r: Ratelimit):
        assert await r.mail(client="192.0.2.1", user="alice@example.test") is None
        assert await r.mail(client="198.51.100.7", user=" Alice@Example.TEST") is None
        assert await r.mail(client="192.0.2.1", user="alice@example.test") == OVER
        assert await r.mail(client="192.0.2.1", user="bob@example.test") is None
        # The client's own limit is 1: an authenticated session did not count there.
        assert await r.mail(client="192.0.2.1") is None
        assert await r.mail(client="192.0.2.1") == OVER
        assert [await r.rcpt(user="carol") for _ in range(3)] == [None, None, OVER]

    scenario(backend, redis_server, steps, user_messages=2, client_messages=1, user_recipients=2)


def test_sender_domains(backend, redis_server):
    async def steps(r: Ratelimit):
        assert await r.mail(client="192.0.2.1", sender="a@Sender.Example") is None
        assert await r.mail(client="192.0.2.2", sender="b@sender.example") is None
        assert await r.mail(client="192.0.2.3", user="carol", sender="c@sender.example") == OVER
        assert await r.mail(client="192.0.2.3", sender="c@other.example") is None
        assert await r.mail(client="192.0.2.3", sender="") is None  # the null sender has no domain
        assert [await r.rcpt(sender="x@sender.example") for _ in range(2)] == [None, OVER]

    scenario(backend, redis_server, steps, sender_domain_messages=2, sender_domain_recipients=1)


def test_the_window_slides(backend, redis_server):
    """10 per 60 s: ten at the end of one window leave no room at the start of the next
    (fixed windows alone would allow ten more), and room comes back as they age."""

    async def steps(r: Ratelimit):
        r.clock.later(50)
        assert [await r.connect() for _ in range(10)] == [None] * 10
        r.clock.later(10)  # the next window starts: the ten count in full
        assert await r.connect() == OVER
        r.clock.later(30)  # half the previous window's ten (5), plus the refused one and this one
        assert await r.connect() is None
        r.clock.later(90)  # two windows on: nothing counted in the last one
        assert [await r.connect() for _ in range(10)] == [None] * 10
        assert await r.connect() == OVER

    scenario(backend, redis_server, steps, client_connections=10)


def test_a_client_that_keeps_trying_stays_refused_longer(backend, redis_server):
    """Refused attempts count: 100 s on, a client that stopped at the limit would have
    room again (3 * 1/3 + 1 <= 3), one that tried ten more times has not."""

    async def steps(r: Ratelimit):
        assert [await r.connect() for _ in range(3)] == [None] * 3
        assert [await r.connect() for _ in range(10)] == [OVER] * 10
        r.clock.later(100)  # a third of the first window still covered
        assert await r.connect() == OVER  # (13 * 1/3 + 1 > 3)
        assert await r.connect(client="192.0.2.2") is None

    scenario(backend, redis_server, steps, client_connections=3)


def test_over_limit_may_disconnect(backend, redis_server):
    async def steps(r: Ratelimit):
        assert await r.mail() is None
        verdict = await r.plugin.smtp_mail(session=client_session(CLIENT), address=SENDER)
        assert verdict.action is Action.DISCONNECT
        assert verdict.reply.lines() == ["421 4.7.0 Error: too many messages from your network, try again later"]

    scenario(backend, redis_server, steps, client_messages=1, over_limit="disconnect")


def test_the_refusals_say_whose_limit(backend, redis_server):
    async def steps(r: Ratelimit):
        texts = []
        for call in (
            lambda: r.plugin.smtp_connect(session=client_session(CLIENT)),
            lambda: r.plugin.smtp_rcpt(session=r.session(CLIENT, "alice"), envelope=sender_envelope(SENDER)),
            lambda: r.plugin.smtp_mail(session=client_session("192.0.2.9"), address="z@domain.example"),
        ):
            await call()
            texts.append((await call()).reply.lines())
        assert texts == [
            ["450 4.7.1 Error: too many connections from your network, try again later"],
            ["450 4.7.1 Error: too many recipients for your account, try again later"],
            ["450 4.7.1 Error: too many messages from your sender domain, try again later"],
        ]

    scenario(backend, redis_server, steps, client_connections=1, user_recipients=1, sender_domain_messages=1)


def test_workers_share_the_counts(backend, redis_server):
    async def steps(r: Ratelimit):
        other = r.other_worker()
        assert await r.connect() is None
        assert await r.connect(plugin=other) is None
        assert await r.connect() is None
        assert await r.connect(plugin=other) == OVER

    scenario(backend, redis_server, steps, client_connections=3)


@pytest.mark.parametrize("client, mode", [("127.0.0.1", "mx"), (CLIENT, "submission")])
def test_unauthenticated_sessions_it_does_not_judge(backend, redis_server, client, mode):
    async def steps(r: Ratelimit):
        for _ in range(3):
            assert await r.connect(client=client, mode=mode) is None
        assert await r.connect() is None  # and nothing was counted for anyone

    scenario(backend, redis_server, steps, client_connections=1, skip_clients=["127.0.0.0/8"])


def test_a_session_whose_client_changes_counts_for_its_new_client(backend, redis_server):
    # XCLIENT can name another client mid-session; the session's events count for it.
    async def steps(r: Ratelimit):
        session = r.session(CLIENT, None)
        assert outcome(await r.plugin.smtp_mail(session=session, address=SENDER)) is None
        session.peer = ("127.0.0.1", 25)  # skipped
        for _ in range(2):
            assert outcome(await r.plugin.smtp_mail(session=session, address=SENDER)) is None
        session.peer = ("192.0.2.2", 25)
        assert outcome(await r.plugin.smtp_mail(session=session, address=SENDER)) is None
        assert outcome(await r.plugin.smtp_mail(session=session, address=SENDER)) == OVER
        assert await r.mail() == OVER  # the first client's one message

    scenario(backend, redis_server, steps, client_messages=1, skip_clients=["127.0.0.0/8"])


def test_a_limit_of_0_is_off(backend, redis_server):
    async def steps(r: Ratelimit):
        assert [await r.mail() for _ in range(50)] == [None] * 50
        if r.backend.kind == "redis":
            assert r.backend.keys() == []  # not even counted

    scenario(backend, redis_server, steps)


def test_keys_name_the_limit_and_whom_it_counts(redis_server):
    async def steps(r: Ratelimit):
        await r.connect()
        await r.rcpt(user="alice", sender="a@sender.example")
        window = int(r.clock.now // 60)
        assert r.backend.keys() == [
            f"{r.backend.prefix}ratelimit:client_connections:192.0.2.1/32:{window}",
            f"{r.backend.prefix}ratelimit:sender_domain_recipients:sender.example:{window}",
            f"{r.backend.prefix}ratelimit:user_recipients:alice:{window}",
        ]
        ttl = redis_server.client().pttl(r.backend.keys()[0])
        assert 110_000 < ttl <= 120_000  # two windows: while it may be the previous one

    scenario("redis", redis_server, steps, client_connections=5, user_recipients=5, sender_domain_recipients=5)


def timings(check: str) -> float:
    labels = {"plugin": "ratelimit", "check": check}
    return REGISTRY.get_sample_value("mailproxy_plugin_check_duration_seconds_count", labels) or 0.0


def test_each_event_is_counted_against_all_its_limits_at_once(backend, redis_server):
    """A MAIL that counts against the client's and the sender domain's limits: a result
    for each limit, and with redis one timing for the event (one round trip); the memory
    backend's dict lookups are not timed."""
    before = (timings("messages"), checks("client_messages", "within"), checks("sender_domain_messages", "over"))

    async def steps(r: Ratelimit):
        assert await r.mail() is None
        assert await r.mail() == OVER  # the sender domain's limit; the client's holds

    scenario(backend, redis_server, steps, client_messages=5, sender_domain_messages=1)
    after = (timings("messages"), checks("client_messages", "within"), checks("sender_domain_messages", "over"))
    assert [a - b for a, b in zip(after, before)] == [2 if backend == "redis" else 0, 2, 1]


def test_while_redis_is_unavailable_each_process_counts_on_its_own():
    nowhere = RedisServer()  # nothing listens on its port
    options = {**NO_LIMITS, "skip_clients": [], "client_connections": 2}
    state = RedisState(nowhere.url, timeout=5.0)
    workers = [Plugin(Plugin.Config(**options), PluginContext(state, None, logging.getLogger("test")))
               for _ in range(2)]
    labels = {"backend": "redis", "operation": "incr_and_get"}
    before = REGISTRY.get_sample_value("mailproxy_state_errors_total", labels) or 0.0

    async def steps():
        session = client_session(CLIENT)
        return [[outcome(await w.smtp_connect(session=session)) for _ in range(3)] for w in workers]

    # Neither open (no limit) nor closed (everyone refused): the limit, per process.
    assert asyncio.run(steps()) == [[None, None, OVER], [None, None, OVER]]
    assert REGISTRY.get_sample_value("mailproxy_state_errors_total", labels) == before + 6


def test_defaults():
    settings = Plugin.Config()
    assert settings.window == 60
    assert (settings.client_connections, settings.client_messages, settings.client_recipients) == (60, 120, 600)
    assert (settings.user_messages, settings.user_recipients) == (100, 500)
    assert (settings.sender_domain_messages, settings.sender_domain_recipients) == (0, 0)
    assert (settings.ipv4_prefix, settings.ipv6_prefix, settings.over_limit) == (32, 64, "tempfail")
    assert settings.modes == ["mx"] and "127.0.0.0/8" in settings.skip_clients


@pytest.mark.parametrize("options, message", [
    ({"window": 0.5}, "plugin.ratelimit.window: Input should be greater than or equal to 1"),
    ({"client_messages": -1}, "plugin.ratelimit.client_messages: Input should be greater than or equal to 0"),
    ({"client_messages": 1.5}, "plugin.ratelimit.client_messages: Input should be a valid integer, got a number "
                               "with a fractional part"),
    ({"over_limit": "reject"}, "plugin.ratelimit.over_limit: Input should be 'tempfail' or 'disconnect'"),
    ({"user_connections": 5}, "plugin.ratelimit.user_connections: unknown key"),
])
def test_config_problems(options, message):
    with pytest.raises(ConfigError) as error:
        load_plugin("ratelimit", "127.0.0.1:53", **options)
    assert str(error.value) == f"config: {message}"
