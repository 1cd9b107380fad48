"""greylist: defer a message the first time its client network, sender and recipient
come together, and accept the retry that a real mail server makes.

    [plugin.greylist]
    delay = 300                # seconds before a retry is accepted
    retry_window = 86400       # a retry later than this after the first attempt starts over
    expiry = 3024000           # a triplet that passed is remembered this long after its last use
    skip_recipient_domains = ["postmaster.example.org"]

At each RCPT the triplet (the client's /24 or /64, the sender, the recipient) is looked
up in the shared state:
- never seen, or its first attempt older than `retry_window`: remembered with the time,
  and the recipient gets `450 4.7.1`;
- seen less than `delay` ago: `450 4.7.1` again;
- seen between `delay` and `retry_window` ago: accepted, and remembered as passed for
  `expiry`;
- passed before: accepted, and remembered for `expiry` from now.
Authenticated sessions, listener modes not in `modes`, clients in `skip_clients` and
recipients in `skip_recipient_domains` are not greylisted. While the state backend is
unavailable recipients pass (`on_state_error = "pass"`), or are deferred ("tempfail").
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from mailproxy import Envelope, Session, Verdict, hookimpl
from mailproxy.state import StateUnavailable

from ._common import ClientCheckSettings, ClientFilter, client_ip, count, domain_of, host_name, network_of, timed_wait

PLUGIN = "greylist"
CHECK = "triplet"
PASSED = "passed"  # the value of a triplet that passed; a pending one holds its first time
DAY = 86400.0


def _domains(values: list[str]) -> list[str]:
    names = []
    for value in values:
        name = host_name(value)
        if name is None:
            raise ValueError(f"{value!r} is not a domain name")
        names.append(name)
    return names


class Plugin:
    class Config(ClientCheckSettings):
        delay: float = Field(300.0, ge=0, le=DAY)
        retry_window: float = Field(DAY, gt=0, le=30 * DAY)
        expiry: float = Field(35 * DAY, gt=0, le=366 * DAY)
        # The client's part of the triplet: its network, since a sender's retry may come
        # from another host of its pool.
        ipv4_prefix: int = Field(24, ge=8, le=32)
        ipv6_prefix: int = Field(64, ge=16, le=128)
        # Recipients in these domains (exactly these; list a subdomain on its own) are
        # never greylisted.
        skip_recipient_domains: list[str] = []
        # While the state backend is unavailable: let recipients pass, or defer them.
        on_state_error: Literal["pass", "tempfail"] = "pass"

        _check_domains = field_validator("skip_recipient_domains")(_domains)

        @field_validator("retry_window")
        @classmethod
        def _after_delay(cls, value: float, info: ValidationInfo) -> float:
            delay = info.data.get("delay")
            if delay is not None and value <= delay:
                raise ValueError(f"must be longer than delay ({delay:g}): a retry could never pass")
            return value

    # Wall-clock time: the first attempt's time is compared by every process (and proxy
    # instance) that shares the state.
    clock = staticmethod(time.time)

    def __init__(self, settings: Config, context) -> None:
        self._settings = settings
        self._filter = ClientFilter(settings)
        self._skip_domains = frozenset(settings.skip_recipient_domains)
        self._state = context.state
        # Round trips to time, or dict lookups not worth a timer.
        self._check = None if context.state.in_process else (PLUGIN, CHECK)

    @hookimpl
    async def smtp_rcpt(self, session: Session, envelope: Envelope, address: str) -> Verdict | None:
        if self._filter.skips(session) or domain_of(address) in self._skip_domains:
            return None
        key = self._key(session, envelope.mail_from or "", address)
        try:
            result, wait = await timed_wait(self._judge(key), self._check)
        except StateUnavailable:
            result, wait = "state_error", self._settings.delay
        count(PLUGIN, CHECK, result)
        if result == "state_error":
            defer = self._settings.on_state_error == "tempfail"
        else:
            defer = result in ("new", "early")
        if not defer:
            return None
        seconds = max(1, round(wait))
        return Verdict.tempfail(450, "4.7.1", f"Greylisted, try again in {seconds} second{'s' * (seconds > 1)}")

    def _key(self, session: Session, sender: str, recipient: str) -> str:
        """The triplet's key: a digest, so the state holds no addresses and keys have
        one length."""
        network = network_of(client_ip(session), self._settings.ipv4_prefix, self._settings.ipv6_prefix)
        triplet = "\0".join((network, sender.lower(), recipient.lower()))
        return f"greylist:{hashlib.sha256(triplet.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}"

    async def _judge(self, key: str) -> tuple[str, float]:
        """What the triplet's history says: the result (the metric's label) and, for a
        deferral, how many seconds until a retry passes."""
        settings, state = self._settings, self._state
        now = self.clock()
        seen = await state.get(key)
        if seen is None:
            if await state.add(key, repr(now), settings.retry_window):
                return "new", settings.delay
            seen = await state.get(key)  # another process saw it first
        if seen == PASSED:
            await state.set(key, PASSED, settings.expiry)
            return "known", 0.0
        first = _time(seen)
        if first is None or first > now or now - first >= settings.retry_window:
            # Too late: start over. Also a first attempt in this clock's future: written
            # by an instance whose clock runs ahead, it would defer the triplet for the
            # delay plus that instance's lead (and 1e300 until the record expired).
            await state.set(key, repr(now), settings.retry_window)
            return "new", settings.delay
        if now - first < settings.delay:
            return "early", settings.delay - (now - first)
        await state.set(key, PASSED, settings.expiry)
        return "passed", 0.0


def _time(value: str | None) -> float | None:
    """The first attempt's time a pending triplet holds; None for anything else."""
    try:
        first = float(value) if value is not None else None
    except ValueError:
        return None
    return first if first is not None and math.isfinite(first) else None
