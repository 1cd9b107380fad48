"""The SMTP DATA command as the proxy runs it.

The message is taken whole before the upstream hears DATA (see docs/architecture.md):
received up to <CR><LF>.<CR><LF> within the size limit, made safe (bare CR/LF, dot
stuffing), checked by the `smtp_data` hooks, then sent with DATA and its end marker.
The client's end-of-data reply is the upstream's; 250 only if the upstream said 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import metrics
from ..protocol.smtp import ServerReply, WireReceiver, header_block, make_reply
from ..verdict import Action, Verdict
from .upstream import UpstreamError

log = logging.getLogger("mailproxy.smtp")

GO_AHEAD = make_reply(354, "End data with <CR><LF>.<CR><LF>")


class OutcomeUnknown(UpstreamError):
    """The whole message went out and no answer to its end came back: the upstream
    may or may not have taken it."""


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
        # Normalised as it arrives; the limit applies to what will be forwarded.
        receiver = WireReceiver(settings.max_message_size, content=self.runtime.policy.has("smtp_data"))
        done = receiver.feed(self._take_pending_input())
        if not done:
            async with self._upstream_kept_alive():
                await self._receive_rest(receiver)
        self._inbuf = receiver.leftover
        metrics.child(metrics.message_bytes, settings.name).observe(receiver.size)
        if receiver.overflow:
            return await self._refuse_message(
                Verdict.reject(552, "5.3.4", "Message size exceeds fixed maximum message size")
            )
        wire = receiver.body
        envelope = self.envelope
        policy = self.runtime.policy
        if policy.has("smtp_data"):
            envelope.content = receiver.content
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
            self._upstream = None
            if not isinstance(exc, OutcomeUnknown):
                log.warning("upstream failed during DATA: %s", exc)
                outcome = "tempfailed"
            else:
                log.warning(
                    "outcome unknown: the upstream did not answer the end of the message "
                    "from <%s> (%s); it may have taken it, and the client will send it again",
                    envelope.mail_from, exc,
                )
                outcome = "unknown"
            metrics.child(metrics.messages, settings.name, outcome).inc()
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

    async def _receive_rest(self, receiver: WireReceiver) -> None:
        """Read until the end of the message. Postfix's deadline for DATA: the command
        timeout, plus a second for every `min_data_rate` bytes that arrived, so only a
        client slower than that runs out of time."""
        settings = self.runtime.settings
        started, received, rate = self.loop.time(), 0, settings.min_data_rate
        done = False
        while not done:
            deadline = started + settings.command_timeout + received / rate if rate else None
            chunk = await self._receive(deadline)
            if not chunk:
                raise ConnectionResetError("client left during DATA")
            received += len(chunk)
            done = receiver.feed(chunk)

    async def _deliver(self, parts: list[bytes]) -> ServerReply:
        """DATA to the upstream, then the message with its end marker. Returns the
        upstream's reply to end-of-data, or its refusal of DATA itself.

        Only 354 starts the message. A 4xx/5xx is the end-of-data reply; anything else
        (a 250 to DATA, say) would tell the client its message arrived when it did not.
        """
        upstream = await self._upstream_ready()
        reply = await upstream.command(b"DATA\r\n", "DATA")
        if reply.code == 354:
            self.delivering = True  # until the reply has gone to the client
            try:
                final = await upstream.send(parts, "DATA_END", self.runtime.upstream.data_timeout)
                if 300 <= final.code < 400:  # no answer to a message: was it taken?
                    detail = f"upstream answered the end of the message with {final}"
                    raise upstream.fail("protocol", detail, unanswered=True)
            except UpstreamError as exc:
                if exc.unanswered:
                    raise OutcomeUnknown(exc.stage, str(exc)) from exc
                raise
            except asyncio.CancelledError:
                log.warning("outcome unknown: stopped while the upstream had the message from <%s>",
                            self.envelope.mail_from)
                metrics.child(metrics.messages, self.runtime.name, "unknown").inc()
                raise
            return final
        if reply.code >= 400:
            await self._reset_upstream()  # whatever state it kept
            return reply
        raise upstream.fail("protocol", f"upstream answered DATA with {reply}")

    @contextlib.asynccontextmanager
    async def _upstream_kept_alive(self):
        """While a slow client uploads, a NOOP every `keepalive` seconds keeps the
        upstream session from timing out. A NOOP in flight is let finish, never cut,
        so the upstream conversation stays in step; a session that failed anyway is
        reopened (and the transaction replayed) before the message is sent."""
        stop = asyncio.Event()
        in_flight = False

        async def keep_alive() -> None:
            nonlocal in_flight
            interval = self.runtime.upstream.keepalive
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                    return
                upstream = self._upstream
                if upstream is None or not upstream.connected:
                    return
                in_flight = True
                try:
                    reply = await upstream.command(b"NOOP\r\n", "NOOP")
                except UpstreamError as exc:
                    log.info("keepalive: upstream session lost (%s); will reconnect", exc)
                    return
                finally:
                    in_flight = False
                if not 200 <= reply.code < 300:
                    log.info("keepalive: upstream answered NOOP with %s; will reconnect", reply)
                    upstream.abort()
                    return

        task = asyncio.ensure_future(keep_alive())
        try:
            yield
        except BaseException:
            # The session is ending (the client left, or ran out of time). A NOOP cut
            # off mid-reply would put the upstream conversation out of step: drop it.
            if in_flight and self._upstream is not None:
                self._upstream.abort()
            task.cancel()
            raise
        stop.set()
        await task

    async def _refuse_message(self, verdict: Verdict) -> object | None:
        """Answer end-of-data with a refusal. The upstream never heard DATA; its
        transaction is reset so the next one starts clean."""
        outcome = "rejected" if verdict.action is Action.REJECT else "tempfailed"
        metrics.child(metrics.messages, self.runtime.name, outcome).inc()
        await self._reset_transaction()
        await self._reset_upstream()
        return await self._enforce(verdict)
