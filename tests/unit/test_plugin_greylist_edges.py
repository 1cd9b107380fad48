"""The greylist plugin at its edges: the widest settings it takes and the first it
refuses, a retry that comes well after the delay, and the reply for a retry due in one
second. The triplet logic is the plugin's own, so these run on the memory backend with
the test's clock (tests/unit/test_plugin_greylist.py runs the flow on Redis too)."""

from __future__ import annotations

import pytest

from mailproxy.config import ConfigError
from tests.support.plugins import client_session, load_plugin, sender_envelope
from tests.unit.test_plugin_greylist import CLIENT, DELAY, GREYLISTED, RECIPIENT, SENDER, WINDOW, Greylist, scenario

DAY = 86400
DNS = "127.0.0.1:53"  # never asked: the greylist plugin makes no DNS queries


def on_memory(steps, **options) -> None:
    scenario("memory", None, steps, **options)  # the memory backend needs no Redis server


# -- settings: the last value accepted, and the first refused, with the key named ----------

@pytest.mark.parametrize("key, value", [
    ("retry_window", 30 * DAY),
    ("expiry", 366 * DAY),
    ("ipv4_prefix", 8),
    ("ipv6_prefix", 16),
    ("ipv6_prefix", 128),
])
def test_the_widest_settings_are_accepted(key, value):
    load_plugin("greylist", DNS, **{key: value})  # raises ConfigError if refused


@pytest.mark.parametrize("key, value, message", [
    ("retry_window", 30 * DAY + 1, "Input should be less than or equal to 2592000"),  # 30 days
    ("expiry", 366 * DAY + 1, "Input should be less than or equal to 31622400"),  # 366 days
    ("ipv4_prefix", 7, "Input should be greater than or equal to 8"),
    ("ipv6_prefix", 15, "Input should be greater than or equal to 16"),
    ("ipv6_prefix", 129, "Input should be less than or equal to 128"),
])
def test_settings_just_beyond_them_are_refused(key, value, message):
    with pytest.raises(ConfigError) as error:
        load_plugin("greylist", DNS, **{key: value})
    assert str(error.value) == f"config: plugin.greylist.{key}: {message}"


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
