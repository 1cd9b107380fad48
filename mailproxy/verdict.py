"""What a policy hook may answer, independent of the protocol it runs in.

A `Verdict` says what to do with the command; its optional `Reply` says what to tell the
client. The protocol session renders the reply in its own syntax (SMTP `550 5.7.1 text`,
POP3 `-ERR text`, IMAP `NO text`), so plugins stay protocol-neutral.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

__all__ = ["Action", "Reply", "Verdict"]

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


class Action(enum.Enum):
    CONTINUE = "continue"  # no opinion; the next plugin runs
    ACCEPT = "accept"  # allow this command; later plugins of the phase are skipped
    REJECT = "reject"  # permanent refusal (5xx)
    TEMPFAIL = "tempfail"  # temporary refusal (4xx); the client retries
    DISCONNECT = "disconnect"  # reply, then close the session
    SCORE = "score"  # add points to the transaction's score; the next plugin runs

    @property
    def is_refusal(self) -> bool:
        return self in (Action.REJECT, Action.TEMPFAIL, Action.DISCONNECT)


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to the client: SMTP code, optional enhanced status code, text lines."""

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code must be 200..599, got {self.code}")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced code {self.enhanced!r} does not fit {self.code}")
        if "\r" in self.text or "\0" in self.text:
            raise ValueError("reply text must not contain CR or NUL")

    def __str__(self) -> str:
        """The first line of the SMTP wire form, as logs quote a reply."""
        return self.lines()[0]

    def lines(self) -> list[str]:
        """The SMTP wire form, one string per line without CRLF."""
        texts = self.text.split("\n") or [""]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        last = len(texts) - 1
        return [
            f"{self.code}{' ' if i == last else '-'}{prefix}{line}".rstrip()
            for i, line in enumerate(texts)
        ]


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reply: Reply | None = None
    symbol: str | None = None  # for SCORE: the rule that matched
    points: float = 0.0  # for SCORE
    reason: str = ""  # logged, never sent

    # Constructors read like the decision they express.

    @classmethod
    def cont(cls) -> Verdict:
        return _CONTINUE

    @classmethod
    def accept(cls, reason: str = "") -> Verdict:
        return cls(Action.ACCEPT, reason=reason)

    @classmethod
    def reject(
        cls, code: int = 550, enhanced: str | None = "5.7.1", text: str = "Rejected by policy"
    ) -> Verdict:
        return cls(Action.REJECT, Reply(code, enhanced, text), reason=text)

    @classmethod
    def tempfail(
        cls,
        code: int = 451,
        enhanced: str | None = "4.7.1",
        text: str = "Temporarily refused by policy, try again later",
    ) -> Verdict:
        return cls(Action.TEMPFAIL, Reply(code, enhanced, text), reason=text)

    @classmethod
    def disconnect(
        cls, code: int = 421, enhanced: str | None = "4.7.0", text: str = "Closing connection"
    ) -> Verdict:
        return cls(Action.DISCONNECT, Reply(code, enhanced, text), reason=text)

    @classmethod
    def score(cls, symbol: str, points: float, reason: str = "") -> Verdict:
        return cls(Action.SCORE, symbol=symbol, points=float(points), reason=reason)

    def as_greeting(self, hostname: str) -> Verdict:
        """This refusal in place of an SMTP greeting, where only 421 and 554 may stand
        (RFC 5321 3.8, 4.3.2): a temporary refusal becomes `421 <hostname> text`, a
        permanent one `554 text`; the plugin's enhanced code and text are kept. Either
        way the session ends."""
        reply = self.reply or (Verdict.reject() if self.action is Action.REJECT else Verdict.tempfail()).reply
        if reply.code >= 500:
            code, enhanced, text = 554, "5.3.0", reply.text
        else:
            code, enhanced, text = 421, "4.3.0", f"{hostname} {reply.text}"
        if reply.enhanced and reply.enhanced[0] == enhanced[0]:
            enhanced = reply.enhanced
        return Verdict(Action.DISCONNECT, Reply(code, enhanced, text), reason=self.reason)

    def __post_init__(self) -> None:
        if self.action.is_refusal and self.reply is None:
            # A refusal always says something: without a reply the client would wait
            # for one until its timeout.
            object.__setattr__(self, "reply", _DEFAULT_REPLIES[self.action])
        if self.action is Action.REJECT and self.reply and self.reply.code < 500:
            raise ValueError("a reject needs a 5xx reply")
        if self.action is Action.TEMPFAIL and self.reply and not 400 <= self.reply.code < 500:
            raise ValueError("a tempfail needs a 4xx reply")
        if not math.isfinite(self.points):
            # NaN would make every threshold comparison false and poison the score sums.
            raise ValueError(f"points must be a finite number, not {self.points}")


_DEFAULT_REPLIES = {
    Action.REJECT: Reply(550, "5.7.1", "Rejected by policy"),
    Action.TEMPFAIL: Reply(451, "4.7.1", "Temporarily refused by policy, try again later"),
    Action.DISCONNECT: Reply(421, "4.7.0", "Closing connection"),
}
_CONTINUE = Verdict(Action.CONTINUE)
