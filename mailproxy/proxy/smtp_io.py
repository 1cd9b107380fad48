"""The client side of an SMTP session: bounded reads, queued replies, the idle timer,
and the connection events aiosmtpd's protocol class would otherwise handle its way.

Mixed into the session class; it uses the attributes the session sets up
(`_inbuf`, `_inpos`, `_outbox`, `_errors`, `_last_code`, `runtime`, and aiosmtpd's
transport ones).
"""

from __future__ import annotations

import asyncio
import logging

from .. import metrics
from ..protocol.smtp import ServerReply, make_reply

log = logging.getLogger("mailproxy.smtp")

MAX_COMMAND_LINE = 4096  # RFC 5321 says 512, extensions (SIZE, DSN, SMTPUTF8) add more
READ_SIZE = 65536
ABORT_AFTER_CLOSE = 10.0  # seconds a closing connection may take to drain its last reply
TOO_LONG = object()  # what _read_line returns for an overlong line


class DeadlineExceeded(Exception):
    """A client step ran past its deadline where no timer can end it: the STARTTLS
    go-ahead and handshake. (Lines and messages are bounded by the read timer.)"""


class ClientIO:
    def _timeout_cb(self, idle: bool = True) -> None:
        """Idle for too long, or past the deadline for a line or a message: say so
        before closing (aiosmtpd closes silently). A client that does not even read
        that gets the connection aborted shortly after. The session's task then sees
        the end of input and finishes."""
        transport = self.transport
        if transport is None:
            return
        if idle:
            log.info("idle for %.0fs, closing", self._timeout_duration)
            text = "Idle timeout"
        else:
            log.info("deadline for the client's input passed, closing")
            text = "Timeout exceeded"
        reply = make_reply(421, f"4.4.2 {self.hostname} {text}, closing connection")
        metrics.child(metrics.replies, "smtp", "4xx", "proxy").inc()
        self._outbox.append(reply.raw)
        self._hang_up()

    def _hang_up(self) -> None:
        """Send what the client is owed, then close. A client that does not read its
        last replies gets the connection aborted shortly after: it must not keep the
        socket (and the buffered replies) for ever."""
        self._flush_now()
        transport = self.transport
        if transport is not None:
            transport.close()
            self.loop.call_later(ABORT_AFTER_CLOSE, transport.abort)

    # aiosmtpd cancels the session task at end of input and when the connection drops;
    # then a half-closed client never hears the replies to what it sent, and cleanup is
    # skipped. Here the task sees end of input and finishes on its own.

    def eof_received(self) -> bool:
        self._reader.feed_eof()
        # Keep the socket open for our replies, which TLS cannot do after the peer's EOF.
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, error: Exception | None) -> None:
        self._stop_idle_timer()
        if self._original_transport is not None:
            self._original_transport.close()
        asyncio.StreamReaderProtocol.connection_lost(self, error)
        self.transport = None

    async def push(self, status: str | bytes) -> None:
        """aiosmtpd's own replies (the STARTTLS go-ahead) take the same path as ours."""
        line = status.encode() if isinstance(status, str) else status
        await self._write(line + b"\r\n", int(line[:3]), "proxy")
        # Before aiosmtpd switches the transport to TLS (smtp_STARTTLS bounds the wait).
        await self._flush()

    # Replies are queued and sent when the session next waits for the client, so the
    # replies to a pipelined batch leave in one write (RFC 2920 allows holding them).

    async def _write(self, raw: bytes, code: int, origin: str) -> None:
        metrics.child(metrics.replies, "smtp", metrics.reply_class(code), origin).inc()
        self._last_code = code
        self._outbox.append(raw)

    def _flush_now(self) -> None:
        if self._outbox:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(self._outbox))
            self._outbox.clear()

    async def _flush(self) -> None:
        if self._outbox:
            self._flush_now()
            await self._writer.drain()

    async def _receive(self, deadline: float | None) -> bytes:
        """The next bytes from the client, after sending every reply owed to it.

        The idle timer runs only here: time spent waiting on the upstream or a plugin
        (each with its own timeout) is not the client's idleness. `deadline` (loop
        time) bounds the whole line or message being read, however slowly it trickles.
        """
        self._arm_timer(deadline)
        try:
            await self._flush()
            self.delivering = False  # any end-of-data reply has gone out
            return await self._reader.read(READ_SIZE)
        finally:
            self._stop_idle_timer()

    def _arm_timer(self, deadline: float | None) -> None:
        """One timer per read, for whichever comes first: idleness or the deadline.
        (A plain timer handle: far cheaper per read than an asyncio.timeout scope.)"""
        self._stop_idle_timer()
        idle_at = self.loop.time() + self._timeout_duration
        idle = deadline is None or idle_at < deadline
        self._timeout_handle = self.loop.call_at(idle_at if idle else deadline, self._timeout_cb, idle)

    def _stop_idle_timer(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None

    async def _relay(self, reply: ServerReply) -> None:
        await self._write(reply.raw, reply.code, "upstream")

    async def _say(self, code: int, enhanced: str, text: str) -> None:
        await self._write(make_reply(code, f"{enhanced} {text}").raw, code, "proxy")

    async def _error(self, code: int, enhanced: str, text: str) -> object | None:
        """A client mistake, answered; the command loop counts it (`_count_error`)."""
        await self._say(code, enhanced, text)
        return None

    async def _count_error(self) -> bool:
        """A command ended in a 4xx or 5xx: count it against the session's budget.
        From the soft limit on the reply is held back `error_sleep` seconds; at the
        hard limit the session ends (True)."""
        settings = self.runtime.settings
        self._errors += 1
        if self._errors >= settings.max_errors:
            log.info("%d errors, closing", self._errors)
            await self._say(421, "4.7.0", f"{self.hostname} Error: too many errors, closing connection")
            return True
        if self._errors >= settings.soft_error_limit and settings.error_sleep:
            await asyncio.sleep(settings.error_sleep)
        return False

    async def _read_line(self) -> bytes | object | None:
        """The next command line; None at end of input; TOO_LONG for an overlong line
        (consumed up to its end, so the next command parses cleanly)."""
        discarding = False
        deadline = self.loop.time() + self.runtime.settings.command_timeout
        while True:
            end = self._inbuf.find(b"\n", self._inpos)
            if end >= 0:
                line = self._inbuf[self._inpos : end + 1]
                self._inpos = end + 1
                if discarding or len(line) > MAX_COMMAND_LINE:
                    return TOO_LONG
                return line
            if len(self._inbuf) - self._inpos > MAX_COMMAND_LINE:
                discarding = True
                self._inbuf, self._inpos = b"", 0
            chunk = await self._receive(deadline)
            if not chunk:
                return None
            if self._inpos >= len(self._inbuf):
                self._inbuf = chunk
            else:
                self._inbuf = self._inbuf[self._inpos :] + chunk
            self._inpos = 0

    def _take_pending_input(self) -> bytes:
        pending = self._inbuf[self._inpos :]
        self._inbuf, self._inpos = b"", 0
        return pending
