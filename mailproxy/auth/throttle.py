"""Slowing down password guessing without letting anyone lock an account out.

Modelled on Dovecot's `auth_penalty`:

- Failures are counted per client network (IPv4 /32 and IPv6 /64 by default). Every AUTH
  attempt from a network that failed before waits `throttle_delay`, doubled for each
  further failure, at most `throttle_delay_max`, before the password is even checked.
  A network with `max_failures` failures within `failure_window` is refused outright
  (454, or 421 and a disconnect): a delay alone does not bound a client that opens many
  sessions at once, since each session waits out its own delay in parallel.
- Failures are also counted per account, but that count only holds back the answer to a
  wrong password. A correct password from a network that has not failed itself is
  neither refused nor delayed, so a stranger cannot lock a user out.

A slot is reserved (counted as a failure) before the password is checked and given back
once it proves right, so parallel sessions cannot check more passwords than the limit.
The price: while attempts from one network are being checked, each counts as a failure
for the others, so their pauses grow too. A success does not clear earlier failures
(Dovecot's does): otherwise anyone with one valid account could reset the count of the
network they guess from.

The counters live in the shared state. With the default in-memory state they are per
worker process: with `workers = N` a client may get up to N times the limit, until a
networked state backend is configured.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..config import AuthSettings
from ..state import SharedState


def account_key(username: str) -> str:
    """The per-account counter's name for a login.

    Backends map logins to accounts in their own ways (the file backend ignores case;
    an upstream such as Dovecot may add a default domain or lower-case the name), so the
    key takes the coarsest reading: surrounding spaces removed, case folded, and the
    domain after the last '@' dropped. Logins that only one of these tells apart share a
    counter; that can only slow down more wrong answers, never a correct one.
    """
    name = username.strip().casefold()
    local, at, _domain = name.rpartition("@")
    return f"authfail:user:{local if at else name}"


@dataclass(frozen=True)
class Reservation:
    """One AUTH attempt's place in its network's failure count."""

    key: str
    delay: float  # seconds to wait before checking (or refusing) the attempt
    allowed: bool  # False: the network is over max_failures, do not check at all
    in_flight_key: str = ""  # the network's count of attempts being checked now


class AuthThrottle:
    def __init__(self, settings: AuthSettings, state: SharedState) -> None:
        self._settings = settings
        self._state = state

    def network_key(self, address: str) -> str:
        """The per-network counter's name: the client address masked to the prefix."""
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])  # no IPv6 zone index
        except ValueError:
            return f"authfail:addr:{address}"
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        prefix = self._settings.ipv4_prefix if ip.version == 4 else self._settings.ipv6_prefix
        return f"authfail:addr:{ipaddress.ip_network((ip, prefix), strict=False)}"

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` earlier failures: none after none, then
        `throttle_delay` doubling up to `throttle_delay_max`."""
        if failures <= 0:
            return 0.0
        settings = self._settings
        # Past the cap the exponent no longer matters; bounding it keeps the float finite.
        return min(settings.throttle_delay * 2 ** min(failures - 1, 64), settings.throttle_delay_max)

    async def network_failures(self, address: str) -> int:
        count = await self._state.get(self.network_key(address))
        return 0 if count is None else int(count)

    def over_limit(self, failures: int) -> bool:
        return failures >= self._settings.max_failures

    async def reserve(self, address: str) -> Reservation:
        """Count this attempt as a failure of its network before the password is
        checked. Checking first and counting after would let many parallel sessions
        check far more passwords than the limit. The pause, though, is earned by
        failures alone: attempts other sessions are checking right now count against
        the limit, not towards the delay, so a client that logs in over several
        connections at once (IMAP clients do) is not held back by its own logins.
        Call `finished` once the attempt has been checked, or refused."""
        key = self.network_key(address)
        in_flight_key = key.replace("authfail:", "authbusy:", 1)
        window = self._settings.failure_window
        count = await self._state.incr(key, window)
        others_in_flight = await self._state.incr(in_flight_key, window) - 1
        earlier = count - 1  # including attempts still being checked in other sessions
        failed = max(0, earlier - others_in_flight)
        return Reservation(key, self.delay(failed), allowed=not self.over_limit(earlier), in_flight_key=in_flight_key)

    async def finished(self, reservation: Reservation) -> None:
        """The attempt is no longer being checked (whatever its outcome)."""
        if await self._state.get(reservation.in_flight_key) is not None:
            await self._state.incr(reservation.in_flight_key, self._settings.failure_window, amount=-1)

    async def release(self, reservation: Reservation) -> None:
        """The attempt did not fail (valid, or could not be checked): take it back.
        If the count expired meanwhile (a check longer than the window) there is
        nothing to take back; a new count at -1 would give a free attempt."""
        if await self._state.get(reservation.key) is not None:
            await self._state.incr(reservation.key, self._settings.failure_window, amount=-1)

    async def account_failed(self, username: str) -> float:
        """Count a wrong password for the account; the least time, counted from the
        start of the attempt, before the client may hear that it was wrong."""
        count = await self._state.incr(account_key(username), self._settings.failure_window)
        return self.delay(count - 1)
