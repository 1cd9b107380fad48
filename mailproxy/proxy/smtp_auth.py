"""The SMTP AUTH command (RFC 4954) as the proxy enforces it.

Order of checks: offered at all -> TLS -> the login check shared with POP3 and IMAP
(proxy/login.py), with the `smtp_auth` policy hook on the credentials.
"""

from __future__ import annotations

from ..protocol.smtp_server import Command
from .login import LoginCheck, LoginOutcome
from .runtime import CLOSE_SESSION
from ..auth.sasl import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USER_CHALLENGE,
    MECHANISMS,
    SaslError,
    decode_response,
    parse_plain,
)


class _Aborted(Exception):
    """The client cancelled the exchange with '*', or left."""


class AuthCommand:
    """Mixed into the SMTP session; uses its I/O helpers (_say, _next_event, ...)."""

    def mechanisms(self) -> tuple[str, ...]:
        return MECHANISMS

    async def smtp_AUTH(self, argument: str) -> object | None:
        session = self.session
        settings = self.runtime.settings
        if settings.mode != "submission":
            return self._error(502, "5.5.1", "Command not recognized")
        if not session.host_name or not session.extended_smtp:
            return self._error(503, "5.5.1", "Error: send EHLO first")
        if not self._auth_offered():
            return self._error(538, "5.7.11", "Encryption required for requested authentication mechanism")
        if session.authenticated:
            return self._error(503, "5.5.1", "Error: already authenticated")
        if self._in_transaction():
            return self._error(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in self.mechanisms():
            return self._error(504, "5.5.4", "Unrecognized authentication type")
        return await self._authenticate(mechanism, initial.strip() or None)

    async def _authenticate(self, mechanism: str, initial: str | None) -> object | None:
        check = LoginCheck(self.runtime, self.session, mechanism)
        if await check.network_over_limit():
            return await self._throttled(check)
        try:
            username, password = await self._read_credentials(mechanism, initial)
        except _Aborted:
            check.count("aborted")
            return self._error(501, "5.7.0", "Authentication aborted")
        except SaslError as exc:
            check.count("failure")
            return self._error(501, "5.5.2", str(exc))
        verdict = await self.runtime.policy.run(
            "smtp_auth", self.session, self.envelope, mechanism=mechanism, username=username
        )
        if verdict.action.is_refusal:
            check.count("refused")
            return self._enforce(verdict)
        outcome = await check.verify(username, password)
        if outcome is LoginOutcome.THROTTLED:
            return await self._throttled(check)
        if outcome is LoginOutcome.SUCCESS:
            check.mark_authenticated(username)
            # Tell the upstream who logged in (XCLIENT LOGIN), unless the upstream
            # session itself authenticated: XCLIENT would start it over, logged out.
            await self._announce_login()
            self._say(235, "2.7.0", "Authentication successful")
            return None
        if outcome is LoginOutcome.ERROR:
            self._say(454, "4.7.0", "Temporary authentication failure")
            return None
        return self._error(535, "5.7.8", "Authentication credentials invalid")

    async def _throttled(self, check: LoginCheck) -> object | None:
        """Too many failures from the client's network: send it away, or answer 454
        after the pause its failures have earned."""
        if self.runtime.auth.throttle == "disconnect":
            self._say(421, "4.7.0", f"{self.hostname} Too many authentication failures")
            return CLOSE_SESSION
        await check.pause(check.throttle_delay, "network")
        self._say(454, "4.7.0", "Too many authentication failures, try again later")
        return None

    async def _read_credentials(self, mechanism: str, initial: str | None) -> tuple[str, str]:
        if mechanism == "PLAIN":
            response = initial if initial is not None else await self._challenge("")
            return parse_plain(decode_response(response))
        username = decode_response(initial) if initial is not None else decode_response(
            await self._challenge(LOGIN_USER_CHALLENGE)
        )
        password = decode_response(await self._challenge(LOGIN_PASSWORD_CHALLENGE))
        return username, password

    async def _challenge(self, challenge: str) -> str:
        self._write(f"334 {challenge}\r\n".encode(), 334, "proxy")
        event = await self._next_event()
        if not isinstance(event, Command):  # the end of input, or a line that is no answer
            raise _Aborted()
        response = event.line.strip().decode("ascii", "replace")
        if response == "*":
            raise _Aborted()
        return response
