"""What every session of one listener shares: its settings, TLS contexts, upstream,
policy engine and auth throttle. Built once at start-up."""

from __future__ import annotations

import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from .. import metrics
from ..auth.throttle import AuthThrottle
from ..dns import Resolver
from ..config import AuthSettings, ListenerSettings, UpstreamSettings
from ..policy import PolicyEngine

# What a command handler returns to end the session after its reply.
CLOSE_SESSION = object()


def server_tls_context(listener: ListenerSettings) -> ssl.SSLContext | None:
    if listener.tls == "none":
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(listener.cert_file), str(listener.key_file))
    metrics.child(metrics.tls_certificate_expiry, listener.name).set(certificate_expiry(listener.cert_file))
    return context


def certificate_expiry(cert_file: Path) -> float:
    """When the certificate a client is shown (the first of the chain file) expires, as
    Unix time; load_cert_chain has already refused a file without one."""
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc.timestamp()


@dataclass
class ListenerRuntime:
    settings: ListenerSettings
    hostname: str  # the proxy's name in replies it writes itself
    upstream_name: str
    upstream: UpstreamSettings
    upstream_tls: ssl.SSLContext | None
    server_tls: ssl.SSLContext | None
    policy: PolicyEngine
    auth: AuthSettings
    throttle: AuthThrottle
    resolver: Resolver | None = None  # set when client names are looked up
    # Every configured upstream with its TLS context, by name: where a mail store
    # login may be routed (the `route` hook).
    upstreams: dict[str, tuple[UpstreamSettings, ssl.SSLContext | None]] = field(default_factory=dict)
    sessions: set[Any] = field(default_factory=set)  # open sessions, for shutdown
    clients: Counter[str] = field(default_factory=Counter)  # open sessions per address

    @property
    def name(self) -> str:
        return self.settings.name

    def admit(self, session: Any, address: str) -> str | None:
        """Take a new session in, or say why not (the text of a 421 greeting).
        Counted per process: each worker admits up to the limits."""
        settings = self.settings
        if len(self.sessions) >= settings.max_connections:
            reason, text = "total", "Too many connections"
        elif self.clients[address] >= settings.max_connections_per_client:
            reason, text = "per_client", "Too many connections from your address"
        else:
            self.sessions.add(session)
            self.clients[address] += 1
            return None
        metrics.child(metrics.connections_refused, settings.protocol, self.name, reason).inc()
        return text

    def release(self, session: Any, address: str) -> None:
        self.sessions.discard(session)
        self.clients[address] -= 1
        if self.clients[address] <= 0:
            del self.clients[address]
