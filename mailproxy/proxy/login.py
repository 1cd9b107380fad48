"""One login check for every protocol: SMTP AUTH, POP3 USER/PASS and AUTH, IMAP LOGIN
and AUTHENTICATE all pass through it, so a network's failures count across the three.

Order: the client network's failures under the limit (asked before the credentials are
read, so a throttled client is not even challenged) -> the protocol's own policy hook on
the credentials -> `verify`: a failure slot reserved for the network -> the pause its
earlier failures earned -> the `authenticate` backends -> the slot released unless the
attempt failed; a wrong password also counts for the account, and its answer waits for
that count (see auth/throttle.py). Every outcome is counted in
mailproxy_auth_attempts_total, every pause in mailproxy_auth_delay_seconds. How an
outcome looks on the wire is the protocol's business.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

from .. import metrics
from ..session import Session
from .runtime import ListenerRuntime

log = logging.getLogger("mailproxy.auth")


class LoginOutcome(Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # wrong credentials
    ERROR = "error"  # no backend could answer: the client should retry later
    THROTTLED = "throttled"  # too many failures from the client's network


class LoginCheck:
    """One login attempt by `session` with `mechanism`."""

    def __init__(self, runtime: ListenerRuntime, session: Session, mechanism: str) -> None:
        self.runtime = runtime
        self.session = session
        self.mechanism = mechanism
        self.throttle_delay = 0.0  # the pause a THROTTLED outcome has earned

    def count(self, result: str) -> None:
        metrics.child(metrics.auth_attempts, self.runtime.settings.protocol, self.runtime.name, self.mechanism, result).inc()

    async def network_over_limit(self) -> bool:
        """Whether the client's network has failed too often to try at all."""
        throttle = self.runtime.throttle
        earlier = await throttle.network_failures(self.session.client_address)
        if not throttle.over_limit(earlier):
            return False
        self.throttle_delay = throttle.delay(earlier)
        self.count(LoginOutcome.THROTTLED.value)
        return True

    async def verify(self, username: str, password: str) -> LoginOutcome:
        """Ask the backends, under the throttle. The session is not marked as logged in
        here: a protocol may have more to do first (`mark_authenticated`)."""
        runtime, session = self.runtime, self.session
        throttle = runtime.throttle
        reservation = await throttle.reserve(session.client_address)
        if not reservation.allowed:
            await throttle.finished(reservation)
            self.throttle_delay = reservation.delay
            self.count(LoginOutcome.THROTTLED.value)
            return LoginOutcome.THROTTLED
        started = asyncio.get_running_loop().time()
        try:
            await self.pause(reservation.delay, "network")
            valid, failures = await runtime.policy.first_result(
                "authenticate", session=session, mechanism=self.mechanism, username=username, password=password
            )
        finally:
            await throttle.finished(reservation)
        if valid is True or (valid is None and failures):
            await throttle.release(reservation)
        if valid is True:
            self.count(LoginOutcome.SUCCESS.value)
            return LoginOutcome.SUCCESS
        if valid is None and failures:
            self.count(LoginOutcome.ERROR.value)
            return LoginOutcome.ERROR
        self.count(LoginOutcome.FAILURE.value)
        log.info("authentication failed for %s (%s)", username, self.mechanism)
        # Only a wrong answer waits for the account's failures: a correct password never
        # does, so guessing at an account cannot lock its owner out.
        least = await throttle.account_failed(username)
        await self.pause(least - (asyncio.get_running_loop().time() - started), "account")
        return LoginOutcome.FAILURE

    async def pause(self, seconds: float, reason: str) -> None:
        """Hold this session's answer; other sessions keep moving."""
        if seconds > 0:
            metrics.child(metrics.auth_delay, self.runtime.name, reason).observe(seconds)
            await asyncio.sleep(seconds)

    def mark_authenticated(self, username: str) -> None:
        session = self.session
        session.authenticated = True
        session.username = session.login_data = username
        log.info("authenticated as %s (%s)", username, self.mechanism)
