"""The why-trace: what every plugin said about a message, for the administrator who
asks why it was refused, and for the plugins that run later.

The policy engine records each verdict other than `continue` as a `TraceEntry` on the
Session or the Envelope, where its scores go too (observe-mode ones marked). When a
transaction ends, one line goes to the logger `mailproxy.trace`: its message is a JSON
object, all ASCII, so the log formatter's escaping leaves it valid JSON and everything
after `mailproxy.trace: ` parses:

    {"session": "1f2e3d4c5b", "client": "192.0.2.1", "helo": "client.test",
     "from": "a@example.org", "rcpts": 1, "outcome": "rejected", "by": "score",
     "reply": "550 5.7.1 Message scored as spam (score 12.0; DNSBL, SPF_FAIL)",
     "action": "reject", "score": 12.0, "thresholds": {"reject_score": 10.0},
     "entries": [{"plugin": "dnsbl", "hook": "smtp_connect", "action": "score",
                  "symbol": "DNSBL", "points": 8.0, "ms": 2.41}, ...]}

(one line in the log). `outcome` says what became of the message: "delivered",
"rejected", "tempfailed", "unknown" (the upstream never answered its end), "reset" (RSET,
a new EHLO, STARTTLS) or "abandoned" (the session ended in the transaction). `by` says
who gave the final reply: "plugin:NAME", "score" (a `[policy]` threshold), "upstream",
"proxy" (its own limits and failures) or "client" (a reset). `action` is the policy's
decision: the refusing verdict's action when the policy refused, otherwise what the
score came to ("no action", "add_header", or a refusal that refused RCPTs only).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .actions import Thresholds, format_points, showable
from .session import POLICY, TraceEntry

log = logging.getLogger("mailproxy.trace")

REFUSALS = frozenset({"reject", "tempfail", "disconnect"})


def outcome_of(reply: Any) -> str:
    return "delivered" if reply.code < 400 else "tempfailed" if reply.code < 500 else "rejected"


def entries_of(session: Any, envelope: Any) -> tuple[TraceEntry, ...]:
    """What was said about the client, then about the message."""
    return session.trace + envelope.trace if envelope is not None else session.trace


def decider(entries: tuple[TraceEntry, ...]) -> TraceEntry | None:
    """The refusal the policy enforced last: the one that answered a refused command."""
    for entry in reversed(entries):
        if entry.action in REFUSALS and not entry.observed:
            return entry
    return None


def entry_record(entry: TraceEntry) -> dict[str, Any]:
    record: dict[str, Any] = {"plugin": entry.plugin, "hook": entry.hook, "action": entry.action}
    if entry.action == "score":
        record["symbol"] = entry.symbol
        record["points"] = entry.points
    if entry.reason:
        record["reason"] = entry.reason
    record["ms"] = float(f"{entry.ms:.4g}")
    if entry.observed:
        record["observe"] = True
    return record


def line(
    session: Any,
    envelope: Any,
    thresholds: Thresholds,
    outcome: str,
    reply: Any = None,
    by: str | None = None,
    sender: str | None = None,
) -> str:
    """The trace line of a transaction (`envelope`), or of a session refused at connect
    (`envelope` None). `by="policy"` names the plugin or threshold that refused."""
    entries = entries_of(session, envelope)
    total = session.score + (envelope.score if envelope is not None else 0.0)
    record: dict[str, Any] = {"session": session.id, "client": session.client_address}
    if session.host_name:
        record["helo"] = session.host_name
    if session.authenticated:
        record["user"] = session.username
    if envelope is not None:
        record["from"] = envelope.mail_from if sender is None else sender
        record["rcpts"] = len(envelope.rcpt_tos)
    record["outcome"] = outcome
    action = thresholds.action(total)
    refused_by = decider(entries) if by == "policy" else None
    if refused_by is not None:
        by, action = ("score" if refused_by.plugin == POLICY else f"plugin:{refused_by.plugin}"), refused_by.action
    if by:
        record["by"] = by
    if reply is not None:
        record["reply"] = str(reply)
    record["action"] = action
    record["score"] = round(total, 2)
    record["thresholds"] = thresholds.as_dict()
    record["entries"] = [entry_record(entry) for entry in entries]
    # ASCII only (json's default): every control character is escaped as JSON escapes
    # it, so the log formatter's own escaping finds nothing to change.
    return json.dumps(record, separators=(",", ":"))


def header_items(session_id: str, score: float, entries: tuple[TraceEntry, ...]) -> list[str]:
    """The items of an X-Mailproxy-Trace header: the session id (to find its log
    lines), the score, and per entry `plugin/hook SYMBOL(points) 1.2ms` or
    `plugin/hook action 1.2ms`, marked `observe` when not enforced. No reasons: they
    may quote the client, and the header is read by the recipient."""
    items = [f"session={session_id}", f"score={format_points(score)}"]
    for entry in entries:
        said = f"{showable(entry.symbol)}({format_points(entry.points)})" if entry.action == "score" else entry.action
        item = f"{showable(entry.plugin)}/{entry.hook.removeprefix('smtp_')} {said} {entry.ms:.1f}ms"
        items.append(item + " observe" if entry.observed else item)
    return items
