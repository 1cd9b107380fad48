"""What an IMAP session answers before the login: CAPABILITY, NOOP, ID, STARTTLS,
LOGIN, AUTHENTICATE PLAIN and LOGOUT, and the login itself (the shared mail store
login, rendered in IMAP's words: RFC 5530 response codes).

Mixed into the IMAP session, a `ProxySession`; it uses the session's replies
(`_tagged`, `_untagged`, `_bye_reply`, `_enforce`, `_bad_command`), its `_refusal`
(the `imap_command` hook) and its `machine`.
"""

from __future__ import annotations

from .. import metrics
from ..auth.sasl import SaslError, decode_response, parse_plain
from ..protocol.events import CLOSED
from ..protocol.imap import BadCommand, Command, LiteralAhead, SaslResponse, astring
from ..protocol.imap_responses import Tagged, rewrite_capability_response
from .imap_upstream import ImapUpstream
from .login import LoginCheck, LoginOutcome
from .mailstore_login import log_in
from .runtime import CLOSE_SESSION

_BEFORE_LOGIN_CREDENTIALS = frozenset({"LOGIN", "AUTHENTICATE"})
PRIVACY_REQUIRED = "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."


class ImapLoginCommands:
    @property
    def _plaintext_allowed(self) -> bool:
        return self.session.tls or self.runtime.settings.allow_plaintext_auth

    @property
    def _starttls_offered(self) -> bool:
        return self.runtime.settings.tls == "starttls" and not self.session.tls

    def _capabilities(self) -> str:
        """What the proxy itself offers before the login (nothing it does not do)."""
        offered = ["IMAP4rev1", "LITERAL-", "ID"]
        if self._starttls_offered:
            offered.append("STARTTLS")
        offered += ["SASL-IR", "AUTH=PLAIN"] if self._plaintext_allowed else ["LOGINDISABLED"]
        return " ".join(offered)

    async def _before_login(self, event) -> object | None:
        if isinstance(event, BadCommand):
            return self._bad_command(event)
        if isinstance(event, LiteralAhead):  # LOGIN "user" {8}: credentials as literals
            if event.verb in _BEFORE_LOGIN_CREDENTIALS and not self._plaintext_allowed:
                self.machine.refuse_literal()  # before the client sends its password
                self._tagged(event.tag, "NO", PRIVACY_REQUIRED)
                return None
            if event.fits_inline and event.literal.sync:
                self.write(b"+ OK\r\n")
                self.machine.accept_literal()
                return None
            self.machine.refuse_literal()
            self._tagged(event.tag, "NO", "[TOOBIG] Literal too big before login.")
            return None
        if not isinstance(event, Command):  # no SASL exchange or IDLE is open here
            self._tagged(None, "BAD", "Unexpected line.")
            return None
        refusal = await self._refusal(event.tag, event.verb, shown_args(event))
        if refusal is not None:
            return self._enforce(event.tag, refusal)
        handler = _BEFORE_LOGIN.get(event.verb)
        if handler is None:
            self._tagged(event.tag, "BAD", "Command not valid before login.")
            return None
        return await handler(self, event)

    async def imap_CAPABILITY(self, command: Command) -> None:
        self._untagged(f"CAPABILITY {self._capabilities()}")
        self._tagged(command.tag, "OK", "Capability completed.")

    async def imap_NOOP(self, command: Command) -> None:
        self._tagged(command.tag, "OK", "NOOP completed.")

    async def imap_ID(self, command: Command) -> None:
        self._untagged("ID NIL")
        self._tagged(command.tag, "OK", "ID completed.")

    async def imap_LOGOUT(self, command: Command) -> object:
        self._untagged("BYE Logging out.")
        self._tagged(command.tag, "OK", "Logout completed.")
        return CLOSE_SESSION

    async def imap_STARTTLS(self, command: Command) -> object | None:
        if not self._starttls_offered:
            self._tagged(command.tag, "BAD", "TLS is already active." if self.session.tls else "TLS is not available.")
            return None
        # Whatever the client pipelined after STARTTLS came in plaintext: it must not be
        # taken as if it had come through TLS (the CVE-2011-0411 family).
        self.machine.take_pending()
        self._tagged(command.tag, "OK", "Begin TLS negotiation now.")
        if not await self.start_client_tls(self.runtime.settings.command_timeout):
            return CLOSE_SESSION
        return None

    async def imap_LOGIN(self, command: Command) -> object | None:
        if not self._plaintext_allowed:
            self._tagged(command.tag, "NO", PRIVACY_REQUIRED)
            return None
        credentials = [astring(node) for node in command.args]
        if len(credentials) != 2 or None in credentials:
            self._tagged(command.tag, "BAD", "Expected a username and a password.")
            return None
        check = LoginCheck(self.runtime, self.session, "LOGIN")
        if await check.network_over_limit():
            return await self._throttled(command.tag, check)
        return await self._login(command.tag, check, *credentials)

    async def imap_AUTHENTICATE(self, command: Command) -> object | None:
        words = [astring(node) for node in command.args]
        if not words or words[0] is None:
            self._tagged(command.tag, "BAD", "Expected a mechanism.")
            return None
        if words[0].upper() != "PLAIN":
            self._tagged(command.tag, "NO", "Unsupported authentication mechanism.")
            return None
        if not self._plaintext_allowed:
            self._tagged(command.tag, "NO", PRIVACY_REQUIRED)
            return None
        check = LoginCheck(self.runtime, self.session, "PLAIN")
        if await check.network_over_limit():  # before the client is asked for anything
            return await self._throttled(command.tag, check)
        if len(words) > 1 and words[1] is not None:  # SASL-IR (RFC 4959)
            response = words[1]
        else:
            self.write(b"+ \r\n")
            self.machine.expect_sasl()
            event = await self._next_event()
            if not isinstance(event, SaslResponse):
                check.count("aborted")
                if event is CLOSED:
                    return CLOSE_SESSION
                self._tagged(command.tag, "BAD", "Authentication aborted.")
                return None
            response = event.line.decode("ascii", "replace")
        if response == "*":
            check.count("aborted")
            self._tagged(command.tag, "BAD", "Authentication aborted.")
            return None
        try:
            username, password = parse_plain(decode_response(response))
        except SaslError as exc:
            check.count("failure")
            self._tagged(command.tag, "BAD", f"{exc}.")
            return None
        return await self._login(command.tag, check, username, password)

    async def _login(self, tag: str, check: LoginCheck, username: str, password: str) -> object | None:
        result = await log_in(self.runtime, self.session, check, username, password, "imap_login", self._new_upstream)
        if result.outcome is None:
            return self._enforce(tag, result.verdict)
        if result.outcome is LoginOutcome.SUCCESS:
            self._upstream = result.upstream
            self.login_deadline = None
            answer: Tagged = result.answer
            # The upstream's own OK, with the client's tag and the capabilities it will
            # really get: clients that never ask again rely on this list.
            raw = tag.encode() + rewrite_capability_response(answer.raw)[len(answer.tag):]
            metrics.imap_reply_counter(self.runtime.name, "OK", "upstream").inc()
            self.write(raw)
            self.machine.set_limits(
                max_line_length=64 * 1024, max_inline_literal=64 * 1024, max_nonsync_literal=None,
                max_literal_size=self.runtime.settings.max_message_size,
            )
            return None
        if result.outcome is LoginOutcome.THROTTLED:
            return await self._throttled(tag, check)
        if result.outcome is LoginOutcome.ERROR:
            self._tagged(tag, "NO", "[UNAVAILABLE] Temporary authentication failure.")
            return None
        self._tagged(tag, "NO", "[AUTHENTICATIONFAILED] Authentication failed.")
        return None

    def _new_upstream(self, name: str) -> ImapUpstream:
        settings, tls = self.runtime.upstreams[name]
        return ImapUpstream(name, settings, tls)

    async def _throttled(self, tag: str, check: LoginCheck) -> object | None:
        if self.runtime.auth.throttle == "disconnect":
            self.write(self._bye_reply("[UNAVAILABLE] Too many authentication failures."))
            return CLOSE_SESSION
        await check.pause(check.throttle_delay, "network")
        self._tagged(tag, "NO", "[UNAVAILABLE] Too many authentication failures, try again later.")
        return None


def shown_args(command: Command) -> tuple:
    """A command's args as hooks see them: no credentials."""
    if command.verb == "LOGIN":
        return command.args[:1]
    if command.verb == "AUTHENTICATE":
        return command.args[:1]
    return command.args


_BEFORE_LOGIN = {
    "CAPABILITY": ImapLoginCommands.imap_CAPABILITY,
    "NOOP": ImapLoginCommands.imap_NOOP,
    "ID": ImapLoginCommands.imap_ID,
    "LOGOUT": ImapLoginCommands.imap_LOGOUT,
    "STARTTLS": ImapLoginCommands.imap_STARTTLS,
    "LOGIN": ImapLoginCommands.imap_LOGIN,
    "AUTHENTICATE": ImapLoginCommands.imap_AUTHENTICATE,
}
