"""The SMTP session's replies, relayed or the proxy's own, with their metrics.

Mixed into the SMTP session, a `ProxySession`; it sets the session's `_last_code`.
"""

from __future__ import annotations

from .. import metrics
from ..protocol.smtp import ServerReply, make_reply


class SmtpReplies:
    def _write(self, raw: bytes, code: int, origin: str) -> None:
        metrics.reply_counter("smtp", self.runtime.name, code, origin).inc()
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
        metrics.reply_counter("smtp", self.runtime.name, code, "proxy").inc()
        return make_reply(code, f"{enhanced} {self.hostname} {text}").raw

    def timeout_reply(self, idle: bool) -> bytes:
        text = "Idle timeout" if idle else "Timeout exceeded"
        return self._proxy_reply(421, "4.4.2", f"{text}, closing connection")

    def internal_error_reply(self) -> bytes:
        return self._proxy_reply(421, "4.3.0", "Internal error, closing connection")

    def refusal_reply(self, reason: str) -> bytes:
        return self._proxy_reply(421, "4.7.0", f"{reason}, try again later")

    def too_many_errors_reply(self) -> None:
        self._say(421, "4.7.0", f"{self.hostname} Error: too many errors, closing connection")
