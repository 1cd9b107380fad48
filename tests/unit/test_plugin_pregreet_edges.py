"""The pregreet plugin at its edges: the refusal as the proxy sends it, with the hook
reached through the real policy engine (mailproxy.testing's scripted session), and what
the log says about an early talker. (Its settings' default and bounds are in
test_plugin_settings.py.)

The session's `wait_for_client` is the proxy's (tests/integration/test_pregreet.py
runs the real one): here a `Client` answers it as the proxy's would, from events the
test sets, so nothing depends on how fast a loaded machine runs."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from mailproxy.testing import policy_session
from tests.unit.test_plugin_pregreet import TEXT

HOSTNAME = "proxy.test"  # the proxy's name in a scripted session's replies
LOG = "mailproxy.plugin.pregreet"


class Client:
    """The client's side of `Session.wait_for_client`: "spoke" as soon as it has talked,
    "silent" when the asked time passed without a word. Each wait is recorded as
    (seconds asked, when the wait began), and `waiting` is set once one has begun."""

    def __init__(self) -> None:
        self.spoke = asyncio.Event()
        self.waiting = asyncio.Event()
        self.waits: list[tuple[float, float]] = []

    async def __call__(self, seconds: float) -> str:
        self.waits.append((seconds, time.monotonic()))
        self.waiting.set()
        try:
            await asyncio.wait_for(self.spoke.wait(), seconds)
        except TimeoutError:
            return "silent"
        return "spoke"


def proxy(client: Client, **options):
    """A connection to a proxy running the installed pregreet plugin through the policy
    engine, its session waiting on `client`; clients from anywhere are judged."""
    scripted = policy_session("pregreet", {"skip_clients": [], **options})
    scripted.session.wait_for_client = client
    return scripted


async def talking_once_the_wait_began(scripted, client: Client):
    """Connect; the client talks the moment the plugin starts waiting for it (if it
    does: the session may be greeted, or refused, without a wait)."""
    connecting = asyncio.create_task(scripted.connect("192.0.2.1"))
    waiting = asyncio.create_task(client.waiting.wait())
    await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    client.spoke.set()
    return await connecting


# -- the refusal, as the proxy sends it ----------------------------------------------------------

@pytest.mark.parametrize("early_talker, greeting", [
    ("reject", [f"554 5.5.1 {TEXT}"]),
    ("tempfail", [f"421 4.5.1 {HOSTNAME} {TEXT}"]),
])
def test_the_proxy_answers_an_early_talker_in_place_of_the_greeting(early_talker, greeting):
    # The proxy knows the plugin only through its smtp_connect hook. An early talker
    # gets the refusal instead of the greeting (a bot that sent EHLO at once reads it as
    # the reply to its first command) and the connection ends: no upstream session.
    async def steps():
        client = Client()
        return await talking_once_the_wait_began(proxy(client, early_talker=early_talker), client)

    result = asyncio.run(steps())
    assert result.lines == greeting
    assert result.closes


# -- the log ---------------------------------------------------------------------------------

def test_the_log_says_how_soon_after_connecting_the_client_talked(caplog):
    # "the client talked 1.50s after connecting": how an administrator tells a bot that
    # fires at once from a slow client that gave up waiting for a greeting delayed by
    # the name lookup and dnsbl (which run before pregreet and count towards the wait).
    async def steps():
        client = Client()
        scripted = proxy(client)
        scripted.session.started = time.monotonic() - 1.5  # connected 1.5 s ago
        await talking_once_the_wait_began(scripted, client)
        return scripted.session.started, client.waits[0][1], time.monotonic()

    with caplog.at_level(logging.INFO, logger=LOG):
        started, began, after = asyncio.run(steps())
    [line] = [r.getMessage() for r in caplog.records if r.name == LOG]
    talked = re.fullmatch(r"the client talked (\d+\.\d\d)s after connecting, before its greeting", line)
    assert talked, line
    assert round(began - started, 2) - 0.01 <= float(talked.group(1)) <= round(after - started, 2) + 0.01
