"""What every session of one listener shares: its settings, TLS contexts, upstream,
policy engine and auth throttle. Built once at start-up."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

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
    return context


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
    sessions: set[Any] = field(default_factory=set)  # open sessions, for shutdown

    @property
    def name(self) -> str:
        return self.settings.name
