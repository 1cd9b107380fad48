"""size: message size and recipient-count limits, as a policy.

    [plugin.size]
    max_message_size = 10485760   # bytes; checked at MAIL (SIZE=) and at end-of-data
    max_recipients = 50           # per message

The listener's own `max_message_size` and `max_recipients` are hard protocol bounds;
this plugin is the policy layer on top, so it can run in observe mode first.
"""

from __future__ import annotations

from pydantic import Field

from mailproxy import Envelope, PluginSettings, Verdict, hookimpl
from mailproxy.protocol.smtp import parse_size

TOO_BIG = Verdict.reject(552, "5.3.4", "Message size exceeds the limit")
TOO_MANY = Verdict.tempfail(452, "4.5.3", "Too many recipients")


class Plugin:
    class Config(PluginSettings):
        max_message_size: int = Field(10 * 1024 * 1024, ge=1)
        max_recipients: int = Field(100, ge=1)

    def __init__(self, settings: Config, context) -> None:
        self._max_size = settings.max_message_size
        self._max_rcpt = settings.max_recipients

    @hookimpl
    def smtp_mail(self, params: dict) -> Verdict | None:
        declared = parse_size(params.get("SIZE"))
        if declared is not None and declared > self._max_size:
            return TOO_BIG
        return None

    @hookimpl
    def smtp_rcpt(self, envelope: Envelope) -> Verdict | None:
        if len(envelope.rcpt_tos) >= self._max_rcpt:
            return TOO_MANY
        return None

    @hookimpl
    def smtp_data(self, message: bytes) -> Verdict | None:
        if len(message) > self._max_size:
            return TOO_BIG
        return None
