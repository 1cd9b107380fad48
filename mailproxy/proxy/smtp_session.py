"""One client SMTP session, paired with one upstream session.

Built on aiosmtpd's `SMTP` protocol class for the transport, idle timeout and STARTTLS
upgrade; the command loop, the commands and DATA are the proxy's own, because a proxy
must relay the upstream's replies (greeting, commands, end-of-data) rather than write
its own, and must copy a message at most once.

Every command: bounded read -> `smtp_command` hook -> the command's own checks and hook
-> forwarded -> the upstream's reply relayed. What the proxy answers itself: protocol
errors, policy refusals, AUTH, STARTTLS, the 354 (see docs/architecture.md), and 4xx
when the upstream fails.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiosmtpd.smtp import SMTP, TLSSetupException

from .. import metrics
from ..logs import current_session
from ..protocol.esmtp import UnsupportedParameter, check_client_parameters
from ..protocol.smtp import client_ehlo_reply, ehlo_keywords, parse_path, parse_size, split_command
from ..session import Envelope, Session
from ..verdict import Action, Verdict
from .runtime import CLOSE_SESSION, ListenerRuntime
from .smtp_auth import AuthCommand
from .smtp_data import DataCommand
from .smtp_io import READ_SIZE, TOO_LONG, ClientIO, DeadlineExceeded
from .smtp_upstream import UpstreamPairing
from .upstream import UpstreamConnection, UpstreamError

log = logging.getLogger("mailproxy.smtp")

ROUTING_CHARACTERS = frozenset("@%!:,()")
RECIPIENT_OVERSHOOT_LIMIT = 1000


class SmtpProxySession(AuthCommand, DataCommand, UpstreamPairing, ClientIO, SMTP):
    # aiosmtpd's SMTP.__init__ rediscovers handler hooks and AUTH methods with `inspect`
    # on every connection, a quarter of its per-connection cost. Only the attributes that
    # the inherited transport, timeout and STARTTLS code reads are set here.
    def __init__(self, runtime: ListenerRuntime) -> None:
        loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(limit=READ_SIZE, loop=loop),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.loop = loop
        self.runtime = runtime
        self.event_handler = None
        self.hostname = runtime.hostname
        self.tls_context = runtime.server_tls if runtime.settings.tls == "starttls" else None
        self.require_starttls = False
        self.enable_SMTPUTF8 = True
        self._timeout_duration = runtime.settings.idle_timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self._handle_hooks: dict = {}
        self._handler_coroutine = None
        self.session: Session | None = None
        self.envelope: Envelope | None = None
        self.transport = None
        self._inbuf = b""
        self._inpos = 0
        self._outbox: list[bytes] = []
        self._errors = 0
        self._last_code = 0  # of the last reply queued: the outcome of the command
        # A message is with the upstream and its reply not yet with the client: a
        # shutdown waits for it, since cutting it off would make the client send it again.
        self.delivering = False
        self._excused = False  # that reply is no client error (recipients over the limit)
        self._overshoot = 0  # recipients refused as too many, in this session
        self._offered: dict[str, str] = {}  # the extensions our EHLO reply offered
        # The MAIL and RCPTs the upstream accepted in this transaction, as
        # (verb, address, params): replayed if the upstream session must be reopened.
        self._transaction: list[tuple[str, str, dict]] = []
        self._upstream: UpstreamConnection | None = None
        # The client's credentials, once the upstream session accepted them: replayed
        # if that session has to be reopened. Kept for the session's life only.
        self._upstream_credentials: tuple[str, str] | None = None

    # --- aiosmtpd integration ------------------------------------------------------------

    def _create_session(self) -> Session:
        session = self.session
        if session is None:
            settings = self.runtime.settings
            session = Session("smtp", settings.name, settings.mode)
            session.loop = self.loop
            session.upstream_login = self._login_upstream
        else:
            self._forget_before_tls(session)
        return session

    def _forget_before_tls(self, session: Session) -> None:
        """After STARTTLS the client starts over (RFC 3207 4.2): whatever it said in
        plaintext, its EHLO and any login included, is forgotten. An upstream session
        that knows the login (its own AUTH, or XCLIENT LOGIN) is dropped too; the next
        command opens a fresh one. The session id stays."""
        session.host_name = None
        session.extended_smtp = False
        self._offered = {}
        if session.authenticated:
            log.info("STARTTLS after AUTH: the login is discarded")
            session.authenticated = False
            session.username = session.login_data = session.auth_data = None
            self._upstream_credentials = None
            if self._upstream is not None:
                self._upstream.abort()

    def _create_envelope(self) -> Envelope:
        # aiosmtpd calls this for every new transaction (RSET, EHLO, end of DATA).
        self._transaction = []
        return Envelope()

    # --- session -------------------------------------------------------------------------

    async def _handle_client(self) -> None:
        session = self.session
        runtime = self.runtime
        current_session.set(session.id)
        refusal = runtime.admit(self, session.client_address)
        if refusal is not None:
            log.info("connect from %s port %s refused: %s", session.client_address, session.client_port, refusal)
            await self._say(421, "4.7.0", f"{self.hostname} {refusal}, try again later")
            self._hang_up()
            return
        if runtime.settings.tls == "implicit":
            ssl_object = self.transport.get_extra_info("ssl_object")
            session.ssl = {"cipher": ssl_object.cipher() if ssl_object else None}
        metrics.child(metrics.connections, "smtp", runtime.name).inc()
        active = metrics.child(metrics.sessions_active, "smtp", runtime.name)
        active.inc()
        log.info("connect from %s port %s", session.client_address, session.client_port)
        try:
            await self._serve()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except DeadlineExceeded as exc:
            log.info("%s, closing", exc)
            await self._say(421, "4.4.2", f"{self.hostname} Timeout exceeded, closing connection")
        except TLSSetupException:
            log.info("TLS handshake with the client failed")
        except Exception:
            log.exception("internal error")
            await self._say(421, "4.3.0", f"{self.hostname} Internal error, closing connection")
        finally:
            # The client hears what it is owed first; nothing below may be skipped,
            # even if the task is cancelled while saying goodbye to the upstream.
            self._hang_up()
            try:
                await self._goodbye()
            except (Exception, asyncio.CancelledError):
                log.debug("cleanup interrupted", exc_info=True)
            finally:
                if self._upstream is not None:
                    self._upstream.abort()
                    self._upstream = None
                self._stop_idle_timer()
                self.delivering = False
                active.dec()
                runtime.release(self, session.client_address)
                log.info("disconnect after %.3fs", time.monotonic() - session.started)

    async def _goodbye(self) -> None:
        policy = self.runtime.policy
        if self._in_transaction():
            await policy.notify("smtp_reset", session=self.session, envelope=self.envelope)
        await policy.notify("smtp_disconnect", session=self.session)
        if self._upstream is not None:
            await self._upstream.quit()

    async def _serve(self) -> None:
        if self.runtime.resolver is not None:
            self.session.client_name = await self.runtime.resolver.client_name(self.session.client_address)
        verdict = await self.runtime.policy.run("smtp_connect", self.session, self.envelope)
        if verdict.action.is_refusal:
            await self._enforce(verdict.as_greeting(self.hostname))
            return
        try:
            greeting = await self._open_upstream()
        except UpstreamError as exc:
            log.warning("upstream %s unreachable: %s", self.runtime.upstream_name, exc)
            await self._say(421, "4.3.0", f"{self.hostname} Service not available, try again later")
            return
        await self._relay(greeting)
        if greeting.code != 220:
            return
        while self.transport is not None:
            line = await self._read_line()
            if line is None:
                return
            self._last_code, self._excused = 0, False
            if line is TOO_LONG:
                outcome = await self._error(500, "5.5.2", "Line too long")
            else:
                outcome = await self._command(line)
            if outcome is CLOSE_SESSION:
                return
            if self._last_code == 421:  # the upstream is closing the session (RFC 5321 3.8)
                log.info("upstream answered 421, ending the session")
                return
            if self._last_code >= 400 and not self._excused and await self._count_error():
                return

    async def _command(self, line: bytes) -> object | None:
        body = line.rstrip(b"\r\n")
        if b"\r" in body or b"\0" in body:
            # An upstream that takes a bare CR as a line end would see two commands.
            return await self._error(501, "5.5.2", "Bare CR or NUL in command")
        verb, argument = split_command(body)
        metrics.child(metrics.commands, "smtp", metrics.smtp_verb_label(verb)).inc()
        handler = _HANDLERS.get(verb)
        policy = self.runtime.policy
        if policy.has("smtp_command"):
            shown = argument.split(" ", 1)[0] if verb == "AUTH" else argument
            verdict = await policy.run(
                "smtp_command", self.session, self.envelope, verb=verb, argument=shown
            )
            if verdict.action.is_refusal:
                return await self._enforce(verdict)
        if handler is None:
            return await self._error(502, "5.5.1", "Command not recognized")
        try:
            return await handler(self, argument)
        except UpstreamError as exc:
            log.warning("upstream %s failed during %s: %s", self.runtime.upstream_name, verb, exc)
            await self._say(421, "4.3.0", f"{self.hostname} Upstream failure, try again later")
            return CLOSE_SESSION

    async def _enforce(self, verdict: Verdict) -> object | None:
        reply = verdict.reply
        if reply is not None:
            raw = ("\r\n".join(reply.lines()) + "\r\n").encode("utf-8", "replace")
            await self._write(raw, reply.code, "proxy")
        if verdict.action is Action.DISCONNECT:
            return CLOSE_SESSION
        return None

    # --- transaction state ---------------------------------------------------------------

    def _in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    async def _reset_transaction(self) -> None:
        if self._in_transaction():
            await self.runtime.policy.notify("smtp_reset", session=self.session, envelope=self.envelope)
        self._set_rset_state()

    def _is_local(self, address: str) -> bool:
        local, at, domain = address.rpartition("@")
        if not at:  # RFC 5321 4.5.1: <postmaster> with no domain is always accepted
            return address.lower() == "postmaster"
        # Source routes (@a:b@c), the percent hack (b%c@a), bang paths and comments in
        # the local part make some upstreams relay onwards: not a local recipient.
        if not local or any(c in local for c in ROUTING_CHARACTERS):
            return False
        domain = domain.lower().removesuffix(".")  # one final dot: a fully qualified name
        if "" in domain.split("."):  # "example.test..", ".example.test": not a domain
            return False
        return domain in self.runtime.settings.local_domains

    def _auth_offered(self) -> bool:
        settings = self.runtime.settings
        return settings.mode == "submission" and (self.session.tls or settings.allow_plaintext_auth)

    # --- commands ------------------------------------------------------------------------

    async def smtp_EHLO(self, argument: str) -> object | None:
        return await self._greet(argument, extended=True)

    async def smtp_HELO(self, argument: str) -> object | None:
        return await self._greet(argument, extended=False)

    async def _greet(self, hostname: str, extended: bool) -> object | None:
        verb = "EHLO" if extended else "HELO"
        if not hostname or " " in hostname:
            return await self._error(501, "5.5.4", f"Syntax: {verb} hostname")
        had_transaction = self._in_transaction()
        await self._reset_transaction()
        session = self.session
        session.extended_smtp = extended
        verdict = await self.runtime.policy.run("smtp_helo", session, self.envelope, hostname=hostname)
        if verdict.action.is_refusal:
            if had_transaction:
                await self._reset_upstream()  # forget it there too
            return await self._enforce(verdict)
        upstream = await self._upstream_ready()
        session.host_name = hostname
        reply = await upstream.greet(self._facts())
        self._offered = {}
        if reply.code != 250:
            session.host_name = None
        elif extended:
            settings = self.runtime.settings
            starttls = settings.tls == "starttls" and not session.tls
            auth = self.mechanisms() if self._auth_offered() else ()
            reply = client_ehlo_reply(reply, settings.max_message_size, starttls, auth)
            self._offered = ehlo_keywords(reply)
        await self._relay(reply)
        return None

    async def smtp_MAIL(self, argument: str) -> object | None:
        session, envelope = self.session, self.envelope
        if not session.host_name:
            return await self._error(503, "5.5.1", "Error: send HELO/EHLO first")
        if session.mode == "submission" and not session.authenticated:
            return await self._error(530, "5.7.0", "Authentication required")
        if envelope.mail_from is not None:
            return await self._error(503, "5.5.1", "Error: nested MAIL command")
        return await self._path_command("MAIL", "FROM", argument, self._mail_refusal, self._mail_accepted)

    def _mail_refusal(self, address: str, params: dict) -> tuple[int, str, str] | None:
        size = parse_size(params.get("SIZE"))
        if size is not None and size > self.runtime.settings.max_message_size:
            return 552, "5.3.4", "Message size exceeds fixed maximum message size"
        return None

    def _mail_accepted(self, address: str, params: dict) -> None:
        envelope = self.envelope
        envelope.mail_from = address
        envelope.mail_params = params
        envelope.smtp_utf8 = "SMTPUTF8" in params

    async def smtp_RCPT(self, argument: str) -> object | None:
        if self.envelope.mail_from is None:
            return await self._error(503, "5.5.1", "Error: need MAIL command")
        return await self._path_command("RCPT", "TO", argument, self._rcpt_refusal, self._rcpt_accepted)

    def _rcpt_refusal(self, address: str, params: dict) -> tuple[int, str, str] | None:
        session = self.session
        if len(self.envelope.rcpt_tos) >= self.runtime.settings.max_recipients:
            # The client sends the rest in another transaction (RFC 5321 4.5.3.1.10):
            # not an error, until it clearly is (Postfix: smtpd_recipient_overshoot_limit).
            self._overshoot += 1
            self._excused = self._overshoot <= RECIPIENT_OVERSHOOT_LIMIT
            return 452, "4.5.3", "Too many recipients"
        if session.mode == "mx" and not session.authenticated and not self._is_local(address):
            return 554, "5.7.1", f"<{address}>: Relay access denied"
        return None

    def _rcpt_accepted(self, address: str, params: dict) -> None:
        self.envelope.rcpt_tos.append(address)
        self.envelope.rcpt_options.append([k if v is True else f"{k}={v}" for k, v in params.items()])

    async def _path_command(self, verb: str, keyword: str, argument: str, refusal, accepted) -> object | None:
        """MAIL and RCPT: parse, the proxy's own rules, the policy hook, forward, and
        record what the upstream accepted."""
        try:
            address, params = parse_path(argument, keyword)
            check_client_parameters(verb, params, self._offered)
        except UnsupportedParameter as exc:
            return await self._error(555, "5.5.4", str(exc))
        except ValueError as exc:
            return await self._error(501, "5.5.4", str(exc))
        refused = refusal(address, params)
        if refused is not None:
            await self._say(*refused)
            return None
        verdict = await self.runtime.policy.run(
            f"smtp_{verb.lower()}", self.session, self.envelope, address=address, params=params
        )
        if verdict.action.is_refusal:
            return await self._enforce(verdict)
        reply = await self._forward_path(verb, address, params)
        if 200 <= reply.code < 300:
            accepted(address, params)
            self._transaction.append((verb, address, params))
        await self._relay(reply)
        return None

    async def smtp_RSET(self, argument: str) -> object | None:
        await self._reset_transaction()
        await self._relay(await self._forward(b"RSET", "RSET"))
        return None

    async def smtp_NOOP(self, argument: str) -> object | None:
        await self._relay(await self._forward(b"NOOP", "NOOP"))
        return None

    async def _forward_as_is(self, verb: str, argument: str) -> object | None:
        line = f"{verb} {argument}" if argument else verb
        await self._relay(await self._forward(line.encode("utf-8", "surrogateescape"), verb))
        return None

    async def smtp_VRFY(self, argument: str) -> object | None:
        if not argument:
            return await self._error(501, "5.5.4", "Syntax: VRFY address")
        return await self._forward_as_is("VRFY", argument)

    async def smtp_EXPN(self, argument: str) -> object | None:
        if not argument:
            return await self._error(501, "5.5.4", "Syntax: EXPN list")
        return await self._forward_as_is("EXPN", argument)

    async def smtp_HELP(self, argument: str) -> object | None:
        return await self._forward_as_is("HELP", argument)

    async def smtp_QUIT(self, argument: str) -> object | None:
        if self._upstream is not None and self._upstream.connected:
            try:
                reply = await self._upstream.command(b"QUIT\r\n", "QUIT")
                self._upstream.abort()
                self._upstream = None
                await self._relay(reply)
                return CLOSE_SESSION
            except UpstreamError:
                pass
        await self._say(221, "2.0.0", "Bye")
        return CLOSE_SESSION

    async def smtp_STARTTLS(self, argument: str) -> object | None:
        if self.tls_context is None or self.session.tls:
            return await self._error(502, "5.5.1", "Command not recognized")
        if argument:
            return await self._error(501, "5.5.4", "Syntax: STARTTLS")
        # Anything pipelined after STARTTLS arrived in plaintext and must not be
        # answered inside TLS (the CVE-2011-0411 family): drop it.
        self._take_pending_input()
        await self._reset_transaction()
        # The go-ahead and the handshake are part of this command, within its deadline.
        try:
            async with asyncio.timeout(self.runtime.settings.command_timeout):
                await super().smtp_STARTTLS(argument)
        except TimeoutError:
            raise DeadlineExceeded("no TLS handshake after STARTTLS") from None
        return None


_HANDLERS = {
    "EHLO": SmtpProxySession.smtp_EHLO,
    "HELO": SmtpProxySession.smtp_HELO,
    "MAIL": SmtpProxySession.smtp_MAIL,
    "RCPT": SmtpProxySession.smtp_RCPT,
    "DATA": SmtpProxySession.smtp_DATA,
    "RSET": SmtpProxySession.smtp_RSET,
    "NOOP": SmtpProxySession.smtp_NOOP,
    "VRFY": SmtpProxySession.smtp_VRFY,
    "EXPN": SmtpProxySession.smtp_EXPN,
    "HELP": SmtpProxySession.smtp_HELP,
    "QUIT": SmtpProxySession.smtp_QUIT,
    "STARTTLS": SmtpProxySession.smtp_STARTTLS,
    "AUTH": SmtpProxySession.smtp_AUTH,
}
