"""The SMTP DATA command as the proxy runs it, in one of two ways.

Streaming (no enabled plugin implements `smtp_data`, and the listener's `data_mode`
is "stream"): DATA goes to the upstream at once, its 354 is relayed, and the message
passes through as it arrives, normalised (bare CR/LF, dot stuffing) and counted
against the size limit; memory stays bounded by the read and write buffers.

Whole (a data hook needs the message, or `data_mode = "whole"`): the proxy answers 354
itself and takes the message whole before the upstream hears DATA, so a hook can
refuse it without the upstream receiving any of it, and a slow client cannot run into
the upstream's timeout mid-DATA (the upstream gets a NOOP every `keepalive` seconds).

Either way the client's end-of-data reply is the upstream's: 250 only if the upstream
said 250 for this message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import metrics
from ..protocol.smtp import ServerReply, make_reply
from ..protocol.smtp_headers import HeaderFieldFilter, header_block
from ..protocol.events import CLOSED, NEED_DATA
from ..protocol.smtp_server import EndOfMessage, MessageData
from ..verdict import Action, Verdict
from .upstream import UpstreamConnection, UpstreamError

log = logging.getLogger("mailproxy.smtp")

GO_AHEAD = make_reply(354, "End data with <CR><LF>.<CR><LF>")
TOO_BIG = Verdict.reject(552, "5.3.4", "Message size exceeds fixed maximum message size")


class OutcomeUnknown(UpstreamError):
    """The whole message went out and no answer to its end came back: the upstream
    may or may not have taken it."""


class DataCommand:
    """Mixed into the SMTP session; uses its I/O helpers and upstream."""

    async def smtp_DATA(self, argument: str) -> object | None:
        if argument:
            return self._error(501, "5.5.4", "Syntax: DATA")
        if self.envelope.mail_from is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        if not self.envelope.rcpt_tos:
            return self._error(554, "5.5.1", "Error: no valid recipients")
        if self.runtime.settings.data_mode == "stream" and not self.runtime.policy.has("smtp_data"):
            return await self._stream_message()
        self._write(GO_AHEAD.raw, 354, "proxy")
        return await self._receive_whole_message()

    async def _read_message(self, stream: bool = False):
        """Read the client's message to its end marker and return the `EndOfMessage`.
        Streaming, the bytes of each read are collected (`_unsent`) and passed on
        before the next read, so a message that arrives in one read leaves with its end
        marker in one write. Postfix's deadline for DATA: the command timeout, plus a
        second for every `min_data_rate` bytes that arrived, so only a client slower
        than that runs out of time."""
        settings = self.runtime.settings
        machine = self.machine
        machine.start_message(settings.max_message_size, content=self.runtime.policy.has("smtp_data"), stream=stream)
        started, received, rate = self.loop.time(), 0, settings.min_data_rate
        while True:
            event = machine.next_event()
            if event is NEED_DATA:
                if self._unsent:
                    await self._pass_on()
                deadline = started + settings.command_timeout + received / rate if rate else None
                chunk = await self.receive(deadline)
                received += len(chunk)
                machine.receive_data(chunk)
            elif isinstance(event, MessageData):
                if self._header_filter is None:
                    self._unsent += event.pieces
                else:
                    self._unsent += [self._header_filter.feed(piece) for piece in event.pieces]
            elif isinstance(event, EndOfMessage):
                if self._header_filter is not None:
                    self._unsent.append(self._header_filter.finish())
                    self._header_filter = None
                metrics.child(metrics.message_bytes, settings.name).observe(event.message.size)
                return event.message
            elif event is CLOSED:
                raise ConnectionResetError("client left during DATA")

    async def _receive_whole_message(self) -> object | None:
        async with self._upstream_kept_alive():
            message = await self._read_message()
        if message.overflow:
            return await self._refuse_message(TOO_BIG)
        envelope = self.envelope
        policy = self.runtime.policy
        if policy.has("smtp_data"):
            envelope.content = message.content
            verdict = await policy.run("smtp_data", self.session, envelope, message=envelope.content)
            if verdict.action.is_refusal:
                return await self._refuse_message(verdict)
        if policy.acts:  # the score is final: the action stage
            verdict = policy.act(self.session, envelope)
            if verdict.action.is_refusal:
                return await self._refuse_message(verdict)
        fields = self._claimed_fields()
        body = message.body if fields is None else fields.feed(message.body) + fields.finish()
        parts = [body, b".\r\n"]
        if envelope.added_headers:
            parts.insert(0, header_block(envelope.added_headers))
        try:
            reply = await self._deliver(parts)
        except UpstreamError as exc:
            return self._delivery_failed(exc)
        return self._delivered(reply, message.size)

    def _claimed_fields(self) -> HeaderFieldFilter | None:
        """A filter that drops the client's own fields of the names the action stage
        writes on this session's messages (PolicyEngine.claimed_headers); None when it
        writes none."""
        claimed = self.runtime.policy.claimed_headers(self.session)
        return HeaderFieldFilter(claimed) if claimed else None

    async def _stream_message(self) -> object | None:
        """DATA to the upstream; its 354 relayed; the message passed on as it arrives.

        What the upstream must not take is cut off by dropping the connection before
        the end marker, which makes it discard the message: a message over the size
        limit, and a client that leaves or runs out of time. A failed upstream is
        noticed at the end, and the client told 451 once it has sent everything."""
        policy = self.runtime.policy
        if policy.acts:  # no data hook runs: the score is final, the action stage is now
            verdict = policy.act(self.session, self.envelope)
            if verdict.action.is_refusal:
                return await self._refuse_message(verdict)
        try:
            upstream, reply = await self._start_data()
        except UpstreamError as exc:
            return self._delivery_failed(exc)
        if reply.code != 354:
            return self._delivered(reply, 0)
        self._relay(reply)
        self._unsent = [header_block(self.envelope.added_headers)] if self.envelope.added_headers else []
        self._header_filter = self._claimed_fields()
        try:
            message = await self._read_message(stream=True)
        except BaseException:
            self.drop_upstream()  # no end marker: the upstream drops the message
            raise
        finally:
            unsent, self._unsent, self._header_filter = self._unsent, [], None
        if message.overflow:
            self.drop_upstream()
            return await self._refuse_message(TOO_BIG)
        try:
            reply = await self._finish(upstream, [*unsent, b".\r\n"])
        except UpstreamError as exc:
            return self._delivery_failed(exc)
        return self._delivered(reply, message.size)

    async def _pass_on(self) -> None:
        """Streaming: what arrived of the message so far to the upstream, waiting while
        the upstream is backed up. A failure is kept for the end of the message."""
        pieces, self._unsent = self._unsent, []
        upstream = self._upstream
        if upstream is None:
            return
        try:
            upstream.write(pieces, "DATA")
            await upstream.drain("DATA", upstream.settings.reply_timeout)
        except UpstreamError as exc:
            log.warning("upstream failed while taking the message: %s", exc)
            self.drop_upstream()

    def _delivered(self, reply: ServerReply, size: int) -> None:
        """The upstream's answer to the message, relayed."""
        envelope = self.envelope
        outcome = "delivered" if reply.code == 250 else "rejected" if reply.code >= 500 else "tempfailed"
        metrics.deferred(metrics.messages, self.runtime.name, outcome).inc()
        if reply.code == 250:
            self.session.transactions += 1
        log.info(
            "message from <%s> to %d recipient(s), %d bytes: upstream %s",
            envelope.mail_from, len(envelope.rcpt_tos), size, reply,
        )
        self.runtime.policy.transaction_ended(self.session, envelope, outcome, reply, "upstream")
        self._new_transaction()
        self._relay(reply)

    def _delivery_failed(self, exc: UpstreamError) -> None:
        """The message is not acknowledged; the client keeps it and retries."""
        self.drop_upstream()
        if not isinstance(exc, OutcomeUnknown):
            log.warning("upstream failed during DATA: %s", exc)
            outcome = "tempfailed"
        else:
            log.warning(
                "outcome unknown: the upstream did not answer the end of the message "
                "from <%s> (%s); it may have taken it, and the client will send it again",
                self.envelope.mail_from, exc,
            )
            outcome = "unknown"
        metrics.deferred(metrics.messages, self.runtime.name, outcome).inc()
        self.runtime.policy.transaction_ended(self.session, self.envelope, outcome, by="proxy")
        self._new_transaction()
        self._say(451, "4.3.0", "Upstream failure, message not accepted, try again later")

    async def _start_data(self) -> tuple[UpstreamConnection, ServerReply]:
        """DATA to the upstream; returns it with its 354, or with its 4xx/5xx, which is
        the answer to the message (the upstream's transaction is then reset).

        Only 354 starts a message; anything else (a 250 to DATA, say) would tell the
        client its message arrived when it did not: an UpstreamError.
        """
        upstream = await self._upstream_ready()
        reply = await upstream.command(b"DATA\r\n", "DATA")
        if reply.code >= 400:
            await self._reset_upstream()  # whatever state it kept
        elif reply.code != 354:
            raise upstream.fail("protocol", f"upstream answered DATA with {reply}")
        return upstream, reply

    async def _deliver(self, parts: list[bytes]) -> ServerReply:
        """DATA to the upstream, then the whole message with its end marker. Returns
        the upstream's reply to end-of-data, or its refusal of DATA itself."""
        upstream, reply = await self._start_data()
        return await self._finish(upstream, parts) if reply.code == 354 else reply

    async def _finish(self, upstream, parts: list[bytes]) -> ServerReply:
        """The rest of the message and its end marker; the upstream's answer to it."""
        if upstream is not self._upstream:
            raise UpstreamError("lost", "upstream went away while taking the message")
        if not self.client.connected:
            # Closed by a shutdown, or gone: it could not hear the reply and would send
            # the message again. Without its end marker the upstream discards it.
            self.drop_upstream()
            raise ConnectionResetError("client gone before the end of its message was sent")
        if upstream.spoke:
            # A reply nobody asked for would be taken as the answer to the message.
            raise upstream.fail("protocol", "upstream spoke while taking the message")
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
            metrics.deferred(metrics.messages, self.runtime.name, "unknown").inc()
            raise
        return final

    @contextlib.asynccontextmanager
    async def _upstream_kept_alive(self):
        """While a slow client uploads, a NOOP every `keepalive` seconds keeps the
        upstream session from timing out. A NOOP in flight is let finish, never cut,
        so the upstream conversation stays in step; a session that failed anyway is
        reopened (and the transaction replayed) before the message is sent.

        One timer per message, and a task only when a NOOP is due: most messages
        arrive well within the interval."""
        loop, interval = self.loop, self.runtime.upstream.keepalive
        noop: asyncio.Task | None = None
        stopped = False

        def due() -> None:
            nonlocal noop
            upstream = self._upstream
            if not stopped and upstream is not None and upstream.connected:
                noop = asyncio.ensure_future(send_noop(upstream))

        async def send_noop(upstream) -> None:
            nonlocal timer
            try:
                reply = await upstream.command(b"NOOP\r\n", "NOOP")
            except UpstreamError as exc:
                log.info("keepalive: upstream session lost (%s); will reconnect", exc)
                return
            if not 200 <= reply.code < 300:
                log.info("keepalive: upstream answered NOOP with %s; will reconnect", reply)
                upstream.abort()
            elif not stopped:
                timer = loop.call_later(interval, due)

        timer = loop.call_later(interval, due)
        try:
            yield
        except BaseException:
            # The session is ending (the client left, or ran out of time). A NOOP cut
            # off mid-reply would put the upstream conversation out of step: drop it.
            stopped = True
            timer.cancel()
            if noop is not None and not noop.done():
                noop.cancel()
                if self._upstream is not None:
                    self._upstream.abort()
            raise
        stopped = True
        timer.cancel()
        if noop is not None:
            await noop

    async def _refuse_message(self, verdict: Verdict) -> object | None:
        """Answer end-of-data (or DATA itself, refused by the score before a message
        streams) with a refusal. The upstream never heard DATA; its transaction is
        reset so the next one starts clean."""
        outcome = "rejected" if verdict.action is Action.REJECT else "tempfailed"
        metrics.deferred(metrics.messages, self.runtime.name, outcome).inc()
        by = "proxy" if verdict is TOO_BIG else "policy"
        self.runtime.policy.transaction_ended(self.session, self.envelope, outcome, verdict.reply, by)
        await self._reset_transaction()
        await self._reset_upstream()
        return self._enforce(verdict)
