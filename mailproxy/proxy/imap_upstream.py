"""The proxy's IMAP client side: the upstream session an IMAP login opens.

Connect (from `source_address`), implicit TLS or STARTTLS, tell the upstream who the
client is (`ID` with Dovecot's x-originating-* fields, honoured from its
login_trusted_networks; or a PROXY header before anything else), then log in as the
user. These commands carry the proxy's own tags (`mp1`, `mp2`, ...); their untagged
responses are the proxy's to read, not the client's. After the login the session relays
both ways through `link` and `reader`.
"""

from __future__ import annotations

import base64
import ssl
import sys
import time

from .. import metrics
from ..config import UpstreamSettings
from ..protocol.events import CLOSED, NEED_DATA, ProtocolViolation
from ..protocol.imap_responses import (
    HOLD_LIMIT,
    Continuation,
    ImapResponseReader,
    Tagged,
    Untagged,
    capability_list,
)
from ..session import Session
from .mailstore_upstream import MailstoreUpstream
from .upstream_link import UpstreamError

LOGOUT_TIMEOUT = 2.0
# Tagged NO codes (RFC 5530) that say the login failed for a reason other than the
# credentials: the client should come back, and is not told its password is wrong.
TEMPORARY_CODES = ("UNAVAILABLE", "SERVERBUG", "CONTACTADMIN", "INUSE", "EXPIRED", "LIMIT")


