"""The greylist plugin's RCPT hook with real Session objects, on the memory backend and
on a real redis-server. The plugin's clock is a test clock (so is the memory backend's);
in Redis, expiries are real and the tests move them with PEXPIRE instead of waiting."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from mailproxy import Action, PluginContext
from mailproxy.config import ConfigError
from mailproxy.state import MemoryState
from mailproxy.state_redis import RedisState
from mailproxy_plugins.greylist import Plugin
from tests.support.plugins import client_session, load_plugin, sender_envelope
from tests.support.clock import Clock
from tests.support.redis import Backend, RedisServer

DELAY, WINDOW, EXPIRY = 300.0, 3600.0, 7 * 86400.0
CLIENT, SENDER, RECIPIENT = "192.0.2.1", "alice@sender.example", "bob@example.test"
GREYLISTED = (Action.TEMPFAIL, 450, "4.7.1")


class Greylist:
    """A greylist plugin on fresh state of one backend, its clock in the test's hand.
    `other_worker()` is a second plugin instance on the same state, as another worker
    process has it."""

    def __init__(self, kind: str, redis_server: RedisServer, **options) -> None:
        self.clock = Clock()
        self.backend = Backend(kind, redis_server, self.clock)
        self.options = {"delay": DELAY, "retry_window": WINDOW, "expiry": EXPIRY, "skip_clients": [], **options}
        self.plugin = self.other_worker()
        self.later = self.clock.later

    def other_worker(self) -> Plugin:
        context = PluginContext(self.backend.state(), None, logging.getLogger("test"))
        plugin = Plugin(Plugin.Config(**self.options), context)
        plugin.clock = self.clock
        return plugin

    async def rcpt(self, client=CLIENT, sender=SENDER, recipient=RECIPIENT, plugin=None):
        verdict = await (plugin or self.plugin).smtp_rcpt(
            session=client_session(client), envelope=sender_envelope(sender), address=recipient
        )
        return None if verdict is None else (verdict.action, verdict.reply.code, verdict.reply.enhanced)


def scenario(kind, redis_server, steps, **options) -> None:
    async def main():
        greylist = Greylist(kind, redis_server, **options)
        try:
            await steps(greylist)
        finally:
            await greylist.backend.close()

    asyncio.run(main())


def checks(result: str) -> float:
    labels = {"plugin": "greylist", "check": "triplet", "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


def results() -> dict[str, float]:
    return {r: checks(r) for r in ("new", "early", "passed", "known", "state_error")}


def test_first_sight_is_deferred_a_retry_after_the_delay_passes(backend, redis_server):
    before = results()

    async def steps(g: Greylist):
        assert await g.rcpt() == GREYLISTED
        g.later(DELAY - 1)
        assert await g.rcpt() == GREYLISTED  # too early
        g.later(1)
        assert await g.rcpt() is None  # retried after the delay
        g.later(EXPIRY - 1)
        assert await g.rcpt() is None  # remembered

    scenario(backend, redis_server, steps)
    after = results()
    assert {r: after[r] - before[r] for r in after} == {"new": 1, "early": 1, "passed": 1, "known": 1, "state_error": 0}


def timings() -> float:
    labels = {"plugin": "greylist", "check": "triplet"}
    return REGISTRY.get_sample_value("mailproxy_plugin_check_duration_seconds_count", labels) or 0.0


def test_each_triplets_round_trips_are_timed_with_redis_only(backend, redis_server):
    before = timings()

    async def steps(g: Greylist):
        assert await g.rcpt() == GREYLISTED
        assert await g.rcpt() == GREYLISTED

    scenario(backend, redis_server, steps)
    assert timings() - before == (2 if backend == "redis" else 0)


def test_the_reply_says_when_to_retry(backend, redis_server):
    async def steps(g: Greylist):
        session, envelope = client_session(CLIENT), sender_envelope(SENDER)
        first = await g.plugin.smtp_rcpt(session=session, envelope=envelope, address=RECIPIENT)
        g.later(100)
        second = await g.plugin.smtp_rcpt(session=session, envelope=envelope, address=RECIPIENT)
        assert first.reply.lines() == ["450 4.7.1 Greylisted, try again in 300 seconds"]
        assert second.reply.lines() == ["450 4.7.1 Greylisted, try again in 200 seconds"]

    scenario(backend, redis_server, steps)


def test_each_part_of_the_triplet_counts(backend, redis_server):
    async def steps(g: Greylist):
        assert await g.rcpt() == GREYLISTED
        g.later(DELAY)
        assert await g.rcpt() is None
        # Another recipient, another sender, another network: new triplets.
        assert await g.rcpt(recipient="carol@example.test") == GREYLISTED
        assert await g.rcpt(sender="other@sender.example") == GREYLISTED
        assert await g.rcpt(sender="") == GREYLISTED  # the null sender is a sender too
        assert await g.rcpt(client="192.0.3.1") == GREYLISTED
        # The same /24 (a sender's pool of hosts) and other letter case: the same triplet.
        assert await g.rcpt(client="192.0.2.200") is None
        assert await g.rcpt(sender="Alice@Sender.Example", recipient="BOB@example.test") is None
        assert await g.rcpt(client="::ffff:192.0.2.7") is None  # IPv4-mapped: the IPv4 network

    scenario(backend, redis_server, steps)


def test_ipv6_clients_are_grouped_by_64(backend, redis_server):
    async def steps(g: Greylist):
        assert await g.rcpt(client="2001:db8:1:2::1") == GREYLISTED
        g.later(DELAY)
        assert await g.rcpt(client="2001:db8:1:2:ffff::9") is None
        assert await g.rcpt(client="2001:db8:1:3::1") == GREYLISTED

    scenario(backend, redis_server, steps)


def test_prefixes_are_settings(backend, redis_server):
    async def steps(g: Greylist):
        assert await g.rcpt(client="192.0.2.1") == GREYLISTED
        g.later(DELAY)
        assert await g.rcpt(client="192.0.2.2") == GREYLISTED  # /32: another host

    scenario(backend, redis_server, steps, ipv4_prefix=32)


def test_a_retry_after_the_window_starts_over(backend, redis_server):
    async def steps(g: Greylist):
        assert await g.rcpt() == GREYLISTED
        g.later(WINDOW)
        assert await g.rcpt() == GREYLISTED  # too late: seen anew, now
        g.later(DELAY - 1)
        assert await g.rcpt() == GREYLISTED
        g.later(1)
        assert await g.rcpt() is None

    scenario(backend, redis_server, steps)


def test_another_worker_sees_the_same_triplets(backend, redis_server):
    async def steps(g: Greylist):
        other = g.other_worker()
        assert await g.rcpt() == GREYLISTED
        assert await g.rcpt(plugin=other) == GREYLISTED  # early there too
        g.later(DELAY)
        assert await g.rcpt(plugin=other) is None
        assert await g.rcpt(recipient="carol@example.test", plugin=other) == GREYLISTED
        g.later(DELAY)
        assert await g.rcpt(recipient="carol@example.test") is None

    scenario(backend, redis_server, steps)


class LooksTooSoon(MemoryState):
    """A state in which the next look at a key misses a record that another worker adds
    just after it: that worker's get answers None, its add then finds the record."""

    def __init__(self, clock) -> None:
        super().__init__(clock=clock)
        self.race = False  # set by the test before the look that races

    async def get(self, key: str) -> str | None:
        if self.race:
            self.race = False
            return None
        return await super().get(key)


