"""The proxy's POP3 client side: the upstream session a POP3 login opens.

Connect (from `source_address`), implicit TLS or STLS, tell the upstream who the client
is (Dovecot's XCLIENT, or a PROXY header before anything else), then log in as the user.
Each round trip is timed; every failure is an `UpstreamError`. After the login the
session forwards the client's commands one at a time and relays the replies, a
multi-line body as it arrives.
"""

from __future__ import annotations

import logging
import ssl
import time

from .. import metrics
from ..config import UpstreamSettings
from ..protocol.events import NEED_DATA
from ..protocol.pop3 import Collected, End, Passthrough, Pop3ReplyReader, ProtocolViolation, Status
from ..session import Session
from .connection import Connection
from .upstream import xclient_address
from .upstream_link import UpstreamError, connect, proxy_header, upgrade

log = logging.getLogger("mailproxy.upstream")

QUIT_TIMEOUT = 2.0
# Response codes (RFC 2449, RFC 3206) that say the login failed for a reason other than
# the credentials: the client should come back, and is not told its password is wrong.
TEMPORARY_CODES = (b"[SYS/", b"[IN-USE]", b"[LOGIN-DELAY]")
# Upstreams already warned about (once per process): XCLIENT wanted, not offered.
_warned_without_xclient: set[str] = set()


