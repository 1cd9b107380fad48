"""The skeleton every protocol session shares: admission, the session-id log context, connection metrics, reading with
idle and per-command deadlines, queued replies, and a cleanup that always runs.

A protocol's session subclasses `ProxySession` and provides `serve` (the conversation),
`timeout_reply`, `internal_error_reply` and `goodbye`; its wire format lives in a
sans-IO machine in `protocol/`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from .. import metrics
from ..logs import current_session
from ..protocol.events import NEED_DATA
from ..session import Session
from .connection import Connection
from .runtime import ListenerRuntime

log = logging.getLogger("mailproxy.session")

ABORT_AFTER_CLOSE = 10.0  # seconds a closing connection may take to drain its last reply
MAX_QUEUED_REPLIES = 64 * 1024  # bytes of replies held for a client before it must read


class ClientTimeout(Exception):
    """The client was idle too long (`idle`), or ran past the deadline for a whole
    command or message."""

    def __init__(self, idle: bool) -> None:
        super().__init__("idle timeout" if idle else "deadline for the client's input passed")
        self.idle = idle


class ClientConnection(Connection):
    """A connection accepted by a listener: it starts the listener's session."""

    def __init__(self, runtime: ListenerRuntime, session_class: type[ProxySession]) -> None:
        super().__init__(keep_open_on_eof=True)  # a client that half-closed is owed replies
        self._runtime = runtime
        self._session_class = session_class
        self.task: asyncio.Task | None = None  # the loop holds tasks only weakly

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        session = self._session_class(self._runtime, self)
        self.task = self.loop.create_task(session.run())


