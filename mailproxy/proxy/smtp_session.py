"""One client SMTP session, paired with one upstream session, on the session core.

The wire format is the sans-IO machine in `protocol/smtp_server.py`; the connection,
deadlines, admission and cleanup are the core's (`core.py`). What is here: the command
rules and the relay. A proxy relays the upstream's replies (greeting, commands,
end-of-data) rather than writing its own.

Every command: bounded read -> `smtp_command` hook -> the command's own checks and hook
-> forwarded -> the upstream's reply relayed. What the proxy answers itself: protocol
errors, policy refusals, AUTH, STARTTLS, the 354 when a data hook needs the whole
message (see docs/architecture.md), and 4xx when the upstream fails.
"""

from __future__ import annotations

import logging

from .. import metrics
from ..protocol.esmtp import UnsupportedParameter, check_client_parameters
from ..protocol.smtp import client_ehlo_reply, ehlo_keywords, parse_path, parse_size
from ..protocol.events import CLOSED
from ..protocol.smtp_server import BadCommand, SmtpServerMachine
from ..session import Envelope
from ..verdict import Action, Verdict
from .core import ProxySession
from .runtime import CLOSE_SESSION, ListenerRuntime
from .smtp_auth import AuthCommand
from .smtp_data import DataCommand
from .smtp_io import SmtpReplies
from .smtp_upstream import UpstreamPairing
from .upstream import UpstreamConnection, UpstreamError

log = logging.getLogger("mailproxy.smtp")

ROUTING_CHARACTERS = frozenset("@%!:,()")
RECIPIENT_OVERSHOOT_LIMIT = 1000