def test_a_triplet_another_worker_records_meanwhile_keeps_its_first_time():
    clock = Clock()
    state = LooksTooSoon(clock)
    plugin = Plugin(Plugin.Config(skip_clients=[]), PluginContext(state, None, logging.getLogger("test")))
    plugin.clock = clock

    async def steps():
        session, envelope = client_session(CLIENT), sender_envelope(SENDER)
        assert (await plugin.smtp_rcpt(session=session, envelope=envelope, address=RECIPIENT)).reply.text == (
            "Greylisted, try again in 300 seconds"
        )
        clock.later(100)
        state.race = True
        # Not a new first attempt: the one on record, 100 s ago.
        assert (await plugin.smtp_rcpt(session=session, envelope=envelope, address=RECIPIENT)).reply.text == (
            "Greylisted, try again in 200 seconds"
        )

    asyncio.run(steps())


def test_a_triplet_that_passed_is_forgotten_after_its_expiry_unless_used(redis_server):
    """Memory backend: its clock is the test's."""

    async def steps(g: Greylist):
        assert await g.rcpt() == GREYLISTED
        g.later(DELAY)
        assert await g.rcpt() is None
        g.later(EXPIRY - 10)
        assert await g.rcpt() is None  # used: kept for another EXPIRY from now
        g.later(EXPIRY - 10)
        assert await g.rcpt() is None
        g.later(EXPIRY)
        assert await g.rcpt() == GREYLISTED  # unused for EXPIRY: forgotten

    scenario("memory", redis_server, steps)