class ProxySession:
    protocol = ""  # "smtp", "pop3", "imap": the session's and the metrics' label

    def __init__(self, runtime: ListenerRuntime, client: Connection) -> None:
        self.runtime = runtime
        self.client = client
        self.loop = client.loop
        settings = runtime.settings
        self.session = session = Session(self.protocol, settings.name, settings.mode)
        session.peer = client.transport.get_extra_info("peername")
        session.local = client.transport.get_extra_info("sockname")
        session.loop = self.loop
        session.wait_for_client = self.wait_for_client
        if client.tls:  # an implicit-TLS listener: the handshake is done
            session.ssl = tls_facts(client)
            self._count_tls_handshake("implicit", session.ssl.get("version"))
        self.hostname = runtime.hostname
        self.idle_timeout = settings.idle_timeout
        # A message is with the upstream and its reply not yet with the client: a
        # shutdown waits for it, since cutting it off would make the client send it again.
        self.delivering = False
        self._outbox: list[bytes] = []
        self._outbox_size = 0
        self.machine = None  # the protocol's sans-IO machine for the client's side
        self._upstream = None  # the protocol's upstream session, once there is one
        # A mail store session must log in by then (loop time), however busy the client
        # keeps it meanwhile; None once it has (or for SMTP).
        self.login_deadline: float | None = None
        if settings.protocol != "smtp":
            self.login_deadline = self.loop.time() + settings.login_timeout
        self._errors = 0

    # --- what a protocol provides ------------------------------------------------------------

    async def serve(self) -> None:
        raise NotImplementedError

    def timeout_reply(self, idle: bool) -> bytes:
        raise NotImplementedError

    def internal_error_reply(self) -> bytes:
        raise NotImplementedError

    def refusal_reply(self, reason: str) -> bytes:
        raise NotImplementedError

    def too_many_errors_reply(self) -> None:
        """Queue the last reply of a session that used up its error budget."""
        raise NotImplementedError

    async def goodbye(self) -> None:
        """Tell the hooks and the upstream the session is over."""

    def drop_upstream(self) -> None:
        """Close the upstream session at once, if there is one."""
        if self._upstream is not None:
            self._upstream.abort()
            self._upstream = None

    # --- the session's life --------------------------------------------------------------------

    async def run(self) -> None:
        session, runtime = self.session, self.runtime
        current_session.set(session.id)
        refusal = runtime.admit(self, session.client_address)
        if refusal is not None:
            log.info("connect from %s port %s refused: %s", session.client_address, session.client_port, refusal)
            self.write(self.refusal_reply(refusal))
            self.hang_up()
            return
        active = metrics.child(metrics.sessions_active, self.protocol, runtime.name)
        try:
            metrics.child(metrics.connections, self.protocol, runtime.name).inc()
            active.inc()
            log.info("connect from %s port %s", session.client_address, session.client_port)
            try:
                await self.serve()
            finally:
                active.dec()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except ClientTimeout as exc:
            log.info("%s, closing", exc)
            self.write(self.timeout_reply(exc.idle))
        except Exception:
            log.exception("internal error")
            self.write(self.internal_error_reply())
        finally:
            # The client hears what it is owed first; nothing below may be skipped,
            # even if the task is cancelled while saying goodbye to the upstream.
            self.hang_up()
            try:
                await self.goodbye()
            except (Exception, asyncio.CancelledError):
                log.debug("cleanup interrupted", exc_info=True)
            finally:
                self.drop_upstream()
                self.delivering = False
                runtime.release(self, session.client_address)
                log.info("disconnect after %.3fs", time.monotonic() - session.started)

    async def start_client_tls(self, timeout: float) -> bool:
        """STARTTLS: the go-ahead must be out before the handshake starts; both within
        `timeout` (ClientTimeout past it). False when the handshake failed: the client
        spoke no TLS, or none we accept; the session should end."""
        self.flush()
        try:
            await self.client.drain(self.loop.time() + timeout)
            await self.client.start_tls(self.runtime.server_tls, server_side=True, timeout=timeout)
        except TimeoutError:
            self._count_tls_handshake("starttls", None)
            raise ClientTimeout(idle=False) from None
        except (OSError, ssl.SSLError) as exc:
            log.info("TLS handshake with the client failed: %s", exc or type(exc).__name__)
            self._count_tls_handshake("starttls", None)
            return False
        self.session.ssl = tls_facts(self.client)
        self._count_tls_handshake("starttls", self.session.ssl.get("version"))
        return True

    def _count_tls_handshake(self, mode: str, version: str | None) -> None:
        """A handshake with the client: a failed one (`version` None) agreed on nothing.
        Failed implicit-TLS handshakes never reach a session (the event loop drops them
        before it makes one), so only STARTTLS failures are counted."""
        result = "success" if version else "failure"
        metrics.child(
            metrics.tls_handshakes, self.protocol, self.runtime.name, mode, result, version or "none"
        ).inc()

    # --- the client's side of the conversation ----------------------------------------------

    def write(self, raw: bytes) -> None:
        """Queue a reply. Replies go out when the session next waits for the client, so
        the replies to a pipelined batch leave in one write (RFC 2920 allows holding them)."""
        self._outbox.append(raw)
        self._outbox_size += len(raw)

    def flush(self) -> None:
        if self._outbox:
            outbox = self._outbox
            self.client.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
            outbox.clear()
            self._outbox_size = 0

    async def receive(self, deadline: float | None = None) -> bytes:
        """The client's next bytes (b"" at the end of its input), after every reply owed
        to it has gone out. The idle clock runs only here: time spent waiting on the
        upstream or a plugin (each with its own timeout) is not the client's idleness.
        `deadline` (loop time) bounds a whole command or message, however slowly it
        trickles in. ClientTimeout when either runs out."""
        until, idle = self._clock(deadline)
        try:
            self.flush()
            self.delivering = False  # any end-of-data reply is with the transport
            if self.client.write_blocked:  # a client that does not read its replies
                await self.client.drain(until)
            return await self.client.receive(until)
        except TimeoutError:
            raise ClientTimeout(idle) from None

    async def _next_event(self):
        """The client's next event from the machine (a command, a bad line, CLOSED...),
        reading as needed. Until the client sends anything, only the idle timeout
        applies; from its first byte on, the whole command must arrive within
        `command_timeout`."""
        machine = self.machine
        event = machine.next_event()
        command_timeout = self.runtime.settings.command_timeout
        if event is not NEED_DATA:
            if self.replies_backlogged:  # taking its replies is part of the next command
                await self.push_replies(self.loop.time() + command_timeout)
            return event
        deadline = None
        while event is NEED_DATA:
            data = await self.receive(deadline)
            if deadline is None:
                deadline = self.loop.time() + command_timeout
            machine.receive_data(data)
            event = machine.next_event()
        return event

    async def _count_error(self) -> bool:
        """A command ended in an error: count it against the session's budget. From the
        soft limit on the reply is held back `error_sleep` seconds; at the hard limit
        the session ends (True). (Postfix: smtpd_soft_error_limit, smtpd_error_sleep_time,
        smtpd_hard_error_limit.)"""
        settings = self.runtime.settings
        self._errors += 1
        if self._errors >= settings.max_errors:
            log.info("%d errors, closing", self._errors)
            self.too_many_errors_reply()
            return True
        if self._errors >= settings.soft_error_limit and settings.error_sleep:
            await asyncio.sleep(settings.error_sleep)
        return False

    async def wait_for_client(self, seconds: float) -> str:
        """`Session.wait_for_client`: "spoke", "left" or "silent" within `seconds`.
        Nothing is read: what the client sent is the conversation's first input."""
        if not await self.client.wait_readable(seconds):
            return "silent"
        return "left" if self.client_left else "spoke"

    @property
    def client_left(self) -> bool:
        """Nobody is left to answer: the connection is gone, or the client ended its
        input with nothing unread."""
        client = self.client
        return not client.connected or (client.pending and not client.has_data)

    @property
    def replies_backlogged(self) -> bool:
        """Replies pile up faster than the client takes them: before answering more of
        what it pipelined, they must go out (`push_replies`)."""
        return self._outbox_size > MAX_QUEUED_REPLIES or self.client.write_blocked

    async def push_replies(self, deadline: float | None = None) -> None:
        """Send the queued replies and wait for the client to take them, within the
        idle timeout and `deadline`: one that sends commands but never reads the
        answers must not make the proxy hold them all."""
        until, idle = self._clock(deadline)
        self.flush()
        try:
            await self.client.drain(until)
        except TimeoutError:
            raise ClientTimeout(idle) from None

    def _clock(self, deadline: float | None) -> tuple[float, bool]:
        """When a wait on the client ends: at its idle timeout, or at `deadline` or the
        session's `login_deadline` if one comes first. Also whether it is the idle
        timeout."""
        idle_at = self.loop.time() + self.idle_timeout
        if self.login_deadline is not None and (deadline is None or self.login_deadline < deadline):
            deadline = self.login_deadline
        if deadline is None or idle_at < deadline:
            return idle_at, True
        return deadline, False

    def hang_up(self) -> None:
        """Send what the client is owed, then close. A client that does not read its
        last replies gets the connection aborted shortly after: it must not keep the
        socket (and the replies buffered for it) for ever."""
        self.flush()
        client = self.client
        if client.connected:
            unsent = client.write_buffer_size
            client.close()
            if unsent:  # otherwise the close is already complete
                self.loop.call_later(ABORT_AFTER_CLOSE, client.abort)

    def close(self) -> None:
        """Close the client connection (a shutdown); the session's task then ends. The
        replies owed go out first: a pipelining client's batch may hold the upstream's
        250 to a message, and a client that never hears it sends the message again."""
        self.flush()
        self.client.close()

    async def pipe(self, upstream) -> None:
        """The rest of the session as a byte pipe to the upstream (a mail store's
        `after_login = "pipe"`); `upstream.detach()` hands over its connection and the
        bytes it read and did not use. What each side sent and was not read yet goes
        first, then everything as it arrives, until either side ends. No hook runs, and
        no timer (as in nginx's mail proxy, whose proxy_timeout is a day by default)."""
        link, to_client = upstream.detach()
        if link is None:
            return
        self.flush()
        if to_client:
            self.client.write(to_client)
        to_upstream = self.machine.take_pending()
        if to_upstream:
            link.write(to_upstream)
        # What only the command relay needs goes now: an idle piped session should
        # hold little more than its two connections.
        self.machine = self._upstream = None
        try:
            # A side that takes nothing for idle_timeout ends the pipe (not a quiet one).
            await self.client.splice(link, stall_limit=self.idle_timeout)
        finally:
            link.abort()


def tls_facts(connection: Connection) -> dict:
    transport = connection.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return {"cipher": None}
    return {"cipher": ssl_object.cipher(), "version": ssl_object.version()}
