"""The SMTP DATA command as the proxy runs it.

The message is taken whole before the upstream hears DATA (see docs/architecture.md):
received up to <CR><LF>.<CR><LF> within the size limit, made safe (bare CR/LF, dot
stuffing), checked by the `smtp_data` hooks, then sent with DATA and its end marker.
The client's end-of-data reply is the upstream's; 250 only if the upstream said 250.
"""

from __future__ import annotations

import logging

from .. import metrics
from ..protocol.smtp import DataReceiver, ServerReply, header_block, make_reply, unstuff, wire_body
from ..verdict import Action, Verdict
from .upstream import UpstreamError

log = logging.getLogger("mailproxy.smtp")

GO_AHEAD = make_reply(354, "End data with <CR><LF>.<CR><LF>")


class DataCommand:
    """Mixed into the SMTP session; uses its I/O helpers and upstream."""

    async def smtp_DATA(self, argument: str) -> object | None:
        if argument:
            return await self._error(501, "5.5.4", "Syntax: DATA")
        if self.envelope.mail_from is None:
            return await self._error(503, "5.5.1", "Error: need MAIL command")
        if not self.envelope.rcpt_tos:
            return await self._error(554, "5.5.1", "Error: no valid recipients")
        # The message is taken whole before the upstream hears DATA: the data hooks can
        # refuse it without the upstream ever receiving part of it, and a slow client
        # cannot run into the upstream's timeout in the middle of its DATA.
        await self._write(GO_AHEAD.raw, 354, "proxy")
        return await self._receive_message()

    async def _receive_message(self) -> object | None:
        settings = self.runtime.settings
        receiver = DataReceiver(settings.max_message_size)
        done = receiver.feed(self._take_pending_input())
        keepalive = self.loop.time() + self.runtime.upstream.keepalive
        while not done:
            chunk = await self._receive()
            if not chunk:
                raise ConnectionResetError("client left during DATA")
            done = receiver.feed(chunk)
            if not done and self.loop.time() >= keepalive:
                await self._keep_upstream_alive()
                keepalive = self.loop.time() + self.runtime.upstream.keepalive
        self._inbuf = receiver.leftover
        metrics.child(metrics.message_bytes, settings.name).observe(receiver.size)
        if receiver.overflow:
            return await self._refuse_message(
                Verdict.reject(552, "5.3.4", "Message size exceeds fixed maximum message size")
            )
        wire = wire_body(receiver.body)
        envelope = self.envelope
        policy = self.runtime.policy
        if policy.has("smtp_data"):
            envelope.content = unstuff(wire)
            verdict = await policy.run("smtp_data", self.session, envelope, message=envelope.content)
            if verdict.action.is_refusal:
                return await self._refuse_message(verdict)
        parts = [wire, b".\r\n"]
        if envelope.added_headers:
            parts.insert(0, header_block(envelope.added_headers))
        try:
            reply = await self._deliver(parts)
        except UpstreamError as exc:
            # The message is not acknowledged; the client keeps it and retries.
            log.warning("upstream failed during DATA: %s", exc)
            self._upstream = None
            metrics.child(metrics.messages, settings.name, "tempfailed").inc()
            self._set_rset_state()
            await self._say(451, "4.3.0", "Upstream failure, message not accepted, try again later")
            return None
        outcome = "delivered" if reply.code == 250 else "rejected" if reply.code >= 500 else "tempfailed"
        metrics.child(metrics.messages, settings.name, outcome).inc()
        if reply.code == 250:
            self.session.transactions += 1
        log.info(
            "message from <%s> to %d recipient(s), %d bytes: upstream %s",
            envelope.mail_from, len(envelope.rcpt_tos), receiver.size, reply,
        )
        self._set_rset_state()
        await self._relay(reply)
        return None

    async def _deliver(self, parts: list[bytes]) -> ServerReply:
        """DATA to the upstream, then the message with its end marker. Returns the
        upstream's reply to end-of-data, or its refusal of DATA itself."""
        upstream = await self._upstream_ready()
        reply = await upstream.command(b"DATA\r\n", "DATA")
        if reply.code != 354:
            await self._reset_upstream()  # whatever state it kept
            return reply
        return await upstream.send(parts, "DATA_END")

    async def _keep_upstream_alive(self) -> None:
        """A NOOP while a slow client uploads, so the upstream's command timeout does
        not end the session it holds for us."""
        if self._upstream is not None and self._upstream.connected:
            await self._upstream.command(b"NOOP\r\n", "NOOP")

    async def _refuse_message(self, verdict: Verdict) -> object | None:
        """Answer end-of-data with a refusal. The upstream never heard DATA; its
        transaction is reset so the next one starts clean."""
        outcome = "rejected" if verdict.action is Action.REJECT else "tempfailed"
        metrics.child(metrics.messages, self.runtime.name, outcome).inc()
        await self._reset_transaction()
        await self._reset_upstream()
        return await self._enforce(verdict)
