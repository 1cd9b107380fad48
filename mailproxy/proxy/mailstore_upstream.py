"""What the POP3 and IMAP upstream clients share: the connection (opened with a PROXY
header when the upstream takes one, secured with STARTTLS/STLS), the reader that frames
the upstream's output, reading it within a deadline, and how a failure is counted and
ends the connection. Each protocol's client adds its greeting, identity and login.
"""

from __future__ import annotations

import ssl

from .. import metrics
from ..config import UpstreamSettings
from ..protocol.events import CLOSED, NEED_DATA, ProtocolViolation
from ..session import Session
from .connection import Connection
from .upstream_link import UpstreamError, connect, identity_missing, proxy_header, upgrade



class MailstoreUpstream:
    protocol = ""  # "pop3" or "imap"

    def __init__(self, name: str, settings: UpstreamSettings, tls: ssl.SSLContext | None, reader) -> None:
        self.name = name
        self.settings = settings
        self._tls = tls
        self.link: Connection | None = None
        self.reader = reader
        self.logged_in = False

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    @property
    def identity(self) -> str | None:
        """How the upstream is told who the client is: "xclient", "id", "proxy", "none"."""
        return self.settings.identity_for(self.protocol)

    async def connect(self, session: Session) -> None:
        header = proxy_header(session) if self.identity == "proxy" else None
        self.link = await connect(self.name, self.settings, self._tls, header)

    async def secure(self) -> None:
        """TLS after the upstream's go-ahead to STARTTLS or STLS."""
        try:
            await upgrade(self.link, self.settings, self._tls, self.reader.pending)
        except UpstreamError as exc:
            raise self.fail(exc.stage, str(exc).removeprefix("tls: ")) from None

    def identity_missing(self, what: str) -> None:
        identity_missing(self.name, what)

    async def next_event(self, stage: str, timeout: float):
        """The reader's next event, reading within `timeout` seconds; a protocol
        violation, a timeout or the end of the connection is an UpstreamError."""
        link = self.link
        if link is None:
            raise UpstreamError("lost", f"connection closed before {stage}")
        deadline = link.loop.time() + timeout
        while (event := self.reader.next_event()) is NEED_DATA:
            try:
                chunk = await link.receive(deadline)
            except TimeoutError:
                raise self.fail("timeout", f"no reply to {stage} within {timeout}s") from None
            except OSError as exc:
                raise self.fail("lost", f"{stage}: {exc}") from None
            self.reader.receive_data(chunk)
        if isinstance(event, ProtocolViolation):
            raise self.fail("protocol", event.text)
        if event is CLOSED:
            raise self.fail("lost", f"connection closed during {stage}")
        return event

    def write(self, data: bytes) -> None:
        if not self.connected:
            raise UpstreamError("lost", "connection closed")
        self.link.write(data)

    async def drain(self) -> None:
        """Wait while the upstream takes no more; one that stops reading must not hold
        the session for ever."""
        link = self.link
        if link is None or not link.write_blocked:
            return
        try:
            await link.drain(link.loop.time() + self.settings.reply_timeout)
        except TimeoutError:
            raise self.fail("timeout", f"upstream took nothing for {self.settings.reply_timeout}s") from None
        except ConnectionError as exc:
            raise self.fail("lost", f"write failed: {exc}") from None

    def detach(self) -> tuple[Connection | None, bytes]:
        """The connection and what was read from it and not yet taken, for a session
        that becomes a byte pipe; this object is done with both."""
        link, self.link = self.link, None
        return link, self.reader.take_pending()

    def fail(self, stage: str, detail: str) -> UpstreamError:
        """Count the failure, drop the connection, and return the error to raise."""
        metrics.child(metrics.upstream_failures, self.name, stage).inc()
        self.abort()
        return UpstreamError(stage, detail)

    def abort(self) -> None:
        if self.link is not None:
            self.link.abort()
            self.link = None
