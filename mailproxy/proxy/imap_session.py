"""One client IMAP session on the session core, with its upstream opened at login.

As for POP3, the upstream is known only once `route` has seen the username, so the
proxy greets the client and answers what comes before the login itself (CAPABILITY,
NOOP, ID, STARTTLS, LOGIN, AUTHENTICATE PLAIN, LOGOUT: `imap_login.py`). After the login
the session is a relay that hears both sides at any time (an IMAP server speaks unasked:
IDLE, EXISTS, BYE): every client command runs the `imap_command` hook and is forwarded
as sent, and the upstream's responses are relayed as they arrive, capability lists
rewritten so the client is never offered what the proxy does not pass on (STARTTLS,
AUTH=, COMPRESS).

Literals after the login: every literal goes upstream as a synchronising one, and its
bytes only after the upstream's own `+`. A server that stops reading a line before its
literal (an unknown command, a syntax error, a command that reads fewer arguments)
answers the command instead of `+`, and the literal is dropped; sent ahead, its bytes
would run as commands that no hook saw. A small literal is read by the proxy first (its
own `+` to the client), so the hook sees its value; a big one waits for the upstream's
`+`, relayed to the client if it waits for one, and then streams.
"""

from __future__ import annotations

import logging
import re
from collections import deque

from .. import metrics
from ..protocol.events import CLOSED, NEED_DATA
from ..protocol.imap import (
    PRE_LOGIN_LIMITS,
    BadCommand,
    Command,
    CommandRest,
    IdleDone,
    IdleOther,
    ImapServerMachine,
    LiteralAhead,
    LiteralData,
)
from ..protocol.imap_responses import (
    Continuation,
    Passthrough,
    ProtocolViolation,
    Tagged,
    listed_mailbox,
    rewrite_capability_response,
)
from ..protocol.imap_mailbox import decode_mailbox_name
from ..verdict import Action, Verdict
from .connection import first_readable
from .core import ClientTimeout, ProxySession
from .imap_ledger import CommandLedger
from .imap_login import ImapLoginCommands, shown_args
from .imap_upstream import ImapUpstream
from .runtime import CLOSE_SESSION, ListenerRuntime
from .upstream_link import UpstreamError

log = logging.getLogger("mailproxy.imap")

# Answered by the proxy after the login, never forwarded: the login is over, and a
# compressed stream would hide the commands from the hooks.
NOT_AFTER_LOGIN = frozenset({"LOGIN", "AUTHENTICATE", "STARTTLS"})
# A line's closing non-synchronising literal marker ({n+}, ~{n+}).
NONSYNC_MARKER = re.compile(rb"(~?\{\d+)\+\}(\r?\n)\Z")


