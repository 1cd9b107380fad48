"""The action stage: what a message's total score leads to, in Rspamd's terms, and the
header lines that say so, under SpamAssassin's names.

The total is the session's points plus the transaction's. From the highest threshold
down: at `reject_score` a 5xx, at `tempfail_score` a 4xx, at `add_header_score` the
message is delivered with `X-Spam-Flag: YES`; below them all, "no action". A threshold
left unset never applies. The policy engine holds the total against the thresholds
after each phase that scored and once more when the score is final (policy.py); this
module only decides and words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .verdict import Action, Reply, Verdict

NO_ACTION, ADD_HEADER, TEMPFAIL, REJECT = "no action", "add_header", "tempfail", "reject"

# A score refusal: the reject names the score and its top symbols (built on this one);
# the tempfail, which the sending server retries unread, says nothing more.
SCORE_REJECT = Verdict.reject(550, "5.7.1", "Message scored as spam")
SCORE_TEMPFAIL = Verdict.tempfail(451, "4.7.1", "Message scored as suspicious, try again later")

REPLY_SYMBOLS = 3  # the symbols a reject reply names
SYMBOL_LENGTH = 64  # characters of one symbol shown in a reply or a header
HEADER_WIDTH = 78  # where header lines are folded (RFC 5322 2.1.1)

# Symbols are a plugin's words: in a reply or a header only printable ASCII, and none of
# the characters that separate them there.
_UNSHOWABLE = re.compile(r"[^\x21-\x7e]|[(),;]")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """One `[policy]` (or `[policy.authenticated]`) section's score settings."""

    reject: float | None = None
    tempfail: float | None = None
    add_header: float | None = None
    spam_headers: bool = False

    @classmethod
    def of(cls, settings: Any) -> Thresholds:
        """From a `ScoreSettings`; `spam_headers` unset means on when the section tags
        (`add_header_score`), so that a section that only refuses leaves the messages
        it lets through as they were."""
        headers = settings.spam_headers
        if headers is None:
            headers = settings.add_header_score is not None
        return cls(settings.reject_score, settings.tempfail_score, settings.add_header_score, headers)

    @property
    def can_refuse(self) -> bool:
        return self.reject is not None or self.tempfail is not None

    @property
    def acts(self) -> bool:
        """Whether a message's score can change anything of it here."""
        return self.can_refuse or self.add_header is not None or self.spam_headers

    def action(self, score: float) -> str:
        if self.reject is not None and score >= self.reject:
            return REJECT
        if self.tempfail is not None and score >= self.tempfail:
            return TEMPFAIL
        if self.add_header is not None and score >= self.add_header:
            return ADD_HEADER
        return NO_ACTION

    def limit(self, action: str) -> float | None:
        return {REJECT: self.reject, TEMPFAIL: self.tempfail, ADD_HEADER: self.add_header}.get(action)

    @property
    def required(self) -> float | None:
        """The score that makes a message spam, as X-Spam-Status says `required=`: the
        tag threshold, or else the lowest refusal."""
        for limit in (self.add_header, self.tempfail, self.reject):
            if limit is not None:
                return limit
        return None

    def as_dict(self) -> dict[str, float]:
        """The thresholds that are set, under their configuration keys."""
        named = {"reject_score": self.reject, "tempfail_score": self.tempfail, "add_header_score": self.add_header}
        return {key: limit for key, limit in named.items() if limit is not None}


def total_symbols(*scopes: Any) -> dict[str, float]:
    """Points per symbol over the Session and Envelope given (None skipped)."""
    totals: dict[str, float] = {}
    for scope in scopes:
        if scope is not None:
            for entry in scope.score_entries:
                totals[entry.symbol] = totals.get(entry.symbol, 0.0) + entry.points
    return totals


def ranked(symbols: dict[str, float]) -> list[tuple[str, float]]:
    """Highest points first; equal points by name, so the order never depends on chance."""
    return sorted(symbols.items(), key=lambda item: (-item[1], item[0]))


def format_points(value: float) -> str:
    """Points as people write them: 3.5, 12.0, 0.25, -1.0."""
    text = f"{value:.2f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return "0.0" if text == "-0.0" else text


def showable(symbol: str) -> str:
    return _UNSHOWABLE.sub("_", symbol[:SYMBOL_LENGTH]) or "_"


def refusal(action: str, score: float, symbols: dict[str, float]) -> Verdict:
    """The refusal for a score at or above `reject_score` (REJECT) or `tempfail_score`:
    `550 5.7.1 Message scored as spam (score 12.0; DNSBL_LISTED, SPF_FAIL, ...)`."""
    if action == TEMPFAIL:
        return SCORE_TEMPFAIL
    named = [showable(symbol) for symbol, points in ranked(symbols) if points > 0]
    shown = ", ".join(named[:REPLY_SYMBOLS]) + (", ..." if len(named) > REPLY_SYMBOLS else "")
    why = f"score {format_points(score)}; {shown}" if shown else f"score {format_points(score)}"
    base = SCORE_REJECT.reply
    return Verdict(Action.REJECT, Reply(base.code, base.enhanced, f"{base.text} ({why})"), reason=base.text)


def folded(name: str, items: list[str], separator: str) -> str:
    """`items` joined by `separator` ("," or ";") as the value of header `name`, folded
    before an item that would take a line past HEADER_WIDTH."""
    pieces = [item + separator for item in items[:-1]] + items[-1:]
    lines = [""]
    width = len(name) + 2  # "Name: "
    for piece in pieces:
        if lines[-1] and width + 1 + len(piece) > HEADER_WIDTH:
            lines.append(piece)
            width = 1 + len(piece)  # the folded line starts with a space
            continue
        if lines[-1]:
            lines[-1] += " "
            width += 1
        lines[-1] += piece
        width += len(piece)
    return "\r\n ".join(lines)


# The fields the action stage writes; a client's own are dropped where it writes them.
SPAM_HEADER_NAMES = ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", "X-Spam-Symbols")
TRACE_HEADER_NAME = "X-Mailproxy-Trace"


def spam_headers(thresholds: Thresholds, score: float, symbols: dict[str, float]) -> list[tuple[str, str]]:
    """The header lines for a message that is delivered with this score: X-Spam-Flag
    at the tag threshold, and with `spam_headers` X-Spam-Score, X-Spam-Status and
    X-Spam-Symbols (when a plugin gave one), as SpamAssassin writes them."""
    headers = []
    flagged = thresholds.add_header is not None and score >= thresholds.add_header
    if flagged:
        headers.append(("X-Spam-Flag", "YES"))
    if thresholds.spam_headers:
        shown = format_points(score)
        status = f"{'Yes' if flagged else 'No'}, score={shown}"
        if thresholds.required is not None:
            status += f" required={format_points(thresholds.required)}"
        headers += [("X-Spam-Score", shown), ("X-Spam-Status", status)]
        if symbols:
            items = [f"{showable(symbol)}({format_points(points)})" for symbol, points in ranked(symbols)]
            headers.append(("X-Spam-Symbols", folded("X-Spam-Symbols", items, ",")))
    return headers
