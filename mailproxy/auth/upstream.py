"""The `upstream` credential backend: the upstream server checks the password.

No user database is needed in front of an existing server. Where the session is paired
with an upstream session (SMTP), that session authenticates, so the upstream also knows
the user for what follows (Dovecot's submission requires it; XCLIENT LOGIN does not
authenticate there). Otherwise a separate connection to the listener's upstream tries
AUTH PLAIN and closes.
"""

from __future__ import annotations

import logging

from ..config import Config
from ..plugins import hookimpl
from ..protocol.smtp import ServerReply
from ..proxy.upstream import UpstreamConnection, UpstreamError, client_tls_context

log = logging.getLogger("mailproxy.auth.upstream")


class UpstreamBackend:
    def __init__(self, config: Config) -> None:
        self._listeners = {listener.name: listener.upstream for listener in config.listeners}
        self._upstreams = config.upstreams
        self._tls = {name: client_tls_context(s) for name, s in config.upstreams.items()}

    @hookimpl
    async def authenticate(self, session, username: str, password: str) -> bool | None:
        if session.upstream_login is not None:
            return await session.upstream_login(username, password)
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
        return auth_outcome(reply)


def auth_outcome(reply: ServerReply) -> bool:
    """An upstream's answer to AUTH as valid or not; a 4xx means it could not tell.

    Any 2xx counts (RFC 4954 says 235; smtp-sink says 250).
    """
    if 200 <= reply.code < 300:
        return True
    if reply.code >= 500:
        return False
    raise UpstreamError("auth", f"upstream could not check the credentials: {reply}")