def test_in_redis_a_triplet_is_kept_for_its_expiry_refreshed_on_use(redis_server):
    async def steps(g: Greylist):
        raw = redis_server.client()
        assert await g.rcpt() == GREYLISTED
        [key] = g.backend.keys()
        assert key.startswith(f"{g.backend.prefix}greylist:")
        assert WINDOW * 1000 - 10_000 < raw.pttl(key) <= WINDOW * 1000
        assert RECIPIENT not in key and SENDER not in key and CLIENT not in key  # a digest
        g.later(DELAY)
        assert await g.rcpt() is None
        assert EXPIRY * 1000 - 10_000 < raw.pttl(key) <= EXPIRY * 1000
        raw.pexpire(key, 5000)  # most of the expiry gone
        assert await g.rcpt() is None
        assert raw.pttl(key) > 5000  # refreshed
        raw.pexpire(key, 1)
        await asyncio.sleep(0.05)
        assert raw.exists(key) == 0
        assert await g.rcpt() == GREYLISTED  # forgotten

    scenario("redis", redis_server, steps)


@pytest.mark.parametrize("client, mode, authenticated, recipient", [
    ("127.0.0.1", "mx", False, RECIPIENT),  # skip_clients
    (CLIENT, "submission", False, RECIPIENT),  # modes, by default ["mx"]
    (CLIENT, "mx", True, RECIPIENT),
    (CLIENT, "mx", False, "postmaster@example.org"),  # skip_recipient_domains
    (CLIENT, "mx", False, "someone@Lists.Example.ORG."),
])
def test_what_is_never_greylisted(backend, redis_server, client, mode, authenticated, recipient):
    before = results()

    async def steps(g: Greylist):
        for _ in range(2):
            session = client_session(client, mode=mode)
            session.authenticated = authenticated
            assert await g.plugin.smtp_rcpt(
                session=session, envelope=sender_envelope(SENDER), address=recipient
            ) is None
        # Exactly the listed domains: a subdomain is listed on its own.
        assert await g.rcpt(recipient="someone@sub.example.org") == GREYLISTED

    scenario(backend, redis_server, steps, skip_clients=["127.0.0.0/8"],
             skip_recipient_domains=["example.org", "lists.example.org"])
    after = results()
    assert {r: after[r] - before[r] for r in after} == {"new": 1, "early": 0, "passed": 0, "known": 0, "state_error": 0}


@pytest.mark.parametrize("on_state_error, expected", [("pass", None), ("tempfail", GREYLISTED)])
def test_while_the_state_is_unavailable(on_state_error, expected):
    nowhere = RedisServer()  # nothing listens on its port
    plugin = Plugin(
        Plugin.Config(skip_clients=[], on_state_error=on_state_error),
        PluginContext(RedisState(nowhere.url, timeout=5.0), None, logging.getLogger("test")),
    )
    before = checks("state_error")
    redis_errors = {"backend": "redis", "operation": "get"}
    errors_before = REGISTRY.get_sample_value("mailproxy_state_errors_total", redis_errors) or 0.0

    async def steps():
        verdict = await plugin.smtp_rcpt(
            session=client_session(CLIENT), envelope=sender_envelope(SENDER), address=RECIPIENT
        )
        return None if verdict is None else (verdict.action, verdict.reply.code, verdict.reply.enhanced)

    assert asyncio.run(steps()) == expected
    assert checks("state_error") == before + 1
    assert REGISTRY.get_sample_value("mailproxy_state_errors_total", redis_errors) == errors_before + 1


def test_defaults():
    settings = Plugin.Config()
    assert (settings.delay, settings.retry_window, settings.expiry) == (300, 86400, 35 * 86400)
    assert (settings.ipv4_prefix, settings.ipv6_prefix) == (24, 64)
    assert settings.modes == ["mx"] and "127.0.0.0/8" in settings.skip_clients
    assert (settings.skip_recipient_domains, settings.on_state_error) == ([], "pass")


@pytest.mark.parametrize("options, message", [
    ({"delay": 600, "retry_window": 600},
     "plugin.greylist.retry_window: must be longer than delay (600): a retry could never pass"),
    ({"delay": -1}, "plugin.greylist.delay: Input should be greater than or equal to 0"),
    ({"expiry": 0}, "plugin.greylist.expiry: Input should be greater than 0"),
    ({"ipv4_prefix": 33}, "plugin.greylist.ipv4_prefix: Input should be less than or equal to 32"),
    ({"skip_recipient_domains": ["example.test", "not a domain"]},
     "plugin.greylist.skip_recipient_domains: 'not a domain' is not a domain name"),
    ({"skip_clients": ["192.0.2.0/33"]},
     "plugin.greylist.skip_clients: '192.0.2.0/33' is not an IP network (like 192.0.2.0/24)"),
    ({"on_state_error": "reject"}, "plugin.greylist.on_state_error: Input should be 'pass' or 'tempfail'"),
    ({"whitelist": []}, "plugin.greylist.whitelist: unknown key"),
])
def test_config_problems(options, message):
    with pytest.raises(ConfigError) as error:
        load_plugin("greylist", "127.0.0.1:53", **options)
    assert str(error.value) == f"config: {message}"
