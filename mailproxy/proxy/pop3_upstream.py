"""The proxy's POP3 client side: the upstream session a POP3 login opens.

Connect (from `source_address`), implicit TLS or STLS, tell the upstream who the client
is (Dovecot's XCLIENT, or a PROXY header before anything else), then log in as the user.
Each round trip is timed; every failure is an `UpstreamError`. After the login the
session forwards the client's commands one at a time and relays the replies, a
multi-line body as it arrives.
"""

from __future__ import annotations

import ssl
import time

from .. import metrics
from ..config import UpstreamSettings
from ..protocol.pop3 import Collected, End, Pop3ReplyReader, Status
from ..session import Session
from .mailstore_upstream import MailstoreUpstream
from .upstream import xclient_address
from .upstream_link import UpstreamError

QUIT_TIMEOUT = 2.0
# Response codes (RFC 2449, RFC 3206) that say the login failed for a reason other than
# the credentials: the client should come back, and is not told its password is wrong.
TEMPORARY_CODES = (b"[SYS/", b"[IN-USE]", b"[LOGIN-DELAY]")


class Pop3Upstream(MailstoreUpstream):
    protocol = "pop3"

    def __init__(self, name: str, settings: UpstreamSettings, tls: ssl.SSLContext | None) -> None:
        super().__init__(name, settings, tls, Pop3ReplyReader())

    async def open(self, session: Session) -> None:
        """Connect, read the greeting, secure the link, and pass the client's identity."""
        await self.connect(session)
        greeting = await self._reply("greeting", self.settings.connect_timeout)
        if not greeting.ok:
            raise self.fail("greeting", f"upstream refused the session: {_text(greeting)}")
        if self.settings.tls == "starttls":
            reply = await self.command(b"STLS\r\n", "STLS")
            if not reply.ok:
                raise self.fail("tls", f"STLS refused: {_text(reply)}")
            await self.secure()
        if self.identity == "xclient":
            await self._announce(session, greeting)

    async def _announce(self, session: Session, greeting: Status) -> None:
        """Dovecot's XCLIENT. Its answer does not tell whether it was heeded: from an
        untrusted address it says `+OK You are not from trusted IP - ignoring`. The
        greeting's `[XCLIENT]` code does tell: only a trusted proxy gets it."""
        if b"[XCLIENT]" not in greeting.line:
            self.identity_missing("does not offer XCLIENT to the proxy (trust its address in login_trusted_networks)")
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
        if not self.connected:
            raise UpstreamError("lost", f"connection closed before {verb}")
        if self.reader.pending or self.link.has_data:
            # POP3 servers speak only when asked: these bytes would be taken for the
            # reply to this command, and every reply after it would be one off.
            raise self.fail("protocol", f"upstream sent data nobody asked for, before {verb}")
        started = time.perf_counter()
        timeout = timeout or self.settings.reply_timeout
        self.reader.expect(multiline, collect)
        self.link.write(line)
        reply = await self._reply(verb, timeout)
        metrics.child(metrics.upstream_duration, self.name, verb).observe(time.perf_counter() - started)
        return reply

    async def collected(self) -> list[bytes]:
        """The lines of a body asked for with `collect` (at most 64 KiB), with their
        line ends; the "." line is not among them."""
        event = await self.next_event("body", self.settings.reply_timeout)
        if not isinstance(event, Collected):
            raise self.fail("protocol", f"unexpected {type(event).__name__} for a collected body")
        return event.lines

    async def body(self):
        """The body of a multi-line reply, piece by piece as it arrives (an async
        iterator of bytes, still dot-stuffed); it ends after the "." line, which is
        not among the pieces."""
        while True:
            event = await self.next_event("body", self.settings.reply_timeout)
            if isinstance(event, End):
                return
            yield event.data

    async def _reply(self, stage: str, timeout: float) -> Status:
        event = await self.next_event(stage, timeout)
        if not isinstance(event, Status):
            raise self.fail("protocol", f"unexpected {type(event).__name__} during {stage}")
        return event

    async def quit(self) -> None:
        """Say goodbye without waiting long: the upstream commits a POP3 session's
        deletions at QUIT, so a client that left without QUIT keeps its messages."""
        if self.connected and not self.logged_in:
            try:
                await self.command(b"QUIT\r\n", "QUIT", timeout=QUIT_TIMEOUT)
            except UpstreamError:
                pass
        self.abort()


def _text(reply: Status) -> str:
    return reply.line.decode("utf-8", "replace").strip()
