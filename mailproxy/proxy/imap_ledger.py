"""What became of the IMAP commands a session forwarded: which are outstanding, the facts
their untagged responses gave (how many messages a mailbox holds, how many were fetched
or expunged), and the selected mailbox. No I/O; the session feeds it.

Untagged responses carry no tag: they are counted against the oldest outstanding command
(an unsolicited EXISTS during IDLE goes to the IDLE). Under pipelining a server may
interleave the responses of several commands, so the counts are then approximate (RFC
3501 5.5 lets a server hold ambiguous results back, not always).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..protocol.imap import astring
from ..protocol.imap_mailbox import decode_mailbox_name
from ..protocol.imap_responses import Tagged, Untagged
from ..session import Session


@dataclass(slots=True)
class Completion:
    tag: str
    verb: str
    args: tuple
    status: str = ""  # OK, NO or BAD
    facts: dict[str, int | bool] = field(default_factory=dict)
    # The upstream has the whole command (its literals and last line; IDLE: its DONE)
    # and owes the answer, since then (perf_counter).
    owed: bool = False
    sent_at: float = field(default_factory=time.perf_counter)

    @property
    def round_trip(self) -> float:
        """Seconds from the command's last byte to its tagged answer (once completed):
        the upstream's time, not the client's upload."""
        return time.perf_counter() - self.sent_at


class CommandLedger:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._outstanding: dict[str, Completion] = {}  # by tag, oldest first

    def sent(self, tag: str, verb: str, args: tuple) -> None:
        self._outstanding[tag] = Completion(tag, verb, args)

    def owed(self, tag: str) -> None:
        """The upstream now has all of the command `tag`: its answer is owed."""
        completion = self._outstanding.get(tag)
        if completion is not None and not completion.owed:
            completion.owed, completion.sent_at = True, time.perf_counter()

    @property
    def outstanding(self) -> bool:
        """Some forwarded command has not had its tagged answer yet."""
        return bool(self._outstanding)

    @property
    def answer_owed(self) -> bool:
        """Some command is with the upstream whole, its answer not yet in."""
        return any(completion.owed for completion in self._outstanding.values())

    def in_use(self, tag: str) -> bool:
        """A forwarded command with this tag is still open: a second one would make
        the answers ambiguous."""
        return tag in self._outstanding

    def untagged(self, event: Untagged) -> None:
        if not self._outstanding:
            return
        facts = next(iter(self._outstanding.values())).facts
        kind = event.kind
        if kind == "EXISTS":
            facts["exists"] = event.number
        elif kind == "FETCH":
            facts["fetched"] = facts.get("fetched", 0) + 1
        elif kind == "EXPUNGE":
            facts["expunged"] = facts.get("expunged", 0) + 1
        elif kind == "VANISHED" and b"(EARLIER)" not in event.raw.upper():
            facts["expunged"] = facts.get("expunged", 0) + _set_size(event.raw)
        elif kind == "OK" and event.code in ("READ-ONLY", "READ-WRITE"):
            facts["read_only"] = event.code == "READ-ONLY"

    def completed(self, event: Tagged) -> Completion | None:
        """The command this tagged response ends, if the session forwarded it."""
        completion = self._outstanding.pop(event.tag, None)
        if completion is None:
            return None
        completion.status = event.status
        verb = completion.verb
        if verb in ("SELECT", "EXAMINE"):
            # A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
            name = astring(completion.args[0]) if event.status == "OK" and completion.args else None
            self.session.mailbox = decode_mailbox_name(name) if name is not None else None
            code = (event.code or "").upper()
            if event.status == "OK":
                completion.facts["read_only"] = verb == "EXAMINE" or code.startswith("READ-ONLY")
        elif verb in ("CLOSE", "UNSELECT") and event.status == "OK":
            self.session.mailbox = None
        return completion


def _set_size(raw: bytes) -> int:
    """How many UIDs a VANISHED response's set names (`* VANISHED 1:3,7` is 4)."""
    words = raw.split()
    total = 0
    for part in (words[-1] if len(words) > 2 else b"").split(b","):
        low, _, high = part.partition(b":")
        if low.isdigit() and (not high or high.isdigit()):
            total += abs(int(high) - int(low)) + 1 if high else 1
    return total
