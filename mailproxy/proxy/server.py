"""The asyncio side of one process: listeners, signals and a graceful stop.

On SIGINT/SIGTERM: say "not ready", keep accepting for `shutdown_delay` seconds (so
that a load balancer notices first), stop accepting, let open sessions finish for
`shutdown_grace` seconds, then close whatever is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable

from ..app import Application
from ..config import ConfigError
from ..deferred_counts import flush_deferred, keep_flushing
from .core import ClientConnection
from .imap_session import ImapProxySession
from .pop3_session import Pop3ProxySession
from .smtp_session import SmtpProxySession

log = logging.getLogger("mailproxy.server")

HANDSHAKE_TIMEOUT = 10.0  # seconds for a client's implicit TLS handshake
SESSIONS = {"smtp": SmtpProxySession, "pop3": Pop3ProxySession, "imap": ImapProxySession}
Hook = Callable[[], None]


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # optional speed-up
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _open_listeners(app: Application, reuse_port: bool) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    servers = []
    for runtime in app.listeners:
        settings = runtime.settings
        try:
            server = await loop.create_server(
                lambda runtime=runtime, session=SESSIONS[settings.protocol]: ClientConnection(runtime, session),
                settings.address.host,
                settings.address.port,
                # Implicit TLS: the session starts (and admission runs) once the
                # handshake is done. uvloop starts reading as soon as a connection is
                # made, so the handshake bytes cannot be held back for a later upgrade;
                # a silent connection's wait for it is kept short instead.
                ssl=runtime.server_tls if settings.tls == "implicit" else None,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if settings.tls == "implicit" else None,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            for opened in servers:
                opened.close()
            raise _cannot_listen(settings, exc) from None
        servers.append(server)
        log.info(
            "listener %s: %s on %s (tls %s) -> upstream %s at %s",
            settings.name, settings.kind, settings.address,
            settings.tls, runtime.upstream_name, runtime.upstream.address,
        )
    return servers


def _cannot_listen(settings, exc: OSError) -> ConfigError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConfigError(f"listener {settings.name}: cannot listen on {settings.address}: {reason}")


def check_listen_addresses(app: Application) -> None:
    """Bind each listening address once, as the workers will (SO_REUSEPORT), so that a
    port held by another program is one clear error before any worker starts."""
    for runtime in app.listeners:
        address = runtime.settings.address
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((address.host, address.port))
            except OSError as exc:
                raise _cannot_listen(runtime.settings, exc) from None


async def _drain_sessions(app: Application, grace: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline and any(r.sessions for r in app.listeners):
        await asyncio.sleep(0.05)
    leftover = [s for r in app.listeners for s in list(r.sessions)]
    if leftover:
        log.info("closing %d session(s) still open after %.1fs", len(leftover), grace)
    _close(s for s in leftover if not s.delivering)
    # A session whose message is with the upstream gets the upstream's answer to the
    # client first; it is bounded by the upstream's data_timeout.
    delivering = [s for s in leftover if s.delivering]
    if delivering:
        log.info("waiting for %d message(s) the upstream is taking", len(delivering))
    limit = loop.time() + app.config.longest_delivery
    while any(s.delivering for s in delivering) and loop.time() < limit:
        await asyncio.sleep(0.05)
    _close(delivering)
    if leftover:
        await asyncio.sleep(0.1)  # let their tasks run their cleanup


def _close(sessions) -> None:
    for session in sessions:
        session.close()


async def serve(
    app: Application, reuse_port: bool = False, ready: Hook | None = None, stopping: Hook | None = None,
    shutdown_delay: float = 0.0,
) -> None:
    """Serve until SIGINT or SIGTERM. `ready` is called once the listeners are open,
    `stopping` on the signal, `shutdown_delay` seconds before they close."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    servers = await _open_listeners(app, reuse_port)
    flushing = asyncio.create_task(keep_flushing())
    try:
        if ready is not None:
            ready()
        await stop.wait()
        if stopping is not None:
            stopping()  # first, so that load balancers send no more clients
        if shutdown_delay > 0:
            log.info("stopping: not ready, still accepting for %.1fs", shutdown_delay)
            await asyncio.sleep(shutdown_delay)
        log.info("stopping: no new connections, %.1fs for open sessions", app.config.proxy.shutdown_grace)
        for server in servers:
            server.close()
        await _drain_sessions(app, app.config.proxy.shutdown_grace)
        for server in servers:
            await server.wait_closed()
        await app.state.close()
    finally:
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        flush_deferred()  # what the last sessions counted (also if the task never ran)
    log.info("stopped")


def run_process(
    app: Application, reuse_port: bool = False, ready: Hook | None = None, stopping: Hook | None = None,
    shutdown_delay: float = 0.0,
) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(app, reuse_port, ready, stopping, shutdown_delay))
