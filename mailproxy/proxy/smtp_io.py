"""The SMTP session's side of the core: reading commands through the sans-IO machine,
writing replies (relayed or the proxy's own) with their metrics, and the error budget.

Mixed into the SMTP session, a `ProxySession`; it uses the session's `machine`,
`runtime`, `_errors` and `_last_code`.
"""

from __future__ import annotations

import asyncio
import logging

from .. import metrics
from ..protocol.smtp import ServerReply, make_reply
from ..protocol.events import NEED_DATA

log = logging.getLogger("mailproxy.smtp")


class SmtpReplies:
    def _write(self, raw: bytes, code: int, origin: str) -> None:
        metrics.reply_counter("smtp", code, origin).inc()
        self._last_code = code
        self.write(raw)

    def _relay(self, reply: ServerReply) -> None:
        self._write(reply.raw, reply.code, "upstream")

    def _say(self, code: int, enhanced: str, text: str) -> None:
        self._write(make_reply(code, f"{enhanced} {text}").raw, code, "proxy")

    def _error(self, code: int, enhanced: str, text: str) -> None:
        """A client mistake, answered; the command loop counts it (`_count_error`)."""
        self._say(code, enhanced, text)

    # --- the core's protocol replies -------------------------------------------------------

    def _proxy_reply(self, code: int, enhanced: str, text: str) -> bytes:
        metrics.reply_counter("smtp", code, "proxy").inc()
        return make_reply(code, f"{enhanced} {self.hostname} {text}").raw

    def timeout_reply(self, idle: bool) -> bytes:
        text = "Idle timeout" if idle else "Timeout exceeded"
        return self._proxy_reply(421, "4.4.2", f"{text}, closing connection")

    def internal_error_reply(self) -> bytes:
        return self._proxy_reply(421, "4.3.0", "Internal error, closing connection")

    def refusal_reply(self, reason: str) -> bytes:
        return self._proxy_reply(421, "4.7.0", f"{reason}, try again later")

    # --- reading -----------------------------------------------------------------------------

    async def _next_event(self):
        """The client's next command (or bad line, or CLOSED), reading as needed within
        the deadline for a whole command line."""
        machine = self.machine
        event = machine.next_event()
        deadline = self.loop.time() + self.runtime.settings.command_timeout
        if event is not NEED_DATA:
            if self.replies_backlogged:  # taking its replies is part of the next command
                await self.push_replies(deadline)
            return event
        while event is NEED_DATA:
            machine.receive_data(await self.receive(deadline))
            event = machine.next_event()
        return event

    async def _count_error(self) -> bool:
        """A command ended in a 4xx or 5xx: count it against the session's budget.
        From the soft limit on the reply is held back `error_sleep` seconds; at the
        hard limit the session ends (True)."""
        settings = self.runtime.settings
        self._errors += 1
        if self._errors >= settings.max_errors:
            log.info("%d errors, closing", self._errors)
            self._say(421, "4.7.0", f"{self.hostname} Error: too many errors, closing connection")
            return True
        if self._errors >= settings.soft_error_limit and settings.error_sleep:
            await asyncio.sleep(settings.error_sleep)
        return False

