"""One TCP connection as the proxy uses it, on either side: bytes in with a deadline,
bytes out with back-pressure, TLS started in place. No protocol knowledge.

Written on `asyncio.Protocol` rather than streams: a proxy session waits on exactly one
thing at a time, so one future per wait and one timer per deadline is all it needs,
and every buffer has a bound (reading pauses above `max_buffer`; writers wait for
the transport to drain).
"""

from __future__ import annotations

import asyncio
import ssl

READ_BUFFER = 256 * 1024  # bytes held unread before the socket stops being read


class Connection(asyncio.Protocol):
    """`keep_open_on_eof`: after the peer's end of input, keep our side open (a client
    is still owed replies); without it the connection closes (an upstream that hung
    up is done)."""

    def __init__(self, max_buffer: int = READ_BUFFER, keep_open_on_eof: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self._max_buffer = max_buffer
        self._keep_open_on_eof = keep_open_on_eof
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._reading_paused = False
        self._waiter: asyncio.Future | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._sink: Connection | None = None  # spliced: where what is read here goes
        self._source: Connection | None = None  # spliced: whose reading waits on our writes
        self._lost: asyncio.Future | None = None  # spliced: resolved when the connection is gone
        self._stall_limit: float | None = None  # spliced: how long a write may stay blocked
        self._stall_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.tls = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.write(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self._max_buffer and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake(self._waiter)

    def eof_received(self) -> bool:
        self._eof = True
        if self._sink is not None:
            self._sink.close()  # after what it still has to send
            return False
        self._wake(self._waiter)
        # TLS cannot keep a half-closed connection open.
        return self._keep_open_on_eof and not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.transport = None
        self._wake(self._waiter)
        self._wake(self._drain_waiter)
        if self._sink is not None:
            self._sink.close()
            self._wake(self._lost)

    def pause_writing(self) -> None:
        self._write_paused = True
        source = self._source
        if source is not None and source.transport is not None:
            source.transport.pause_reading()
            if self._stall_limit is not None:
                self._stall_timer = self.loop.call_later(self._stall_limit, _abort_pipe, self)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake(self._drain_waiter)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        source = self._source
        if source is not None and source.transport is not None:
            source.transport.resume_reading()

    @staticmethod
    def _wake(waiter: asyncio.Future | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- reading ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    @property
    def pending(self) -> bool:
        """Bytes, or the end of the stream, are waiting to be read."""
        return bool(self._chunks) or self._eof

    async def receive(self, deadline: float | None = None) -> bytes:
        """Everything buffered, waiting for it if nothing is; b"" at the end of the
        stream. TimeoutError once `deadline` (loop time) passes with nothing read."""
        if not self._chunks and not self._eof:
            await self._wait(deadline)
        return self.take()

    def take(self) -> bytes:
        """Everything buffered now, without waiting (b"" if nothing)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def _wait(self, deadline: float | None) -> None:
        waiter = self._waiter = self.loop.create_future()
        timer = None if deadline is None else self.loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def wait_readable(self, timeout: float) -> bool:
        """Whether anything (bytes or the end) arrives within `timeout` seconds;
        nothing is consumed. A timeout of 0 still lets the loop look at the socket."""
        if not self.pending:
            try:
                await self._wait(self.loop.time() + timeout)
            except TimeoutError:
                return False
        return True

    # --- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)

    @property
    def write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    @property
    def write_blocked(self) -> bool:
        return self._write_paused and self.transport is not None

    async def drain(self, deadline: float | None = None) -> None:
        """Wait until the transport takes more (its buffer under the high-water mark).
        ConnectionResetError if the connection is gone, TimeoutError past `deadline`."""
        while self._write_paused:
            if self.transport is None:
                raise ConnectionResetError("connection lost")
            waiter = self._drain_waiter = self.loop.create_future()
            timer = None if deadline is None else self.loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                self._drain_waiter = None
                if timer is not None:
                    timer.cancel()
        if self.transport is None:
            raise ConnectionResetError("connection lost")

    # --- splicing --------------------------------------------------------------------------

    def splice(self, other: Connection, stall_limit: float | None = None) -> asyncio.Future:
        """Join two connections into a byte pipe, both ways: what either reads goes to
        the other as it arrives, reading pauses while the other side cannot write, and
        either side's end closes the other after its last bytes. No task, no buffer of
        our own. Bytes read before (and not taken) go first. A side that takes nothing
        for `stall_limit` seconds ends both: the other's end of input is not read while
        its reading waits, so a peer gone meanwhile would hold the pipe for ever.
        Returns a future resolved once either connection is gone."""
        lost = self.loop.create_future()
        for here, there in ((self, other), (other, self)):
            here._sink, there._source, here._lost = there, here, lost
            here._stall_limit = stall_limit
            pending = here.take()  # resumes reading, if a full buffer had paused it
            if pending:
                there.write(pending)
        for here in (self, other):
            if here.transport is None or here._eof:
                here._sink.close()
                self._wake(lost)
            elif here._sink.write_blocked:
                here.transport.pause_reading()
        return lost

    # --- TLS and closing -------------------------------------------------------------------

    async def start_tls(
        self, context: ssl.SSLContext, server_side: bool, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Upgrade in place. Whatever was read in plaintext before is discarded: it must
        not be taken as if it came through TLS (the CVE-2011-0411 family)."""
        self.take()
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("connection lost before TLS")
        self.transport = await self.loop.start_tls(
            transport, self, context, server_side=server_side,
            server_hostname=server_hostname, ssl_handshake_timeout=timeout,
        )
        self.tls = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


async def first_readable(one: Connection, other: Connection, deadline: float | None = None) -> Connection:
    """Whichever of two connections has bytes, or its end, to read first (`one` when
    both do); TimeoutError once `deadline` (loop time) passes. For a session that must
    hear either side at any time (an IMAP server speaks unasked) with one task and one
    future, not a task per side."""
    for connection in (one, other):
        if connection.pending:
            return connection
    waiter = one.loop.create_future()
    one._waiter = other._waiter = waiter
    timer = None if deadline is None else one.loop.call_at(deadline, _expire, waiter)
    try:
        await waiter
    finally:
        one._waiter = other._waiter = None
        if timer is not None:
            timer.cancel()
    return one if one.pending else other


def _abort_pipe(connection: Connection) -> None:
    """A spliced pair that stopped moving: both ends go."""
    for end in (connection, connection._source):
        if end is not None:
            end.abort()
    Connection._wake(connection._lost)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
