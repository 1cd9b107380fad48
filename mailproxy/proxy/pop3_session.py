"""One client POP3 session on the session core, with its upstream opened at login.

Unlike SMTP, the upstream is not known at connect: the `route` hook picks it from the
username. So the proxy greets the client itself and answers everything before the
login: CAPA, STLS, USER/PASS, AUTH PLAIN, QUIT. The login is checked by the shared
login check (proxy/login.py) and then made at the upstream with the client's own
credentials. From then on every command runs the `pop3_command` hook and is forwarded,
and the upstream's reply is relayed, a multi-line body as it arrives.

A client that leaves without QUIT is not followed by a QUIT upstream: POP3 deletes the
messages marked with DELE only at QUIT (RFC 1939 6), and only the client may ask for it.
"""

from __future__ import annotations

import logging

from .. import metrics
from ..auth.sasl import SaslError, decode_response, parse_plain
from ..protocol.events import CLOSED
from ..protocol.pop3 import BadCommand, Command, Pop3ServerMachine, SaslResponse, multiline_reply
from ..verdict import Action, Verdict
from .core import ProxySession
from .login import LoginCheck, LoginOutcome
from .mailstore_login import log_in
from .pop3_upstream import Pop3Upstream
from .runtime import CLOSE_SESSION, ListenerRuntime
from .upstream_link import UpstreamError

log = logging.getLogger("mailproxy.pop3")

# Commands of the TRANSACTION state (RFC 1939, RFC 2449): before the login they get
# "not logged in" rather than "unknown command".
MAILBOX_COMMANDS = frozenset("STAT LIST RETR DELE NOOP RSET TOP UIDL".split())
# SASL mechanisms shown to hooks by name; anything else in that place may be a client's
# response sent too early, so it is shown as OTHER.
KNOWN_MECHANISMS = frozenset(
    "PLAIN LOGIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-1 SCRAM-SHA-256 SCRAM-SHA-1-PLUS SCRAM-SHA-256-PLUS "
    "XOAUTH2 OAUTHBEARER GSSAPI EXTERNAL NTLM ANONYMOUS".split()
)
# Capabilities that belong to the proxy's side of the login, not the upstream's.
LOGIN_CAPABILITIES = frozenset({b"STLS", b"SASL", b"USER", b"APOP"})
PLAINTEXT_REFUSED = "[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."