class ImapUpstream(MailstoreUpstream):
    protocol = "imap"

    def __init__(self, name: str, settings: UpstreamSettings, tls: ssl.SSLContext | None) -> None:
        # A client's line may be 64 KiB, and the upstream may echo it in a tagged reply.
        super().__init__(name, settings, tls, ImapResponseReader(hold_limit=2 * HOLD_LIMIT))
        self.capabilities: list[str] = []  # as the upstream last listed them
        self._tags = 0

    def has(self, capability: str) -> bool:
        return capability.upper() in (c.upper() for c in self.capabilities)

    async def open(self, session: Session) -> None:
        """Connect, read the greeting, secure the link, and pass the client's identity."""
        await self.connect(session)
        greeting = await self.next_event("greeting", self.settings.connect_timeout)
        if not (isinstance(greeting, Untagged) and greeting.kind == "OK"):
            raise self.fail("greeting", f"upstream refused the session: {_shown(greeting)}")
        self.capabilities = _listed(greeting.raw)
        if self.settings.tls == "starttls":
            await self._starttls()
        if not self.capabilities:
            await self.command("CAPABILITY")
        if self.identity == "id":
            await self._announce(session)

    async def _starttls(self) -> None:
        if not self.capabilities:
            await self.command("CAPABILITY")
        if not self.has("STARTTLS"):
            raise self.fail("tls", "upstream does not offer STARTTLS")
        reply = await self.command("STARTTLS")
        if reply.status != "OK":
            raise self.fail("tls", f"STARTTLS refused: {_shown(reply)}")
        await self.secure()
        self.capabilities = []  # RFC 3501 6.2.1: ask again after TLS

    async def _announce(self, session: Session) -> None:
        """RFC 2971 ID with the fields Dovecot takes from a trusted proxy. From an
        untrusted address Dovecot answers OK and ignores them: nothing on the wire tells."""
        if not self.has("ID"):
            self.identity_missing("does not offer ID")
            return
        fields = {
            "x-originating-ip": session.client_address,
            "x-originating-port": str(session.client_port),
            "x-session-ext-id": session.id,
        }
        listed = " ".join(f'"{key}" "{value}"' for key, value in fields.items())
        reply = await self.command(f"ID ({listed})")
        if reply.status != "OK":
            raise self.fail("identity", f"ID refused: {_shown(reply)}")

    async def login(self, username: str, password: str) -> tuple[bool, Tagged]:
        """AUTHENTICATE PLAIN with an initial response (RFC 4959), base64 so that no
        character of the credentials can end the line: (accepted, the tagged reply).
        A refusal for another reason than the credentials raises UpstreamError."""
        if not (self.has("SASL-IR") and self.has("AUTH=PLAIN")):
            raise self.fail("auth", "upstream offers no AUTHENTICATE PLAIN with SASL-IR")
        token = base64.b64encode(f"\0{username}\0{password}".encode("utf-8", "surrogateescape")).decode()
        reply = await self.command(f"AUTHENTICATE PLAIN {token}", verb="AUTHENTICATE")
        code = (reply.code or "").split(" ", 1)[0].upper()
        if reply.status != "OK" and code in TEMPORARY_CODES:
            raise self.fail("auth", f"login refused for a passing reason: {_shown(reply)}")
        self.logged_in = reply.status == "OK"
        if self.logged_in:
            self.capabilities = _listed(reply.raw)
            if not self.capabilities:
                await self.command("CAPABILITY")
        return self.logged_in, reply

    async def command(self, text: str, verb: str | None = None, timeout: float | None = None) -> Tagged:
        """One command of the proxy's own, under its own tag; its untagged responses are
        read here (a CAPABILITY list is kept), and its tagged reply returned."""
        link = self.link
        if link is None or not link.connected:
            raise UpstreamError("lost", f"connection closed before {verb or text}")
        verb = verb or text.split(" ", 1)[0]
        self._tags += 1
        tag = f"mp{self._tags}"
        started = time.perf_counter()
        timeout = timeout or self.settings.reply_timeout
        link.write(f"{tag} {text}\r\n".encode("utf-8", "surrogateescape"))
        while True:
            event = await self.next_event(verb, timeout)
            if isinstance(event, Tagged) and event.tag == tag:
                break
            if isinstance(event, Untagged) and event.kind == "CAPABILITY":
                self.capabilities = _listed(event.raw)
            elif isinstance(event, Untagged) and event.kind == "BYE":
                raise self.fail("lost", f"upstream said {_shown(event)} during {verb}")
            elif isinstance(event, (Tagged, Continuation)):
                raise self.fail("protocol", f"unexpected {_shown(event)} during {verb}")
        metrics.child(metrics.upstream_duration, self.name, verb).observe(time.perf_counter() - started)
        return event

    async def logout(self, in_idle: bool = False) -> None:
        """Say goodbye without waiting long. Unlike POP3, nothing depends on it: an
        IMAP session's changes are made as its commands run. Whatever the upstream says
        meanwhile (answers to a command the client left open, BYE) is nobody's business
        any more, and no failure of the upstream's. `in_idle`: the client left during
        IDLE, which must end (DONE) before the upstream reads a command again."""
        link = self.link
        if link is not None and link.connected:
            self._tags += 1
            tag = f"mp{self._tags}"
            goodbye = f"{tag} LOGOUT\r\n".encode()
            link.write(b"DONE\r\n" + goodbye if in_idle else goodbye)
            deadline = link.loop.time() + LOGOUT_TIMEOUT
            try:
                while True:
                    event = self.reader.next_event()
                    if event is NEED_DATA:
                        data = await link.receive(deadline)
                        self.reader.receive_data(data)
                        if not data:
                            break
                    elif event is CLOSED or isinstance(event, ProtocolViolation):
                        break
                    elif isinstance(event, Tagged) and event.tag == tag:
                        break
            except (TimeoutError, OSError):
                pass
        self.abort()


def _listed(raw: bytes) -> list[str]:
    """The capabilities a response lists. The names are interned: every session of an
    upstream holds the same few dozen, and thousands of idle sessions would otherwise
    hold a copy each."""
    return [sys.intern(name) for name in capability_list(raw) or ()]


def _shown(event) -> str:
    raw = getattr(event, "raw", b"") or getattr(event, "data", b"")
    return raw[:200].decode("utf-8", "replace").strip() or type(event).__name__