class ImapProxySession(ImapLoginCommands, ProxySession):
    protocol = "imap"

    def __init__(self, runtime: ListenerRuntime, client) -> None:
        super().__init__(runtime, client)
        self.machine = ImapServerMachine(**PRE_LOGIN_LIMITS)
        self._upstream: ImapUpstream | None = None
        self._failed = False
        # After the login: a command waiting for the upstream's "+" (IDLE, or a sync
        # literal that streams), as (tag, what): client input waits meanwhile.
        self._awaiting: tuple[str, str] | None = None
        # Lines and literal values of a command not yet sent: each literal goes only
        # after the upstream's own "+", so a server that stops reading a line before its
        # literal (unknown command, syntax error, fewer arguments read) answers the
        # command instead, and never takes the literal's bytes for commands.
        self._parts: deque[bytes] = deque()
        self._then: str | None = None  # what the "+" to the last line starts
        self._stream_tag = ""  # the command whose parts are being sent
        self._client_heard = 0.0  # loop time the client last sent something
        self._upstream_heard = 0.0  # ... the upstream last sent something, or was owed an answer
        self._idling = False  # IDLE runs: the client's next line should be DONE
        self._client_ended = False  # its input ended: only the answers it is owed are left
        self._bye = False  # the upstream said BYE: the session ends once it is relayed
        self._ledger = CommandLedger(self.session)
        self._to_upstream = metrics.deferred(metrics.relayed_bytes, "imap", self.runtime.name, "to_upstream")
        self._to_client = metrics.deferred(metrics.relayed_bytes, "imap", self.runtime.name, "to_client")

    # --- replies ---------------------------------------------------------------------------

    def _tagged(self, tag: str | None, status: str, text: str) -> None:
        metrics.imap_reply_counter(self.runtime.name, status, "proxy").inc()
        self._failed = status != "OK"
        self.write(f"{tag or '*'} {status} {text}\r\n".encode("utf-8", "replace"))

    def _untagged(self, text: str) -> None:
        self.write(f"* {text}\r\n".encode("utf-8", "replace"))

    def _bye_reply(self, text: str) -> bytes:
        metrics.imap_reply_counter(self.runtime.name, "BYE", "proxy").inc()
        return f"* BYE {text}\r\n".encode("utf-8", "replace")

    def _enforce(self, tag: str | None, verdict: Verdict) -> object | None:
        """A policy refusal in IMAP's words (RFC 5530 response codes)."""
        text = verdict.reply.text if verdict.reply is not None else "Refused by policy"
        if verdict.action is Action.DISCONNECT:
            self.write(self._bye_reply(text))
            return CLOSE_SESSION
        self._tagged(tag, "NO", f"[UNAVAILABLE] {text}" if verdict.action is Action.TEMPFAIL else text)
        return None

    def timeout_reply(self, idle: bool) -> bytes:
        return self._bye_reply("Disconnected for inactivity." if idle else "Timeout exceeded, closing connection.")

    def internal_error_reply(self) -> bytes:
        return self._bye_reply("[UNAVAILABLE] Internal error, closing connection.")

    def refusal_reply(self, reason: str) -> bytes:
        return self._bye_reply(f"[UNAVAILABLE] {reason}, try again later.")

    def too_many_errors_reply(self) -> None:
        self.write(self._bye_reply("Too many errors, closing connection."))

    # --- the session -----------------------------------------------------------------------

    async def goodbye(self) -> None:
        await self.runtime.policy.notify("imap_disconnect", session=self.session)
        if self._upstream is not None:
            await self._upstream.logout(in_idle=self._idling)

    async def serve(self) -> None:
        verdict = await self.runtime.policy.run("imap_connect", self.session)
        if verdict.action.is_refusal:
            self._enforce(None, Verdict(Action.DISCONNECT, verdict.reply, reason=verdict.reason))
            return
        self._untagged(f"OK [CAPABILITY {self._capabilities()}] {self.hostname} IMAP4rev1 proxy ready.")
        while not self.session.authenticated:
            event = await self._next_event()
            if event is CLOSED:
                return
            self._failed = False
            outcome = await self._before_login(event)
            if outcome is CLOSE_SESSION:
                return
            if self._failed and await self._count_error():
                return
        if self.runtime.settings.after_login == "pipe":
            await self.pipe(self._upstream)
        else:
            await self._relay()

    # --- shared by both phases ------------------------------------------------------------

    def _bad_command(self, event: BadCommand) -> object | None:
        if event.fatal:
            self.write(self._bye_reply(event.text))
            return CLOSE_SESSION
        self._tagged(event.tag, "BAD", event.text)
        return None

    async def _refusal(self, tag: str, verb: str, args) -> Verdict | None:
        """The `imap_command` hook's verdict if it refuses the command."""
        metrics.deferred(metrics.commands, "imap", self.runtime.name, metrics.imap_verb_label(verb)).inc()
        policy = self.runtime.policy
        if not policy.has("imap_command"):
            return None
        verdict = await policy.run("imap_command", self.session, tag=tag, verb=verb, args=args)
        return verdict if verdict.action.is_refusal else None

    # --- after the login: the relay --------------------------------------------------------

    async def _relay(self) -> None:
        upstream = self._upstream
        self._client_heard = self.loop.time()
        try:
            while True:
                if self._awaiting is None and await self._client_events() is CLOSE_SESSION:
                    return
                if await self._upstream_events() is CLOSE_SESSION:
                    return
                if self._client_ended and not self._ledger.outstanding:
                    return  # every answer it was owed is out
                await self._wait_for_either(upstream)
        except UpstreamError as exc:
            log.warning("upstream %s failed: %s", upstream.name, exc)
            self.write(self._bye_reply("[UNAVAILABLE] Upstream failure, closing connection."))

    def _forward(self, data: bytes) -> None:
        """The client's bytes to the upstream."""
        self._upstream.write(data)
        self._to_upstream.inc(len(data))

    def _deliver(self, data: bytes) -> None:
        """The upstream's bytes to the client."""
        self.write(data)
        self._to_client.inc(len(data))

    async def _wait_for_either(self, upstream: ImapUpstream) -> None:
        """Until the client or the upstream has something. The idle clock is the
        client's (an upstream's "* OK Still here" during IDLE is not the client's doing)."""
        self.flush()
        if self.client.write_blocked:  # a client that does not read: stop reading for it
            await self.push_replies()
        link = upstream.link
        if link is None:
            raise UpstreamError("lost", "connection closed")
        if self._awaiting is not None or self._client_ended:
            # The client's next bytes wait in its socket (bounded) until the upstream
            # has answered what it was asked; an upstream that never does is a failure.
            try:
                data = await link.receive(self.loop.time() + upstream.settings.reply_timeout)
            except TimeoutError:
                raise _silent(upstream) from None
            self._upstream_heard = self.loop.time()
            upstream.reader.receive_data(data)
            return
        client_until = until = self._client_heard + self.idle_timeout
        if self._ledger.answer_owed:
            # An upstream that owes an answer and goes quiet for reply_timeout has hung
            # (Dovecot reports progress on long commands): the client would otherwise
            # wait out its own idle timeout for nothing. Not while a client uploads or
            # idles: then the upstream owes nothing yet.
            until = min(until, self._upstream_heard + upstream.settings.reply_timeout)
        try:
            ready = await first_readable(self.client, link, until)
        except TimeoutError:
            if until < client_until:
                raise _silent(upstream) from None
            raise ClientTimeout(True) from None
        if ready is self.client:
            data = self.client.take()
            self._client_heard = self.loop.time()
            self.machine.receive_data(data)
            return
        self._upstream_heard = self.loop.time()
        upstream.reader.receive_data(link.take())

    async def _client_events(self) -> object | None:
        """Every complete event the client's bytes hold, each to the upstream or answered."""
        while self._awaiting is None:
            event = self.machine.next_event()
            if event is NEED_DATA:
                return None
            if event is CLOSED:
                # A client that half-closed after its last commands still gets their
                # answers (as from Dovecot itself); one that left in IDLE is done.
                if self._idling or not self._ledger.outstanding:
                    return CLOSE_SESSION
                self._client_ended = True
                return None
            self._failed = False
            outcome = await self._client_event(event)
            if outcome is CLOSE_SESSION:
                return outcome
            if self._failed and await self._count_error():
                return CLOSE_SESSION
        return None

    async def _client_event(self, event) -> object | None:
        upstream = self._upstream
        if isinstance(event, LiteralData):
            self._forward(event.data)
            await upstream.drain()
            return None
        if isinstance(event, CommandRest):
            self._send(self._stream_tag, list(event.parts or (event.raw,)), None)
            return None
        if isinstance(event, (IdleDone, IdleOther)):
            # Another line than DONE also ends IDLE: Dovecot answers it BAD.
            self._end_idle(b"DONE\r\n" if isinstance(event, IdleDone) else event.raw)
            return None
        if isinstance(event, BadCommand):
            if self._idling:  # a line too long in IDLE: it ends IDLE all the same
                self._end_idle(b"DONE\r\n")
            return self._bad_command(event)
        if isinstance(event, LiteralAhead):
            return await self._literal_ahead(event)
        if isinstance(event, Command):
            return await self._command(event)
        self._tagged(None, "BAD", "Unexpected line.")
        return None

    async def _command(self, command: Command) -> object | None:
        verb = command.verb
        if self._ledger.in_use(command.tag):
            self._tagged(command.tag, "BAD", "Tag already in use by an unfinished command.")
            return None
        refusal = await self._refusal(command.tag, verb, shown_args(command))
        if refusal is not None:
            return self._enforce(command.tag, refusal)
        if verb in NOT_AFTER_LOGIN:
            self._tagged(command.tag, "BAD", "Already logged in.")
            return None
        if verb == "COMPRESS":
            self._tagged(command.tag, "NO", "[CANNOT] Compression is not available through this proxy.")
            return None
        self._ledger.sent(command.tag, verb, command.args)
        self._send(command.tag, command.raw, "idle" if verb == "IDLE" else None)
        await self._upstream.drain()
        return None

    def _owed(self, tag: str) -> None:
        """The upstream has all of the command `tag`: the silence it may keep counts
        from now (not from its start: a client's upload may take long)."""
        self._ledger.owed(tag)
        self._upstream_heard = self.loop.time()

    def _end_idle(self, line: bytes) -> None:
        self._forward(line)
        self._idling = False
        self._owed(self._stream_tag)

    def _send(self, tag: str, parts: list[bytes], then: str | None) -> None:
        """Send a command's lines, each literal value after the upstream's "+" to the
        line before it. `parts` alternate: line, value, line, ..., line. `then`: what the
        upstream's "+" to the last line starts ("idle", or a streamed literal)."""
        self._parts, self._then, self._stream_tag = deque(parts), then, tag
        self._send_line(tag)

    def _send_line(self, tag: str) -> None:
        line = self._parts.popleft()
        if self._parts or self._then in ("literal", "nonsync"):
            self._forward(NONSYNC_MARKER.sub(rb"\1}\2", line))  # the upstream must say "+"
            self._awaiting = (tag, "part" if self._parts else self._then)
        else:
            self._forward(line)
            self._awaiting = (tag, self._then) if self._then else None
            if not self._then:
                self._owed(tag)

    async def _literal_ahead(self, event: LiteralAhead) -> object | None:
        literal, upstream = event.literal, self._upstream
        if not event.continued and self._ledger.in_use(event.tag):
            self.machine.refuse_literal()
            self._tagged(event.tag, "BAD", "Tag already in use by an unfinished command.")
            return None
        if literal.sync and event.fits_inline and not event.continued:
            # Read by the proxy (the hook sees its value once the command is whole).
            self.write(b"+ OK\r\n")
            self.machine.accept_literal()
            return None
        if not event.continued:
            refusal = await self._refusal(event.tag, event.verb, event.args_so_far)
            if refusal is not None:
                self.machine.refuse_literal()
                return self._enforce(event.tag, refusal)
        if literal.size > self.runtime.settings.max_message_size:
            self.machine.refuse_literal()
            if event.continued:  # part of the command is with the upstream already
                self.write(self._bye_reply("[TOOBIG] Literal too big."))
                return CLOSE_SESSION
            self._tagged(event.tag, "NO", "[TOOBIG] Literal too big.")
            return None
        if not event.continued:
            self._ledger.sent(event.tag, event.verb, event.args_so_far)
        # The literal streams after the upstream's own "+", relayed to the client only
        # if the client waits for one.
        self._send(event.tag, list(event.head), "literal" if literal.sync else "nonsync")
        await upstream.drain()
        return None

    async def _upstream_events(self) -> object | None:
        """Relay every complete response the upstream's bytes hold."""
        reader = self._upstream.reader
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                return None
            if event is CLOSED:
                if not self._bye:
                    log.warning("upstream %s closed the session", self._upstream.name)
                    self.write(self._bye_reply("[UNAVAILABLE] Upstream closed the connection."))
                return CLOSE_SESSION
            if isinstance(event, ProtocolViolation):
                log.warning("upstream %s broke IMAP: %s", self._upstream.name, event.text)
                self.write(self._bye_reply("[UNAVAILABLE] Upstream failure, closing connection."))
                return CLOSE_SESSION
            await self._upstream_event(event)
            if self.client.write_blocked:
                await self.push_replies()

    async def _upstream_event(self, event) -> None:
        if isinstance(event, Passthrough):
            self._deliver(event.data)
            return
        if isinstance(event, Continuation):
            if self._awaiting is None or self._awaiting[1] in ("idle", "literal"):
                self._deliver(event.raw)  # the client's own go-ahead (or nobody's: relayed)
            self._go_ahead()
            return
        raw = event.raw
        if isinstance(event, Tagged):
            metrics.imap_reply_counter(self.runtime.name, event.status, "upstream").inc()
            if self._awaiting is not None and self._awaiting[0] == event.tag:
                self._refused_ahead()
            self._deliver(rewrite_capability_response(raw) if event.code else raw)
            completion = self._ledger.completed(event)
            if completion is not None:
                verb = metrics.imap_verb_label(completion.verb)
                metrics.child(metrics.upstream_duration, self._upstream.name, verb).observe(completion.round_trip)
            policy = self.runtime.policy
            if completion is not None and policy.has("imap_completed"):
                await policy.notify(
                    "imap_completed", session=self.session, tag=completion.tag, verb=completion.verb,
                    args=completion.args, status=completion.status, facts=completion.facts,
                )
            return
        self._ledger.untagged(event)
        if event.kind in ("CAPABILITY", "OK"):
            raw = rewrite_capability_response(raw)
        elif event.kind in ("LIST", "LSUB"):  # the reader picks those marked \Trash
            name = listed_mailbox(raw)
            if name is not None:
                self.session.special_use[decode_mailbox_name(name)] = "\\Trash"
        elif event.kind == "BYE":
            metrics.imap_reply_counter(self.runtime.name, "BYE", "upstream").inc()
            self._bye = True
        self._deliver(raw)

    def _go_ahead(self) -> None:
        """The upstream's "+" to what the client waits on: IDLE runs, or the literal
        now streams."""
        if self._awaiting is None:
            return
        tag, what = self._awaiting
        self._awaiting = None
        if what == "part":  # the next literal the proxy read, and the line after it
            self._forward(self._parts.popleft())
            self._send_line(tag)
        elif what == "idle":
            self.machine.start_idle()
            self._idling = True
        else:
            self.machine.accept_literal(stream=True)

    def _refused_ahead(self) -> None:
        """The upstream answered the command instead of "+": IDLE never started, or the
        literal's command is over (the client sends no more of it)."""
        _, what = self._awaiting
        self._awaiting = None
        self._parts.clear()
        if what in ("literal", "nonsync") or (what == "part" and self._then in ("literal", "nonsync")):
            self.machine.refuse_literal()  # a non-sync one's bytes are discarded by count


def _silent(upstream: ImapUpstream) -> UpstreamError:
    """The failure of an upstream that owed an answer and said nothing for reply_timeout."""
    return upstream.fail("timeout", f"no answer within {upstream.settings.reply_timeout}s")
