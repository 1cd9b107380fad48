"""The greylist plugin at its edges (its settings' bounds are in
test_plugin_settings.py): the narrowest retry window, a retry that comes well after
the delay, and the reply for a retry due in one second. The triplet logic is the plugin's own, so these run on the memory backend with
the test's clock (tests/unit/test_plugin_greylist.py runs the flow on Redis too)."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from mailproxy import PluginContext
from mailproxy.config import ConfigError
from mailproxy.plugins import new_plugin_manager
from mailproxy.state import MemoryState
from mailproxy_plugins.greylist import Plugin
from tests.support.plugins import client_session, load_plugin, sender_envelope
from tests.support.clock import Clock
from tests.unit.test_plugin_greylist import (
    CLIENT, DELAY, GREYLISTED, RECIPIENT, SENDER, WINDOW, Greylist, checks, scenario,
)

DNS = "127.0.0.1:53"  # never asked: the greylist plugin makes no DNS queries


def on_memory(steps, **options) -> None:
    scenario("memory", None, steps, **options)  # the memory backend needs no Redis server


def test_the_widest_prefixes_group_the_widest_networks():
    async def steps(g: Greylist):
        assert await g.rcpt(client="192.0.2.1") == GREYLISTED
        assert await g.rcpt(client="2001:db8::1") == GREYLISTED
        g.later(DELAY)
        assert await g.rcpt(client="192.255.0.1") is None  # the same /8
        assert await g.rcpt(client="2001:ffff::1") is None  # the same /16
        assert await g.rcpt(client="193.0.2.1") == GREYLISTED  # another /8

    on_memory(steps, ipv4_prefix=8, ipv6_prefix=16)


def test_an_ipv6_prefix_of_128_tells_every_host_apart():
    async def steps(g: Greylist):
        assert await g.rcpt(client="2001:db8::1") == GREYLISTED
        g.later(DELAY)
        assert await g.rcpt(client="2001:db8::1") is None
        assert await g.rcpt(client="2001:db8::2") == GREYLISTED  # its neighbour is another client

    on_memory(steps, ipv6_prefix=128)


# -- when a retry passes ---------------------------------------------------------------------

def test_a_retry_well_after_the_delay_passes():
    # A real server retries on its own schedule, rarely on the exact second the delay
    # ends: any time between the delay and the retry window is accepted.
    async def steps(g: Greylist):
        assert await g.rcpt() == GREYLISTED
        g.later(DELAY + 60)
        assert await g.rcpt() is None

        assert await g.rcpt(recipient="carol@example.test") == GREYLISTED
        g.later(WINDOW - 1)
        assert await g.rcpt(recipient="carol@example.test") is None  # the last second of the window

    on_memory(steps)


# -- the reply -------------------------------------------------------------------------------

@pytest.mark.parametrize("waited, text", [
    (DELAY - 2, "Greylisted, try again in 2 seconds"),
    (DELAY - 1, "Greylisted, try again in 1 second"),
    (DELAY - 0.3, "Greylisted, try again in 1 second"),  # less than a second left: still 1
])
def test_a_retry_due_in_one_second_is_told_one_second(waited, text):
    async def steps(g: Greylist):
        session, envelope = client_session(CLIENT), sender_envelope(SENDER)
        await g.plugin.smtp_rcpt(session=session, envelope=envelope, address=RECIPIENT)
        g.later(waited)
        verdict = await g.plugin.smtp_rcpt(session=session, envelope=envelope, address=RECIPIENT)
        assert verdict.reply.lines() == [f"450 4.7.1 {text}"]

    on_memory(steps)


# -- the settings that bound the retry window -----------------------------------------------

def test_a_retry_window_shorter_than_the_delay_is_refused():
    # Not only an equal one (test_config_problems): no retry could ever pass either.
    with pytest.raises(ConfigError) as error:
        load_plugin("greylist", DNS, delay=600, retry_window=599)
    assert str(error.value) == (
        "config: plugin.greylist.retry_window: must be longer than delay (600): a retry could never pass"
    )


def test_the_narrowest_retry_window_is_accepted():
    load_plugin("greylist", DNS, delay=0, retry_window=0.5)  # raises ConfigError if refused


def test_a_retry_window_of_zero_is_refused_as_not_positive():
    with pytest.raises(ConfigError) as error:
        load_plugin("greylist", DNS, delay=0, retry_window=0)
    assert str(error.value) == "config: plugin.greylist.retry_window: Input should be greater than 0"


# -- a first attempt on record from longer ago than the window -------------------------------

@pytest.mark.parametrize("waited", [WINDOW, WINDOW + 1, 2 * WINDOW - 1])
def test_a_retry_at_or_after_a_shortened_window_starts_over(waited):
    # The state keeps a first attempt as long as the window of the instance that recorded
    # it: after a reload that shortens the window (or from a worker not yet reloaded) the
    # record outlives the new window, and a retry at or after its end starts over.
    async def steps(g: Greylist):
        assert await g.rcpt() == GREYLISTED  # recorded under the long window
        g.options["retry_window"] = WINDOW
        reloaded = g.other_worker()
        g.later(waited)
        assert await g.rcpt(plugin=reloaded) == GREYLISTED  # too late: seen anew, now
        g.later(DELAY - 1)
        assert await g.rcpt(plugin=reloaded) == GREYLISTED
        g.later(1)
        assert await g.rcpt(plugin=reloaded) is None

    on_memory(steps, retry_window=2 * WINDOW)


# -- what the shared state holds ---------------------------------------------------------------

class SharedState(MemoryState):
    """The state as another program sharing it (an operator's redis-cli, another proxy
    instance) sees it: the keys written, and values it writes itself."""

    def __init__(self, clock) -> None:
        super().__init__(clock=clock)
        self.keys: list[str] = []

    async def set(self, key: str, value: str, ttl: float) -> None:
        self.keys.append(key)
        await super().set(key, value, ttl)

    async def add(self, key: str, value: str, ttl: float) -> bool:
        self.keys.append(key)
        return await super().add(key, value, ttl)


def on_shared_state(steps) -> None:
    clock = Clock()
    state = SharedState(clock)
    plugin = Plugin(Plugin.Config(delay=DELAY, retry_window=WINDOW, skip_clients=[]),
                    PluginContext(state, None, logging.getLogger("test")))
    plugin.clock = clock

    async def rcpt(client=CLIENT, sender=SENDER, recipient=RECIPIENT):
        verdict = await plugin.smtp_rcpt(
            session=client_session(client), envelope=sender_envelope(sender), address=recipient
        )
        return None if verdict is None else verdict.reply.lines()

    asyncio.run(steps(state, clock, rcpt))


FIRST_SIGHT = ["450 4.7.1 Greylisted, try again in 300 seconds"]


@pytest.mark.parametrize("stored", ["garbage", "", "nan", "inf", "-inf", "1e999"])
def test_a_record_that_is_not_a_time_counts_as_a_new_triplet(stored):
    # Whatever else is under a triplet's key (a damaged record; "nan" or "inf", which
    # another instance's float formatting could write) is neither a crash nor a pass:
    # the triplet is seen anew, now, and a retry after the delay passes.
    async def steps(state, clock, rcpt):
        assert await rcpt() == FIRST_SIGHT
        [key] = set(state.keys)
        await state.set(key, stored, WINDOW)
        assert await rcpt() == FIRST_SIGHT
        clock.later(DELAY - 1)
        assert await rcpt() == ["450 4.7.1 Greylisted, try again in 1 second"]
        clock.later(1)
        assert await rcpt() is None

    on_shared_state(steps)


@pytest.mark.parametrize("lead", [1.0, DELAY * 10, 1e300])
def test_a_first_attempt_in_the_future_defers_for_no_more_than_the_delay(lead):
    # Instances sharing one Redis compare wall clocks. A first attempt written by one whose
    # clock runs ahead (or a damaged record far in the future) must not defer the sender
    # for the delay plus that lead: the triplet is seen anew, by this instance's clock.
    async def steps(state, clock, rcpt):
        assert await rcpt() == FIRST_SIGHT
        [key] = set(state.keys)
        await state.set(key, repr(clock() + lead), WINDOW)
        assert await rcpt() == FIRST_SIGHT
        clock.later(DELAY)
        assert await rcpt() is None

    on_shared_state(steps)


def test_a_retry_at_the_very_time_of_the_first_attempt_is_early_not_new():
    # Only a first attempt in this clock's future starts over; one at this very moment
    # (two recipients' RCPTs within the clock's resolution) is a retry come too early,
    # and the metric an administrator watches says so.
    async def steps(state, clock, rcpt):
        assert await rcpt() == FIRST_SIGHT
        before = checks("early"), checks("new")
        assert await rcpt() == FIRST_SIGHT
        assert (checks("early"), checks("new")) == (before[0] + 1, before[1])

    on_shared_state(steps)


def test_the_state_holds_each_triplet_under_a_digest_of_32_hex_digits():
    async def steps(state, clock, rcpt):
        await rcpt()
        await rcpt(client="2001:db8::1", sender="", recipient="x" * 200 + "@example.test")
        await rcpt(sender="Ünïcode@sender.example")
        assert len(set(state.keys)) == 3
        for key in state.keys:
            assert re.fullmatch(r"greylist:[0-9a-f]{32}", key), key

    on_shared_state(steps)


def test_a_triplet_that_passed_before_an_upgrade_is_still_known():
    # The key is the state's format, shared with the proxy instances (of other versions)
    # that use the same Redis: the first 32 hex digits of the SHA-256 of network, sender
    # and recipient, joined by NUL. A triplet one of them let pass is known here.
    async def steps(state, clock, rcpt):
        # sha256("192.0.2.0/24\0alice@sender.example\0bob@example.test")[:32]
        await state.set("greylist:0f4c32bd2dfc79ca6c324b7a99eb45cc", "passed", 86400)
        assert await rcpt() is None
        assert await rcpt(client="192.0.2.77", sender="ALICE@sender.example") is None

    on_shared_state(steps)


# -- the proxy calls it ------------------------------------------------------------------------

def test_the_proxy_calls_the_greylist_at_each_rcpt():
    # The tests above call the method directly; the proxy knows it only through the hook.
    instance = load_plugin("greylist", DNS, skip_clients=[])
    manager = new_plugin_manager()
    manager.register(instance, name="greylist")

    async def steps():
        pending = manager.hook.smtp_rcpt(
            session=client_session(CLIENT), envelope=sender_envelope(SENDER), address=RECIPIENT, params={}
        )
        return [await answer for answer in pending]

    [verdict] = asyncio.run(steps())
    assert verdict.reply.lines() == FIRST_SIGHT
