"""What every protocol's upstream connection shares: the TLS context it verifies with,
connecting (from `source_address`, with a PROXY header, implicit TLS and a deadline),
the STARTTLS upgrade that refuses data sent before it, and one error type for every
failure. Each failure is counted in mailproxy_upstream_failures_total by stage."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from .. import metrics
from ..config import UpstreamSettings
from ..protocol.proxy_protocol import proxy_v2_header
from ..session import Session
from .connection import Connection

log = logging.getLogger("mailproxy.upstream")


# Upstreams already warned about (once per process): the client's identity cannot reach them.
_warned_without_identity: set[str] = set()


def identity_missing(name: str, what: str) -> None:
    """The upstream will take the proxy's address for the client's: say so once per
    upstream (`what` says why), and count every session it happens to."""
    metrics.child(metrics.upstream_identity_missing, name).inc()
    if name not in _warned_without_identity:
        _warned_without_identity.add(name)
        log.warning(
            "upstream %s %s: it sees the proxy's address, not the client's (set "
            "client_identity = \"none\" if that is intended)", name, what,
        )


class UpstreamError(Exception):
    """The upstream is unreachable, timed out, broke the protocol or went away.

    `unanswered` is true when a command went out whole and no reply came back: for the
    end of a message, the upstream may or may not have taken it.
    """

    expected = True  # an outage, explained by its message: logged without a traceback

    def __init__(self, stage: str, detail: str, unanswered: bool = False) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage = stage
        self.unanswered = unanswered


def client_tls_context(settings: UpstreamSettings) -> ssl.SSLContext | None:
    if settings.tls == "none":
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def local_address(settings: UpstreamSettings) -> tuple[str, int] | None:
    """Where connections to the upstream come from: `source_address`, any port."""
    return None if settings.source_address is None else (settings.source_address, 0)


def proxy_header(session: Session) -> bytes:
    """The PROXY v2 header for `client_identity = "proxy"`: the client's address, the
    one it connected to, and whether its own connection is TLS (a server that has the
    header from a trusted proxy takes the session as secured, or not, by that)."""
    version = session.ssl.get("version") if session.ssl else None
    return proxy_v2_header(session.peer[:2], session.local[:2], tls=session.tls, tls_version=version)


async def connect(
    name: str, settings: UpstreamSettings, tls: ssl.SSLContext | None, header: bytes | None = None,
) -> Connection:
    """A connection to the upstream, its implicit TLS handshake done. `header` (a PROXY
    protocol header) goes first, in plaintext: TLS starts after it, on the same link."""
    host, port = settings.address.host, settings.address.port
    loop = asyncio.get_running_loop()
    link: Connection | None = None
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.connect_timeout):
            _, link = await loop.create_connection(Connection, host, port, local_addr=local_address(settings))
            if header:
                link.write(header)
            if settings.tls == "implicit":
                await link.start_tls(tls, server_side=False, server_hostname=host)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        if link is not None:
            link.abort()
        metrics.child(metrics.upstream_failures, name, "connect").inc()
        raise UpstreamError("connect", f"{host}:{port}: {exc or type(exc).__name__}") from None
    metrics.child(metrics.upstream_connect_duration, name).observe(time.perf_counter() - started)
    return link


async def upgrade(link: Connection, settings: UpstreamSettings, tls: ssl.SSLContext, early_data: bool) -> None:
    """STARTTLS (or STLS) after the upstream's go-ahead. `early_data`: the caller's
    parser already holds bytes past the go-ahead. Raises UpstreamError("tls", ...);
    the caller counts it and drops the link."""
    if early_data or await link.wait_readable(0):
        # Plaintext after the go-ahead would be read as if it came through TLS: someone
        # on the path could inject replies (the CVE-2011-0411 family, reversed).
        # Whatever arrives after this check goes to the TLS layer, not to us.
        raise UpstreamError("tls", "upstream sent data after its STARTTLS reply")
    try:
        await link.start_tls(
            tls, server_side=False, server_hostname=settings.address.host, timeout=settings.connect_timeout,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise UpstreamError("tls", f"handshake failed: {exc or type(exc).__name__}") from None
