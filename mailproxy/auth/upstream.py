"""The `upstream` credential backend: the upstream server checks the password.

No user database is needed in front of an existing server. The session's own upstream
session authenticates, so the upstream also knows the user for what follows (Dovecot's
submission requires it; XCLIENT LOGIN does not authenticate there). A session offers
that check as `session.upstream_login`; without it this backend has no opinion.
"""

from __future__ import annotations

from ..plugins import hookimpl


class UpstreamBackend:
    @hookimpl
    async def authenticate(self, session, username: str, password: str) -> bool | None:
        if session.upstream_login is None:
            return None
        # An upstream failure propagates: the policy engine counts it as a failed
        # backend, and the client is told to retry (454) instead of being told it is wrong.
        return await session.upstream_login(username, password)
