"""The client session's side of its paired upstream session: opening it, reopening it
(replaying EHLO, XCLIENT, accepted credentials and the open transaction) after a
failure closed it, and forwarding commands to it.

Mixed into the SMTP session; uses its `session`, `runtime`, `_upstream`,
`_upstream_credentials` and `_transaction`.
"""

from __future__ import annotations

import logging
from typing import Awaitable

from ..protocol.esmtp import format_path_command, forwarded_parameters
from ..protocol.smtp import ServerReply
from .upstream import ClientFacts, UpstreamConnection, UpstreamError

log = logging.getLogger("mailproxy.upstream")


def auth_outcome(reply: ServerReply) -> bool:
    """An upstream's answer to AUTH as valid or not; a 4xx means it could not tell.

    Any 2xx counts (RFC 4954 says 235; smtp-sink says 250).
    """
    if 200 <= reply.code < 300:
        return True
    if reply.code >= 500:
        return False
    raise UpstreamError("auth", f"upstream could not check the credentials: {reply}")


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
        greeting, the client's EHLO, XCLIENT, credentials and the MAIL and RCPTs it
        already accepted are replayed, none of it shown. Any of that refused is an
        UpstreamError: the client was told those commands succeeded."""
        upstream = self._upstream
        if upstream is not None and (upstream.fresh or await upstream.usable()):
            return upstream
        greeting = await self._open_upstream()
        upstream = self._upstream
        if greeting.code != 220:
            upstream.abort()
            raise UpstreamError("greeting", f"upstream refused the new session: {greeting}")
        if self.session.host_name:
            reply = await upstream.greet(self._facts())
            if reply.code != 250:
                upstream.abort()
                raise UpstreamError("replay", f"upstream refused the replayed greeting: {reply}")
            if self._upstream_credentials is not None:
                reply = await upstream.authenticate(*self._upstream_credentials)
                if not auth_outcome(reply):
                    raise UpstreamError("auth", f"credentials no longer accepted: {reply}")
        for verb, address, params in self._transaction:
            reply = await self._send_path(upstream, verb, address, params)
            if not 200 <= reply.code < 300:
                upstream.abort()
                raise UpstreamError("replay", f"upstream refused the replayed {verb}: {reply}")
        return upstream

    async def _announce_login(self) -> None:
        """Tell the upstream who logged in (XCLIENT LOGIN), unless the upstream session
        itself authenticated: XCLIENT would start it over, logged out. A session that
        went away, or refuses, is dropped: the next command reopens it, and the replay
        carries the login."""
        upstream = self._upstream
        if self._upstream_credentials is not None or upstream is None:
            return
        try:
            if await upstream.usable():
                await upstream.identify(self._facts())
        except UpstreamError as exc:
            log.info("upstream session dropped after AUTH (%s); the next command reopens it", exc)
            upstream.abort()

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

    async def _forward_path(self, verb: str, address: str, params: dict) -> ServerReply:
        """MAIL or RCPT, with only the parameters the upstream advertised."""
        return await self._send_path(await self._upstream_ready(), verb, address, params)

    @staticmethod
    def _send_path(upstream: UpstreamConnection, verb: str, address: str, params: dict) -> Awaitable[ServerReply]:
        params = forwarded_parameters(verb, params, upstream.keywords)
        return upstream.command(format_path_command(verb, address, params) + b"\r\n", verb)