class Pop3ProxySession(ProxySession):
    protocol = "pop3"

    def __init__(self, runtime: ListenerRuntime, client) -> None:
        super().__init__(runtime, client)
        self.machine = Pop3ServerMachine()
        self._username: str | None = None  # given by USER, awaiting PASS
        self._upstream: Pop3Upstream | None = None  # opened by a login attempt
        self._failed = False  # the last reply was an -ERR
        self._to_upstream = metrics.deferred(metrics.relayed_bytes, "pop3", self.runtime.name, "to_upstream")
        self._to_client = metrics.deferred(metrics.relayed_bytes, "pop3", self.runtime.name, "to_client")

    # --- replies ---------------------------------------------------------------------------

    def _ok(self, text: str = "") -> None:
        metrics.pop3_reply_counter(self.runtime.name, True, "proxy").inc()
        self.write(f"+OK {text}\r\n".encode() if text else b"+OK\r\n")

    def _err(self, text: str) -> None:
        metrics.pop3_reply_counter(self.runtime.name, False, "proxy").inc()
        self._failed = True
        self.write(f"-ERR {text}\r\n".encode("utf-8", "replace"))

    def _relay(self, line: bytes) -> None:
        """The upstream's reply; its -ERR is no error of the client's to count (Dovecot
        answers `DELE` of a deleted message so, and counts only bad commands itself)."""
        metrics.pop3_reply_counter(self.runtime.name, line.startswith(b"+OK"), "upstream").inc()
        self._to_client.inc(len(line))
        self.write(line)

    def _enforce(self, verdict: Verdict) -> object | None:
        """A policy refusal in POP3's words (RFC 2449 response codes)."""
        text = verdict.reply.text if verdict.reply is not None else "Refused by policy"
        self._err(f"[SYS/TEMP] {text}" if verdict.action is Action.TEMPFAIL else text)
        return CLOSE_SESSION if verdict.action is Action.DISCONNECT else None

    def timeout_reply(self, idle: bool) -> bytes:
        metrics.pop3_reply_counter(self.runtime.name, False, "proxy").inc()
        return b"-ERR Disconnected for inactivity.\r\n" if idle else b"-ERR Timeout exceeded, closing connection.\r\n"

    def internal_error_reply(self) -> bytes:
        metrics.pop3_reply_counter(self.runtime.name, False, "proxy").inc()
        return b"-ERR [SYS/TEMP] Internal error, closing connection.\r\n"

    def refusal_reply(self, reason: str) -> bytes:
        metrics.pop3_reply_counter(self.runtime.name, False, "proxy").inc()
        return f"-ERR [SYS/TEMP] {reason}, try again later.\r\n".encode()

    def too_many_errors_reply(self) -> None:
        self._err("Too many errors, closing connection.")

    # --- the session -----------------------------------------------------------------------

    async def goodbye(self) -> None:
        await self.runtime.policy.notify("pop3_disconnect", session=self.session)
        if self._upstream is not None:
            await self._upstream.quit()

    async def serve(self) -> None:
        policy = self.runtime.policy
        verdict = await policy.run("pop3_connect", self.session)
        if verdict.action.is_refusal:
            self._enforce(verdict)
            return
        self._ok(f"{self.hostname} POP3 ready.")
        while True:
            event = await self._next_event()
            if event is CLOSED:
                return
            self._failed = False
            if isinstance(event, Command):
                outcome = await self._command(event)
            else:  # a BadCommand, or a SASL line nobody asked for
                outcome = self._err(event.text if isinstance(event, BadCommand) else "Unknown command.")
            if outcome is CLOSE_SESSION:
                return
            if self.session.authenticated and self.runtime.settings.after_login == "pipe":
                return await self.pipe(self._upstream)
            if self._failed and await self._count_error():
                return

    async def _command(self, command: Command) -> object | None:
        verb = command.verb
        metrics.deferred(metrics.commands, "pop3", self.runtime.name, metrics.pop3_verb_label(verb)).inc()
        policy = self.runtime.policy
        if policy.has("pop3_command"):
            shown_verb, shown_args = hook_view(command)
            verdict = await policy.run("pop3_command", self.session, verb=shown_verb, args=shown_args)
            if verdict.action.is_refusal:
                return self._enforce(verdict)
        if self.session.authenticated:
            return await self._mailbox_command(command)
        handler = _BEFORE_LOGIN.get(verb)
        if handler is not None:
            return await handler(self, command)
        return self._err("Not logged in." if verb in MAILBOX_COMMANDS else "Unknown command.")

    # --- before the login ------------------------------------------------------------------

    @property
    def _plaintext_allowed(self) -> bool:
        return self.session.tls or self.runtime.settings.allow_plaintext_auth

    async def pop3_CAPA(self, command: Command) -> None:
        lines = [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE"]
        if self._plaintext_allowed:
            lines += [b"USER", b"SASL PLAIN"]
        if self._starttls_offered:
            lines.append(b"STLS")
        self._ok("Capability list follows")
        self.write(b"".join(line + b"\r\n" for line in lines) + b".\r\n")

    @property
    def _starttls_offered(self) -> bool:
        return self.runtime.settings.tls == "starttls" and not self.session.tls

    async def pop3_STLS(self, command: Command) -> object | None:
        if not self._starttls_offered:
            return self._err("TLS is not available." if not self.session.tls else "TLS is already active.")
        # Whatever the client pipelined after STLS came in plaintext: it must not be
        # taken as if it had come through TLS (the CVE-2011-0411 family).
        self.machine.take_pending()
        self._ok("Begin TLS negotiation now.")
        if not await self.start_client_tls(self.runtime.settings.command_timeout):
            return CLOSE_SESSION
        self._username = None  # RFC 2595 4: the client starts over
        return None

    async def pop3_USER(self, command: Command) -> None:
        if not self._plaintext_allowed:
            return self._err(PLAINTEXT_REFUSED)
        if not command.argument:
            return self._err("No username given.")
        self._username = command.argument
        self._ok()
        return None

    async def pop3_PASS(self, command: Command) -> object | None:
        username, self._username = self._username, None
        if username is None:
            return self._err("No username given.")
        return await self._login("USER", username, command.argument)

    async def pop3_AUTH(self, command: Command) -> object | None:
        if not command.args:  # the mechanisms, as Dovecot lists them
            self._ok()
            self.write(b"PLAIN\r\n.\r\n" if self._plaintext_allowed else b".\r\n")
            return None
        mechanism = command.args[0].upper()
        if mechanism != "PLAIN":
            return self._err("Unsupported authentication mechanism.")
        if not self._plaintext_allowed:
            return self._err(PLAINTEXT_REFUSED)
        check = LoginCheck(self.runtime, self.session, mechanism)
        if await check.network_over_limit():  # before the client is asked for anything
            return await self._throttled(check)
        if len(command.args) > 1:
            response = command.args[1]
        else:
            self.write(b"+ \r\n")
            self.machine.expect_sasl()
            event = await self._next_event()
            if not isinstance(event, SaslResponse):
                check.count("aborted")
                return CLOSE_SESSION if event is CLOSED else self._err("Authentication aborted.")
            response = event.line.decode("ascii", "replace")
        if response == "*":
            check.count("aborted")
            return self._err("Authentication aborted.")
        try:
            username, password = parse_plain(decode_response(response))
        except SaslError as exc:
            check.count("failure")
            return self._err(str(exc) + ".")
        return await self._login(mechanism, username, password, check)

    async def pop3_QUIT(self, command: Command) -> object:
        self._ok("Logging out.")
        return CLOSE_SESSION

    # --- the login -------------------------------------------------------------------------

    async def _login(
        self, mechanism: str, username: str, password: str, check: LoginCheck | None = None
    ) -> object | None:
        if check is None:
            check = LoginCheck(self.runtime, self.session, mechanism)
            if await check.network_over_limit():
                return await self._throttled(check)
        result = await log_in(self.runtime, self.session, check, username, password, "pop3_login", self._new_upstream)
        if result.outcome is None:
            return self._enforce(result.verdict)
        if result.outcome is LoginOutcome.SUCCESS:
            self._upstream = result.upstream
            self.login_deadline = None
            self._relay(result.answer)
            return None
        if result.outcome is LoginOutcome.THROTTLED:
            return await self._throttled(check)
        if result.outcome is LoginOutcome.ERROR:
            return self._err("[SYS/TEMP] Temporary authentication failure.")
        return self._err("[AUTH] Authentication failed.")

    def _new_upstream(self, name: str) -> Pop3Upstream:
        settings, tls = self.runtime.upstreams[name]
        return Pop3Upstream(name, settings, tls)

    async def _throttled(self, check: LoginCheck) -> object | None:
        """Too many failures from the client's network: send it away, or answer after
        the pause its failures have earned."""
        if self.runtime.auth.throttle == "disconnect":
            self._err("[SYS/TEMP] Too many authentication failures.")
            return CLOSE_SESSION
        await check.pause(check.throttle_delay, "network")
        return self._err("[SYS/TEMP] Too many authentication failures, try again later.")

    # --- after the login -------------------------------------------------------------------

    async def _mailbox_command(self, command: Command) -> object | None:
        verb = command.verb
        if verb in ("USER", "PASS", "AUTH", "APOP", "STLS"):
            return self._err("Already logged in.")
        multiline = multiline_reply(verb, command.args)
        upstream = self._upstream
        label = metrics.pop3_verb_label(verb)
        relaying = False  # part of a multi-line reply is out: no -ERR may follow it
        try:
            status = await upstream.command(command.line + b"\r\n", label, multiline, collect=verb == "CAPA")
            self._to_upstream.inc(len(command.line) + 2)
            if status.ok and multiline and verb == "CAPA":
                capabilities = _without_login_capabilities(await upstream.collected())
                self._relay(status.line)
                self.write(capabilities + b".\r\n")
            else:
                self._relay(status.line)
                if status.ok and multiline:
                    relaying = True
                    await self._relay_body(upstream)
        except UpstreamError as exc:
            log.warning("upstream %s failed during %s: %s", upstream.name, label, exc)
            if relaying:  # cut the reply off: the client must not take it for whole
                self.flush()
                self.client.abort()
            else:
                self._err("[SYS/TEMP] Upstream failure, closing connection.")
            return CLOSE_SESSION
        if verb == "QUIT":
            upstream.abort()  # it has answered; the session is over for both sides
            return CLOSE_SESSION
        return None

    async def _relay_body(self, upstream: Pop3Upstream) -> None:
        """Pass a multi-line body on as it arrives: memory holds a piece at a time, and
        a client that stops reading stops the reading from the upstream."""
        self.flush()
        async for piece in upstream.body():
            if not self.client.connected:  # the client left: read no more for it
                raise ConnectionResetError("client gone during a multi-line reply")
            self._to_client.inc(len(piece))
            self.client.write(piece)
            if self.client.write_blocked:
                await self.push_replies()
        self.write(b".\r\n")


def hook_view(command: Command) -> tuple[str, tuple[str, ...]]:
    """A command's verb and args as hooks see them: never credentials. A verb POP3 does
    not know is shown as OTHER without args: it may be a password sent with a tab
    (`PASS\tsecret`) or a SASL response sent where a command was due."""
    verb = command.verb
    if verb not in metrics.KNOWN_POP3_VERBS:
        return "OTHER", ()
    if verb == "PASS":
        return verb, ()
    if verb == "APOP":  # name and digest: the digest stands for the password
        return verb, command.args[:1]
    if verb == "AUTH":
        return verb, tuple(arg.upper() if arg.upper() in KNOWN_MECHANISMS else "OTHER" for arg in command.args[:1])
    return verb, command.args


def _without_login_capabilities(lines: list[bytes]) -> bytes:
    """The upstream's CAPA after the login, without what only the login used."""
    kept = [line for line in lines if line.split(b" ", 1)[0].strip().upper() not in LOGIN_CAPABILITIES]
    return b"".join(kept)


_BEFORE_LOGIN = {
    "CAPA": Pop3ProxySession.pop3_CAPA,
    "STLS": Pop3ProxySession.pop3_STLS,
    "USER": Pop3ProxySession.pop3_USER,
    "PASS": Pop3ProxySession.pop3_PASS,
    "AUTH": Pop3ProxySession.pop3_AUTH,
    "QUIT": Pop3ProxySession.pop3_QUIT,
}
