"""The `upstream` credential backend: the upstream server checks the password.

For a session on listener L, the proxy opens a separate connection to L's upstream and
tries AUTH PLAIN there. No user database is needed in front of an existing server.
"""

from __future__ import annotations

import logging

from ..config import Config
from ..plugins import hookimpl
from ..proxy.upstream import UpstreamConnection, client_tls_context

log = logging.getLogger("mailproxy.auth.upstream")


class UpstreamBackend:
    def __init__(self, config: Config) -> None:
        self._listeners = {listener.name: listener.upstream for listener in config.listeners}
        self._upstreams = config.upstreams
        self._tls = {name: client_tls_context(s) for name, s in config.upstreams.items()}

    @hookimpl
    async def authenticate(self, session, username: str, password: str) -> bool | None:
        name = self._listeners.get(session.listener)
        if name is None:
            return None
        connection = UpstreamConnection(name, self._upstreams[name], self._tls[name])
        # An UpstreamError propagates: the policy engine counts it as a failed backend,
        # and the client is told to retry (454) instead of being told it is wrong.
        try:
            greeting = await connection.open()
            if greeting.code != 220:
                return None
            await connection.ehlo(f"[{session.client_address or '127.0.0.1'}]")
            if "AUTH" not in connection.keywords:
                log.warning("upstream %s offers no AUTH; cannot check credentials", name)
                return None
            reply = await connection.authenticate(username, password)
        finally:
            await connection.quit()
        if reply.code == 235:
            return True
        return False if reply.code == 535 or reply.code >= 500 else None
