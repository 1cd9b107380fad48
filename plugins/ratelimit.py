"""ratelimit: how many connections, messages and recipients a client network, an
authenticated user and a sender domain may have within `window` seconds.

    [plugin.ratelimit]
    window = 60
    client_connections = 60      # a limit left out takes its default; 0 turns it off
    client_messages = 120
    user_recipients = 500
    sender_domain_messages = 1000
    over_limit = "tempfail"      # 450 4.7.1; "disconnect": 421 4.7.0 and close

Connections are counted at connect, messages at MAIL, recipients at RCPT. A session
counts against its user once authenticated; before that (and never authenticated) it
counts against its client network, if its listener mode is in `modes` and the client
is not in `skip_clients`. Messages and recipients also count against the sender's
domain. Every attempt counts, refused ones included, so a client that keeps trying
past a limit stays refused until it slows down (as Postfix's anvil counts).

The window slides: the number of events in the last `window` seconds is estimated from
the counts of the current and the previous fixed window, the previous one weighted by
how much of it the sliding window still covers. Unlike fixed windows alone, that gives
no burst of twice the limit across a window's end.

Counts are kept in the shared state, so with the redis backend they hold for every
worker process and proxy instance. While it is unavailable, each process counts on its
own (as with the memory backend): limits hold per process, neither dropped nor closed.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal

from pydantic import Field

from mailproxy import Envelope, Session, Verdict, hookimpl
from mailproxy.state import SharedState, with_local_fallback

from ._common import ClientCheckSettings, ClientFilter, checks_counter, client_ip, domain_of, network_of, timed_wait

PLUGIN = "ratelimit"
_CLIENT_NETWORK = "ratelimit.client_network"  # session.notes: (address, its network or None)

# Whose events a limit counts, as the refusal says it.
_WHOSE = {
    "client": "from your network",
    "user": "for your account",
    "sender_domain": "from your sender domain",
}


class SlidingWindow:
    """Events in the last `window` seconds, estimated from two fixed-window counters
    kept in `state` (each for two windows, while it may still be the previous one)."""

    def __init__(self, state: SharedState, window: float, clock: Callable[[], float]) -> None:
        self._state = state
        self._window = window
        self._clock = clock

    async def hit(self, keys: list[str]) -> list[float]:
        """Count one event under each of `keys` (each ends in ":"), all in one step of
        the state; the estimates including it."""
        position = self._clock() / self._window
        index = math.floor(position)
        previous_index = index - 1
        # Loops, not comprehensions: each of those is a function call in Python 3.11,
        # and an event has one to three keys.
        counters, reads = [], []
        for key in keys:
            counters.append(f"{key}{index}")
            reads.append(f"{key}{previous_index}")
        current, previous = await self._state.incr_and_get(counters, 2 * self._window, reads)
        still_covered = 1.0 - (position - index)
        estimates = []
        for now, before in zip(current, previous):
            estimates.append(now + int(before) * still_covered if before else now)
        return estimates


class Plugin:
    class Config(ClientCheckSettings):
        window: float = Field(60.0, ge=1, le=86400)
        # Events per window; 0 turns a limit off.
        client_connections: int = Field(60, ge=0)
        client_messages: int = Field(120, ge=0)
        client_recipients: int = Field(600, ge=0)
        user_messages: int = Field(100, ge=0)
        user_recipients: int = Field(500, ge=0)
        # Off by default: the big providers' domains are shared by everyone.
        sender_domain_messages: int = Field(0, ge=0)
        sender_domain_recipients: int = Field(0, ge=0)
        # The client network a limit counts for: one IPv4 address, an IPv6 /64.
        ipv4_prefix: int = Field(32, ge=8, le=32)
        ipv6_prefix: int = Field(64, ge=16, le=128)
        over_limit: Literal["tempfail", "disconnect"] = "tempfail"

    # Wall-clock time: the windows are shared by every process using the state.
    clock = staticmethod(time.time)

    def __init__(self, settings: Config, context) -> None:
        self._settings = settings
        self._filter = ClientFilter(settings)
        self._window = SlidingWindow(with_local_fallback(context.state), settings.window, lambda: self.clock())
        events = ("connections", "messages", "recipients")
        self._limits = {event: self._limits_of(settings, event) for event in events}
        # Each limit's counter of each result, at hand: every event counts each limit.
        self._results = {(name, result): checks_counter(PLUGIN, name, result)
                         for limits in self._limits.values() for name, _ in limits.values()
                         for result in ("within", "over")}
        # An event's round trip to time, or dict lookups not worth a timer.
        self._checks = {event: None if context.state.in_process else (PLUGIN, event) for event in events}

    @staticmethod
    def _limits_of(settings: Config, event: str) -> dict[str, tuple[str, int]]:
        """The event's limits that are on, by whose events they count: (name, limit)."""
        limits = {}
        for whose in _WHOSE:
            name = f"{whose}_{event}"
            limit = getattr(settings, name, 0)  # there are no user_connections
            if limit:
                limits[whose] = (name, limit)
        return limits

    @hookimpl
    async def smtp_connect(self, session: Session) -> Verdict | None:
        return await self._count(session, "connections", "")

    @hookimpl
    async def smtp_mail(self, session: Session, address: str) -> Verdict | None:
        return await self._count(session, "messages", address)

    @hookimpl
    async def smtp_rcpt(self, session: Session, envelope: Envelope) -> Verdict | None:
        return await self._count(session, "recipients", envelope.mail_from or "")

    def _counted_for(self, session: Session, sender: str, whose_limits) -> list[tuple[str, str]]:
        """(whose, who) for everyone this session's events count against, of those
        with a limit in `whose_limits`."""
        if session.authenticated:
            whom = [("user", (session.username or "").strip().casefold())]
        else:
            network = self._client_network(session)
            if network is None:
                return []
            whom = [("client", network)]
        if "sender_domain" in whose_limits:
            domain = domain_of(sender)
            if domain is not None:
                whom.append(("sender_domain", domain))
        return whom

    def _client_network(self, session: Session) -> str | None:
        """The network an unauthenticated session's events count for; None when they
        are none of this plugin's business. Kept on the session for its every event,
        with the address it is for (XCLIENT may tell another)."""
        address = session.client_address
        kept = session.notes.get(_CLIENT_NETWORK)
        if kept is None or kept[0] != address:
            network = None
            if not self._filter.skips(session):
                settings = self._settings
                network = network_of(client_ip(session), settings.ipv4_prefix, settings.ipv6_prefix)
            kept = session.notes[_CLIENT_NETWORK] = (address, network)
        return kept[1]

    async def _count(self, session: Session, event: str, sender: str) -> Verdict | None:
        limits = self._limits[event]
        if not limits:
            return None
        checks, keys = [], []
        for whose, who in self._counted_for(session, sender, limits):
            name_and_limit = limits.get(whose)
            if name_and_limit is not None:
                checks.append((*name_and_limit, whose))
                keys.append(f"ratelimit:{name_and_limit[0]}:{who}:")
        if not checks:
            return None
        # Every limit of the event in one step: with redis, one round trip, timed.
        estimates = await timed_wait(self._window.hit(keys), self._checks[event])
        over = None
        for (name, limit, whose), events in zip(checks, estimates):
            if events > limit:
                self._results[name, "over"].inc()
                over = over or whose
            else:
                self._results[name, "within"].inc()
        if over is None:
            return None
        text = f"Error: too many {event} {_WHOSE[over]}, try again later"
        if self._settings.over_limit == "disconnect":
            return Verdict.disconnect(421, "4.7.0", text)
        return Verdict.tempfail(450, "4.7.1", text)
