"""The proxy's SMTP client side: one connection to the upstream per client session.

It owns the conversation details the client never sees: implicit TLS or STARTTLS towards
the upstream, telling it who the real client is (XCLIENT), and the optional service
credential. Every round trip is timed; every failure is an `UpstreamError`, which the
client session turns into a 4xx reply.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Awaitable

from .. import metrics
from ..config import UpstreamSettings
from ..protocol.smtp import ProtocolError, ReplyParser, ServerReply, ehlo_keywords, xtext
from .connection import Connection
from .upstream_link import UpstreamError, connect, identity_missing, upgrade

log = logging.getLogger("mailproxy.upstream")


# After this many idle seconds, look whether the upstream hung up before using it.
IDLE_CHECK_AFTER = 0.5


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What XCLIENT tells the upstream about the real client."""

    address: str
    port: int
    helo: str | None
    login: str | None
    esmtp: bool
    name: str | None = None  # verified host name, or XCLIENT's [UNAVAILABLE]/[TEMPUNAVAIL]


@functools.lru_cache(maxsize=1024)  # clients come back; parsing an address is not free
def xclient_address(address: str) -> str:
    """XCLIENT's ADDR form: IPv4 as is, IPv6 with the IPV6: prefix Postfix requires."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"IPV6:{ip}" if ip.version == 6 else str(ip)


class UpstreamConnection:
    def __init__(self, name: str, settings: UpstreamSettings, tls: ssl.SSLContext | None) -> None:
        self.name = name
        self.settings = settings
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._link: Connection | None = None
        self._parser = ReplyParser()
        self.keywords: dict[str, str] = {}
        self.greeting: ServerReply | None = None
        self._logged_in = False  # with the service credential, in this upstream session
        self._last_reply = 0.0  # loop time of the last complete reply

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected

    async def open(self) -> ServerReply:
        """Connect and read the greeting (after the implicit TLS handshake, if any)."""
        self._link = await connect(self.name, self.settings, self._tls)
        self.greeting = await self._read_reply("greeting", self.settings.connect_timeout)
        if self.settings.tls == "starttls" and self.greeting.code == 220:
            await self._starttls()
        return self.greeting

    async def _starttls(self) -> None:
        reply = await self.ehlo(f"[{self._link.transport.get_extra_info('sockname')[0]}]")
        if "STARTTLS" not in self.keywords:
            raise self.fail("tls", "upstream does not offer STARTTLS")
        reply = await self.command(b"STARTTLS\r\n", "STARTTLS")
        if reply.code != 220:
            raise self.fail("tls", f"STARTTLS refused: {reply}")
        try:
            await upgrade(self._link, self.settings, self._tls, bool(self._parser.pending))
        except UpstreamError as exc:
            raise self.fail(exc.stage, str(exc).removeprefix("tls: ")) from None
        self.keywords = {}

    @property
    def fresh(self) -> bool:
        """Connected, and answered a moment ago: usable without a look (see `usable`).
        A plain property, so the common case costs no coroutine."""
        link = self._link
        return link is not None and link.connected and self._loop.time() - self._last_reply < IDLE_CHECK_AFTER

    async def usable(self) -> bool:
        """Connected, and not closed by the upstream while the proxy said nothing.

        An idle upstream speaks only to go away (`421` after its timeout, then EOF),
        and the transport does not show that until something is read. After a pause,
        look before sending; a session that fails anyway turns into a 4xx."""
        if self.fresh:
            return True
        if not self.connected:
            return False
        if self._parser.pending or await self._link.wait_readable(0):
            log.info("upstream %s closed the idle session", self.name)
            self.abort()
            return False
        return True

    @property
    def spoke(self) -> bool:
        """The upstream sent something that no command asked for yet."""
        return bool(self._parser.pending) or (self._link is not None and self._link.has_data)

    async def ehlo(self, helo: str, extended: bool = True) -> ServerReply:
        verb = "EHLO" if extended else "HELO"
        reply = await self.command(f"{verb} {helo}\r\n".encode("utf-8", "surrogateescape"), verb)
        if extended and reply.code == 250:
            self.keywords = ehlo_keywords(reply)
        return reply

    async def greet(self, facts: ClientFacts) -> ServerReply:
        """Greet with the client's name, then say who the client is; return the reply
        to show the client.

        The upstream is always greeted with EHLO first, even for a HELO client: only
        that reveals XCLIENT, and without it the upstream would take the proxy's
        address for the client's (and may trust it).
        """
        reply = await self.ehlo(facts.helo, True)
        if reply.code != 250:
            return await self.ehlo(facts.helo, False) if not facts.esmtp else reply
        again = await self.identify(facts)
        if again is not None:
            return again
        if not facts.esmtp:  # no new session was started: greet as the client did
            return await self.ehlo(facts.helo, False)
        return reply

    async def identify(self, facts: ClientFacts) -> ServerReply | None:
        """XCLIENT (if offered), then the service credential (if configured)."""
        reply = await self.announce(facts)
        await self._service_login()
        return reply

    async def _service_login(self) -> None:
        settings = self.settings
        if settings.username is None or self._logged_in:
            return
        reply = await self.authenticate(settings.username, settings.password or "")
        if reply.code != 235:
            raise self.fail("auth", f"service credential refused: {reply}")
        self._logged_in = True

    async def announce(self, facts: ClientFacts) -> ServerReply | None:
        """Pass the client's identity with XCLIENT, if the upstream takes it. Returns
        the reply to the EHLO repeated after it, if one was needed.

        Postfix answers 220 and starts a new SMTP session, so the client's EHLO is
        repeated; an upstream that answers 250 (smtp-sink) keeps the session as it is.
        """
        offered = self.keywords.get("XCLIENT")
        if self.settings.identity_for("smtp") != "xclient":
            return None
        if offered is None:
            identity_missing(self.name, "does not offer XCLIENT")
            return None
        wanted = {
            "NAME": facts.name or "[UNAVAILABLE]",
            "ADDR": xclient_address(facts.address),
            "PORT": str(facts.port),
            "PROTO": "ESMTP" if facts.esmtp else "SMTP",
            "HELO": facts.helo,
            "LOGIN": facts.login,
        }
        names = set(offered.upper().split())
        attrs = [f"{k}={xtext(v)}" for k, v in wanted.items() if k in names and v]
        if not attrs:
            return None
        reply = await self.command(f"XCLIENT {' '.join(attrs)}\r\n".encode(), "XCLIENT")
        if not 200 <= reply.code < 300:
            raise self.fail("xclient", f"XCLIENT refused: {reply}")
        if reply.code == 220 and facts.helo:  # a new session: greet it again
            self._logged_in = False
            return await self.ehlo(facts.helo, facts.esmtp)
        return None

    async def authenticate(self, username: str, password: str) -> ServerReply:
        """AUTH PLAIN with an initial response: the reply is final. A 334 would leave
        the upstream waiting inside the exchange, so the session is dropped."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        reply = await self.command(f"AUTH PLAIN {token}\r\n".encode(), "AUTH")
        if reply.code == 334:
            raise self.fail("protocol", "upstream asked for more after a complete AUTH PLAIN")
        return reply

    def command(self, line: bytes, verb: str) -> Awaitable[ServerReply]:
        """Send one command line and return the upstream's complete reply. (Not a
        coroutine of its own: one round trip is one coroutine, `send`.)"""
        return self.send([line], verb)

    async def send(self, parts: list[bytes], verb: str, timeout: float | None = None) -> ServerReply:
        """Write `parts` in one go (a command, or a whole message and its end marker)
        and wait for one reply, `timeout` seconds at most (default: reply_timeout)."""
        link = self._link
        if link is None or not link.connected:
            raise UpstreamError("lost", "connection already closed")
        started = time.perf_counter()
        timeout = timeout or self.settings.reply_timeout
        # One deadline for taking the bytes and answering them, not `timeout` for each:
        # a shutdown waits data_timeout (and reply_timeout) for a message the upstream
        # is taking, and must find its answer, or its timeout, by then.
        deadline = self._loop.time() + timeout
        link.writelines(parts)
        if link.write_blocked:
            await self.drain(verb, timeout)
        try:
            reply = await self._read_reply(verb, timeout, deadline)
        except UpstreamError as exc:
            exc.unanswered = True
            raise
        metrics.child(metrics.upstream_duration, self.name, verb).observe(time.perf_counter() - started)
        return reply

    def write(self, parts: list[bytes], verb: str) -> None:
        """Queue bytes for the upstream without waiting (see `drain`)."""
        if not self.connected:
            raise UpstreamError("lost", f"connection closed before {verb}")
        self._link.writelines(parts)

    async def drain(self, verb: str, timeout: float) -> None:
        """Wait while the upstream's side is backed up; an upstream that stops reading
        must not hold the session for ever."""
        if not self._link.write_blocked:
            return
        try:
            await self._link.drain(self._loop.time() + timeout)
        except TimeoutError:
            raise self.fail("timeout", f"upstream took nothing for {timeout}s during {verb}") from None
        except ConnectionError as exc:
            raise self.fail("lost", f"write failed: {exc}") from None

    async def _read_reply(self, stage: str, timeout: float, deadline: float | None = None) -> ServerReply:
        """The next reply, within `timeout` seconds from now, or by `deadline` (loop
        time) when given."""
        loop = self._loop
        if deadline is None:
            deadline = loop.time() + timeout
        while True:
            try:
                reply = self._parser.next_reply()
            except ProtocolError as exc:
                raise self.fail("protocol", str(exc)) from None
            if reply is not None:
                self._last_reply = loop.time()
                return reply
            link = self._link
            if link is None:
                raise self.fail("lost", f"connection closed during {stage}")
            try:
                chunk = await link.receive(deadline)
            except TimeoutError:
                raise self.fail("timeout", f"no reply to {stage} within {timeout}s") from None
            except OSError as exc:
                raise self.fail("lost", f"{stage}: {exc}") from None
            if not chunk:
                raise self.fail("lost", f"connection closed during {stage}")
            self._parser.feed(chunk)

    def fail(self, stage: str, detail: str, unanswered: bool = False) -> UpstreamError:
        """Count the failure, drop the connection, and return the error to raise."""
        metrics.child(metrics.upstream_failures, self.name, stage).inc()
        self.abort()
        return UpstreamError(stage, detail, unanswered)

    async def quit(self) -> None:
        """Say goodbye politely, but never wait long for it."""
        if self.connected:
            try:
                self._link.write(b"QUIT\r\n")
                await self._read_reply("QUIT", 2.0)
            except (UpstreamError, OSError):
                pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection now. A message whose end marker was not sent is discarded
        by the upstream, which is how an unfinished DATA is cancelled."""
        if self._link is not None:
            self._link.abort()
            self._link = None