class SmtpProxySession(AuthCommand, DataCommand, UpstreamPairing, SmtpReplies, ProxySession):
    protocol = "smtp"

    def __init__(self, runtime: ListenerRuntime, client) -> None:
        super().__init__(runtime, client)
        self.session.upstream_login = self._login_upstream
        self.machine = SmtpServerMachine()
        self.envelope = Envelope()
        self._last_code = 0  # of the last reply queued: the outcome of the command
        self._excused = False  # that reply is no client error (recipients over the limit)
        self._overshoot = 0  # recipients refused as too many, in this session
        self._offered: dict[str, str] = {}  # the extensions our EHLO reply offered
        # The MAIL and RCPTs the upstream accepted in this transaction, as
        # (verb, address, params): replayed if the upstream session must be reopened.
        self._transaction: list[tuple[str, str, dict]] = []
        self._upstream: UpstreamConnection | None = None
        self._unsent: list[bytes] = []  # streaming: message bytes read, not yet passed on
        self._header_filter = None  # streaming: drops the client's own X-Spam-* fields
        # The client's credentials, once the upstream session accepted them: replayed
        # if that session has to be reopened. Kept for the session's life only.
        self._upstream_credentials: tuple[str, str] | None = None

    def _new_transaction(self) -> None:
        """RSET, EHLO, STARTTLS and the end of DATA start a new transaction."""
        self.envelope = Envelope()
        self._transaction = []

    def _forget_before_tls(self) -> None:
        """After STARTTLS the client starts over (RFC 3207 4.2): whatever it said in
        plaintext, its EHLO and any login included, is forgotten. An upstream session
        that knows the login (its own AUTH, or XCLIENT LOGIN) is dropped too; the next
        command opens a fresh one. The session id stays."""
        session = self.session
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

    # --- session -------------------------------------------------------------------------

    async def goodbye(self) -> None:
        policy = self.runtime.policy
        if self._in_transaction():
            policy.transaction_ended(self.session, self.envelope, "abandoned")
            await policy.notify("smtp_reset", session=self.session, envelope=self.envelope)
        await policy.notify("smtp_disconnect", session=self.session)
        if self._upstream is not None:
            await self._upstream.quit()

    async def serve(self) -> None:
        if self.runtime.resolver is not None:
            self.session.client_name = await self.runtime.resolver.client_name(self.session.client_address)
        verdict = await self.runtime.policy.run("smtp_connect", self.session, self.envelope)
        if verdict.action.is_refusal:
            refusal = verdict.as_greeting(self.hostname)
            self.runtime.policy.transaction_ended(self.session, None, reply=refusal.reply, by="policy")
            self._enforce(refusal)
            return
        if self.client_left:  # during the lookups and hooks: an upstream session for nobody
            log.info("client left before the greeting")
            return
        try:
            greeting = await self._open_upstream()
        except UpstreamError as exc:
            log.warning("upstream %s unreachable: %s", self.runtime.upstream_name, exc)
            self._say(421, "4.3.0", f"{self.hostname} Service not available, try again later")
            return
        self._relay(greeting)
        if greeting.code != 220:
            return
        while True:
            event = await self._next_event()
            if event is CLOSED:
                return
            self._last_code, self._excused = 0, False
            if isinstance(event, BadCommand):
                outcome = self._error(event.code, event.enhanced, event.text)
            else:
                outcome = await self._command(event.verb, event.argument)
            if outcome is CLOSE_SESSION:
                return
            if self._last_code == 421:  # the upstream is closing the session (RFC 5321 3.8)
                log.info("upstream answered 421, ending the session")
                return
            if self._last_code >= 400 and not self._excused and await self._count_error():
                return

    async def _command(self, verb: str, argument: str) -> object | None:
        metrics.deferred(metrics.commands, "smtp", self.runtime.name, metrics.smtp_verb_label(verb)).inc()
        handler = _HANDLERS.get(verb)
        policy = self.runtime.policy
        if policy.has("smtp_command"):
            shown = argument.split(" ", 1)[0] if verb == "AUTH" else argument
            verdict = await policy.run(
                "smtp_command", self.session, self.envelope, verb=verb, argument=shown
            )
            if verdict.action.is_refusal:
                return self._enforce(verdict)
        if handler is None:
            return self._error(502, "5.5.1", "Command not recognized")
        try:
            return await handler(self, argument)
        except UpstreamError as exc:
            log.warning("upstream %s failed during %s: %s", self.runtime.upstream_name, verb, exc)
            self._say(421, "4.3.0", f"{self.hostname} Upstream failure, try again later")
            return CLOSE_SESSION

    def _enforce(self, verdict: Verdict) -> object | None:
        reply = verdict.reply
        if reply is not None:
            raw = ("\r\n".join(reply.lines()) + "\r\n").encode("utf-8", "replace")
            self._write(raw, reply.code, "proxy")
        if verdict.action is Action.DISCONNECT:
            return CLOSE_SESSION
        return None

    # --- transaction state ---------------------------------------------------------------

    def _in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    async def _reset_transaction(self) -> None:
        if self._in_transaction():
            self.runtime.policy.transaction_ended(self.session, self.envelope, "reset", by="client")
            await self.runtime.policy.notify("smtp_reset", session=self.session, envelope=self.envelope)
        self._new_transaction()

    def _is_local(self, address: str) -> bool:
        local, at, domain = address.rpartition("@")
        if not at:  # RFC 5321 4.5.1: <postmaster> with no domain is always accepted
            return address.lower() == "postmaster"
        # Source routes (@a:b@c), the percent hack (b%c@a), bang paths and comments in
        # the local part make some upstreams relay onwards: not a local recipient.
        if not local or not ROUTING_CHARACTERS.isdisjoint(local):
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
            return self._error(501, "5.5.4", f"Syntax: {verb} hostname")
        had_transaction = self._in_transaction()
        await self._reset_transaction()
        session = self.session
        session.extended_smtp = extended
        verdict = await self.runtime.policy.run("smtp_helo", session, self.envelope, hostname=hostname)
        if verdict.action.is_refusal:
            if had_transaction:
                await self._reset_upstream()  # forget it there too
            return self._enforce(verdict)
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
        self._relay(reply)
        return None

    async def smtp_MAIL(self, argument: str) -> object | None:
        session, envelope = self.session, self.envelope
        if not session.host_name:
            return self._error(503, "5.5.1", "Error: send HELO/EHLO first")
        if session.mode == "submission" and not session.authenticated:
            return self._error(530, "5.7.0", "Authentication required")
        if envelope.mail_from is not None:
            return self._error(503, "5.5.1", "Error: nested MAIL command")
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
            return self._error(503, "5.5.1", "Error: need MAIL command")
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
            return self._error(555, "5.5.4", str(exc))
        except ValueError as exc:
            return self._error(501, "5.5.4", str(exc))
        refused = refusal(address, params)
        if refused is not None:
            self._say(*refused)
            return None
        # Header lines the hooks add for a command that is then refused do not belong
        # to the message (a refused MAIL leaves no transaction to carry them).
        headers = self.envelope.added_headers
        kept = len(headers)
        verdict = await self.runtime.policy.run(
            f"smtp_{verb.lower()}", self.session, self.envelope, address=address, params=params
        )
        if verdict.action.is_refusal:
            del headers[kept:]
            if verb == "MAIL":  # ends the transaction it would have begun
                self._mail_refused(address, verdict.reply, "policy")
            return self._enforce(verdict)
        reply = await self._forward_path(verb, address, params)
        if 200 <= reply.code < 300:
            accepted(address, params)
            self._transaction.append((verb, address, params))
        else:
            del headers[kept:]
            if verb == "MAIL":
                self._mail_refused(address, reply, "upstream")
        self._relay(reply)
        return None

    def _mail_refused(self, address: str, reply, by: str) -> None:
        self.runtime.policy.transaction_ended(self.session, self.envelope, reply=reply, by=by, sender=address)

    async def smtp_RSET(self, argument: str) -> object | None:
        await self._reset_transaction()
        self._relay(await self._forward(b"RSET", "RSET"))
        return None

    async def smtp_NOOP(self, argument: str) -> object | None:
        self._relay(await self._forward(b"NOOP", "NOOP"))
        return None

    async def _forward_as_is(self, verb: str, argument: str) -> object | None:
        line = f"{verb} {argument}" if argument else verb
        self._relay(await self._forward(line.encode("utf-8", "surrogateescape"), verb))
        return None

    async def smtp_VRFY(self, argument: str) -> object | None:
        if not argument:
            return self._error(501, "5.5.4", "Syntax: VRFY address")
        return await self._forward_as_is("VRFY", argument)

    async def smtp_EXPN(self, argument: str) -> object | None:
        if not argument:
            return self._error(501, "5.5.4", "Syntax: EXPN list")
        return await self._forward_as_is("EXPN", argument)

    async def smtp_HELP(self, argument: str) -> object | None:
        return await self._forward_as_is("HELP", argument)

    async def smtp_QUIT(self, argument: str) -> object | None:
        if self._upstream is not None and self._upstream.connected:
            try:
                reply = await self._upstream.command(b"QUIT\r\n", "QUIT")
                self.drop_upstream()
                self._relay(reply)
                return CLOSE_SESSION
            except UpstreamError:
                pass
        self._say(221, "2.0.0", "Bye")
        return CLOSE_SESSION

    async def smtp_STARTTLS(self, argument: str) -> object | None:
        if self.runtime.settings.tls != "starttls" or self.session.tls:
            return self._error(502, "5.5.1", "Command not recognized")
        if argument:
            return self._error(501, "5.5.4", "Syntax: STARTTLS")
        # Anything pipelined after STARTTLS arrived in plaintext and must not be
        # answered inside TLS (the CVE-2011-0411 family): drop it.
        self.machine.take_pending()
        await self._reset_transaction()
        self._say(220, "2.0.0", "Ready to start TLS")
        # The go-ahead and the handshake are part of this command, within its deadline.
        if not await self.start_client_tls(self.runtime.settings.command_timeout):
            return CLOSE_SESSION
        self._forget_before_tls()
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