class Pop3Upstream:
    def __init__(self, name: str, settings: UpstreamSettings, tls: ssl.SSLContext | None) -> None:
        self.name = name
        self.settings = settings
        self._tls = tls
        self._link: Connection | None = None
        self._reader = Pop3ReplyReader()
        self.logged_in = False

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected

    def detach(self) -> tuple[Connection | None, bytes]:
        """The connection and what was read from it and not yet taken, for a session
        that becomes a byte pipe; this object is done with both."""
        link, self._link = self._link, None
        return link, self._reader.take_pending()

    async def open(self, session: Session) -> None:
        """Connect, read the greeting, secure the link, and pass the client's identity."""
        header = proxy_header(session) if self.settings.identity_for("pop3") == "proxy" else None
        self._link = await connect(self.name, self.settings, self._tls, header)
        greeting = await self._reply("greeting", self.settings.connect_timeout)
        if not greeting.ok:
            raise self.fail("greeting", f"upstream refused the session: {_text(greeting)}")
        if self.settings.tls == "starttls":
            reply = await self.command(b"STLS\r\n", "STLS")
            if not reply.ok:
                raise self.fail("tls", f"STLS refused: {_text(reply)}")
            try:
                await upgrade(self._link, self.settings, self._tls, self._reader.pending)
            except UpstreamError as exc:
                raise self.fail(exc.stage, str(exc).removeprefix("tls: ")) from None
        if self.settings.identity_for("pop3") == "xclient":
            await self._announce(session, greeting)

    async def _announce(self, session: Session, greeting: Status) -> None:
        """Dovecot's XCLIENT. Its answer does not tell whether it was heeded: from an
        untrusted address it says `+OK You are not from trusted IP - ignoring`. The
        greeting's `[XCLIENT]` code does tell: only a trusted proxy gets it."""
        if b"[XCLIENT]" not in greeting.line:
            metrics.child(metrics.upstream_identity_missing, self.name).inc()
            if self.name not in _warned_without_xclient:
                _warned_without_xclient.add(self.name)
                log.warning(
                    "upstream %s does not offer XCLIENT to the proxy: it sees the proxy's "
                    "address, not the client's (trust the proxy's address there, or set "
                    "client_identity = \"none\")", self.name,
                )
            return
        attributes = f"ADDR={xclient_address(session.client_address)} PORT={session.client_port} SESSION={session.id}"
        reply = await self.command(f"XCLIENT {attributes}\r\n".encode(), "XCLIENT")
        if not reply.ok:
            raise self.fail("xclient", f"XCLIENT refused: {_text(reply)}")

    async def login(self, username: str, password: str) -> tuple[bool, bytes]:
        """USER and PASS as the client: (accepted, the upstream's final reply line).
        A refusal for another reason than the credentials raises UpstreamError."""
        reply = await self.command(f"USER {username}\r\n".encode("utf-8", "surrogateescape"), "USER")
        if reply.ok:
            reply = await self.command(f"PASS {password}\r\n".encode("utf-8", "surrogateescape"), "PASS")
        if not reply.ok and any(code in reply.line for code in TEMPORARY_CODES):
            raise self.fail("auth", f"login refused for a passing reason: {_text(reply)}")
        self.logged_in = reply.ok
        return reply.ok, reply.line

    async def command(
        self, line: bytes, verb: str, multiline: bool = False, collect: bool = False, timeout: float | None = None
    ) -> Status:
        """Send one command line and return its reply's status line. After a +OK to
        a multi-line command, the body follows: whole from `collected()` if `collect`,
        else piece by piece from `body()`."""
        link = self._link
        if link is None or not link.connected:
            raise UpstreamError("lost", f"connection closed before {verb}")
        started = time.perf_counter()
        timeout = timeout or self.settings.reply_timeout
        self._reader.expect(multiline, collect)
        link.write(line)
        reply = await self._reply(verb, timeout)
        metrics.child(metrics.upstream_duration, self.name, verb).observe(time.perf_counter() - started)
        return reply

    async def collected(self) -> list[bytes]:
        """The lines of a body asked for with `collect` (at most 64 KiB), with their
        line ends; the "." line is not among them."""
        event = await self._event("body", self.settings.reply_timeout)
        if not isinstance(event, Collected):
            raise self.fail("protocol", f"unexpected {type(event).__name__} for a collected body")
        return event.lines

    async def body(self):
        """The body of a multi-line reply, piece by piece as it arrives (an async
        iterator of bytes, still dot-stuffed); it ends after the "." line, which is
        not among the pieces."""
        while True:
            event = await self._event("body", self.settings.reply_timeout)
            if isinstance(event, End):
                return
            yield event.data

    async def _reply(self, stage: str, timeout: float) -> Status:
        event = await self._event(stage, timeout)
        if not isinstance(event, Status):
            raise self.fail("protocol", f"unexpected {type(event).__name__} during {stage}")
        return event

    async def _event(self, stage: str, timeout: float) -> Status | Passthrough | End | Collected:
        link = self._link
        deadline = link.loop.time() + timeout
        while True:
            event = self._reader.next_event()
            if event is not NEED_DATA:
                break
            try:
                chunk = await link.receive(deadline)
            except TimeoutError:
                raise self.fail("timeout", f"no reply to {stage} within {timeout}s") from None
            except OSError as exc:
                raise self.fail("lost", f"{stage}: {exc}") from None
            self._reader.receive_data(chunk)
        if isinstance(event, ProtocolViolation):
            raise self.fail("protocol", event.text)
        if not isinstance(event, (Status, Passthrough, End, Collected)):  # CLOSED
            raise self.fail("lost", f"connection closed during {stage}")
        return event

    def fail(self, stage: str, detail: str) -> UpstreamError:
        """Count the failure, drop the connection, and return the error to raise."""
        metrics.child(metrics.upstream_failures, self.name, stage).inc()
        self.abort()
        return UpstreamError(stage, detail)

    async def quit(self) -> None:
        """Say goodbye without waiting long: the upstream commits a POP3 session's
        deletions at QUIT, so a client that left without QUIT keeps its messages."""
        if self.connected and not self.logged_in:
            try:
                await self.command(b"QUIT\r\n", "QUIT", timeout=QUIT_TIMEOUT)
            except UpstreamError:
                pass
        self.abort()

    def abort(self) -> None:
        if self._link is not None:
            self._link.abort()
            self._link = None


def _text(reply: Status) -> str:
    return reply.line.decode("utf-8", "replace").strip()
