"""The client session's side of its paired upstream session: opening it, reopening it
(replaying EHLO, XCLIENT and accepted credentials) after a failure closed it, and
forwarding commands to it.

Mixed into the SMTP session; uses its `session`, `runtime`, `_upstream` and
`_upstream_credentials`.
"""

from __future__ import annotations

from ..auth.upstream import auth_outcome
from ..protocol.smtp import ServerReply
from .upstream import ClientFacts, UpstreamConnection, UpstreamError


class UpstreamPairing:
    def _facts(self) -> ClientFacts:
        session = self.session
        return ClientFacts(
            session.client_address,
            session.client_port,
            session.host_name,
            session.username,
            session.extended_smtp,
            session.client_name,
        )

    async def _open_upstream(self) -> ServerReply:
        runtime = self.runtime
        self._upstream = UpstreamConnection(runtime.upstream_name, runtime.upstream, runtime.upstream_tls)
        return await self._upstream.open()

    async def _upstream_ready(self) -> UpstreamConnection:
        """The upstream session, reopened if an aborted message or a failure closed it:
        greeting, the client's EHLO and XCLIENT are replayed, none of it shown."""
        if self._upstream is not None and self._upstream.connected:
            return self._upstream
        greeting = await self._open_upstream()
        if greeting.code != 220:
            raise UpstreamError("greeting", f"upstream refused the new session: {greeting}")
        if self.session.host_name:
            await self._upstream.greet(self._facts())
            if self._upstream_credentials is not None:
                reply = await self._upstream.authenticate(*self._upstream_credentials)
                if not auth_outcome(reply):
                    raise UpstreamError("auth", f"credentials no longer accepted: {reply}")
        return self._upstream

    async def _login_upstream(self, username: str, password: str) -> bool | None:
        """The `upstream` credential backend's check, on this session's own upstream."""
        upstream = await self._upstream_ready()
        if "AUTH" not in upstream.keywords:
            return None
        valid = auth_outcome(await upstream.authenticate(username, password))
        if valid:
            self._upstream_credentials = (username, password)
        return valid

    async def _reset_upstream(self) -> None:
        """RSET at the upstream alone, where the proxy ended a transaction the upstream
        still holds; its reply is not the client's business."""
        if self._upstream is not None and self._upstream.connected:
            await self._upstream.command(b"RSET\r\n", "RSET")

    async def _forward(self, line: bytes, verb: str) -> ServerReply:
        upstream = await self._upstream_ready()
        return await upstream.command(line.rstrip(b"\r\n") + b"\r\n", verb)
