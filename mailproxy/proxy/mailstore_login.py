"""A login to a mail store (POP3, IMAP): the protocol's policy hook, the `route` hook,
the shared login check, and the upstream session opened and logged in as the user.

The upstream is opened only when a login is checked, and at the routed upstream: with
the `upstream` backend its login is the password check; with a local backend it follows
a local yes. An upstream that then says no is a temporary failure (the backends and the
store disagree), logged, and not held against the client. How the outcome reads on the
wire is the protocol's business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from ..session import Session
from ..verdict import Verdict
from .login import LoginCheck, LoginOutcome
from .runtime import ListenerRuntime
from .upstream_link import UpstreamError

log = logging.getLogger("mailproxy.auth")

CREDENTIAL_CHARACTERS = frozenset("\r\n\0")  # they would end or split a line upstream


@dataclass
class LoginResult:
    outcome: LoginOutcome | None  # None: refused by the login policy hook (`verdict`)
    verdict: Verdict | None = None
    upstream: Any = None  # on SUCCESS: the upstream session, logged in as the user
    answer: Any = None  # on SUCCESS: the upstream's reply to the login, for the client


async def log_in(
    runtime: ListenerRuntime,
    session: Session,
    check: LoginCheck,
    username: str,
    password: str,
    hook: str,
    new_upstream: Callable[[str], Any],
) -> LoginResult:
    """`new_upstream(name)` makes the protocol's upstream client (`open(session)`,
    `login(username, password) -> (accepted, reply)`, `abort()`)."""
    if not CREDENTIAL_CHARACTERS.isdisjoint(username + password):
        check.count(LoginOutcome.FAILURE.value)
        return LoginResult(LoginOutcome.FAILURE)
    verdict = await runtime.policy.run(hook, session, mechanism=check.mechanism, username=username)
    if verdict.action.is_refusal:
        check.count("refused")
        return LoginResult(None, verdict)
    route = await _route(runtime, session, username)
    if route is None:
        check.count(LoginOutcome.ERROR.value)
        return LoginResult(LoginOutcome.ERROR)
    upstream = None
    answers: list[Any] = []

    async def upstream_login(user: str, secret: str) -> bool:
        nonlocal upstream
        if upstream is None:
            upstream = new_upstream(route)
            await upstream.open(session)
        accepted, answer = await upstream.login(user, secret)
        answers.append(answer)
        return accepted

    session.upstream_login = upstream_login
    try:
        outcome = await check.verify(username, password)
        if outcome is LoginOutcome.SUCCESS and not answers:  # a local backend said yes
            if not await upstream_login(username, password):
                log.warning("upstream %s refused %s, whom the credential backends accepted", route, username)
                outcome = LoginOutcome.ERROR
    except UpstreamError as exc:
        log.warning("upstream %s failed during the login: %s", route, exc)
        outcome = LoginOutcome.ERROR
    finally:
        session.upstream_login = None
    if outcome is LoginOutcome.SUCCESS:
        check.mark_authenticated(username)
        return LoginResult(outcome, upstream=upstream, answer=answers[-1])
    if upstream is not None:
        upstream.abort()
    return LoginResult(outcome)


async def _route(runtime: ListenerRuntime, session: Session, username: str) -> str | None:
    """The upstream for this user: the `route` hook's answer, or the listener's own;
    None for a name that is not a configured upstream."""
    name, _ = await runtime.policy.first_result("route", session=session, username=username)
    if name is None:
        return runtime.upstream_name
    if name not in runtime.upstreams:
        log.error("route: %r for %s is not a configured upstream", name, username)
        return None
    return name
