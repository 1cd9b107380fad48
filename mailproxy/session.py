"""What plugins see of a client connection (Session) and of one mail transaction (Envelope).

Kept apart as in aiosmtpd's Session/Envelope: a session lives as long as the connection,
an envelope from MAIL to end-of-data or reset. `notes` dicts let plugins keep state with
exactly that scope, and so do scores: what plugins said about the client stays on the
Session, what they said about one message goes with its Envelope. The attribute names
follow aiosmtpd's, which plugin authors may know.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

__all__ = ["Session", "Envelope", "ScoreEntry", "TraceEntry", "POLICY"]


@dataclass(frozen=True, slots=True)
class ScoreEntry:
    """One score a plugin gave: which plugin, in which hook, for which rule, how much."""

    plugin: str
    hook: str
    symbol: str
    points: float


# The `plugin` of a trace entry that the score thresholds of `[policy]` gave.
POLICY = "[policy]"


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One verdict given in a scope, for the why-trace: which plugin (POLICY for the
    score thresholds), in which hook, what it said and how long the hook call took.
    `observed`: given in observe mode, so recorded and not enforced."""

    plugin: str
    hook: str
    action: str  # an Action's value: "score", "accept", "reject", "tempfail", "disconnect"
    symbol: str = ""
    points: float = 0.0
    reason: str = ""
    ms: float = 0.0
    observed: bool = False


class Scored:
    """The scores given within one scope, one entry each; `score` and `symbols` are
    views of the entries. `trace` holds every verdict given in the scope, in order."""

    score_entries: list[ScoreEntry]
    # A tuple, shared and empty until a verdict comes: most scopes never get one.
    trace: tuple[TraceEntry, ...] = ()

    def add_score(self, symbol: str, points: float, plugin: str = "", hook: str = "") -> None:
        self.score_entries.append(ScoreEntry(plugin, hook, symbol, float(points)))

    def record(self, entry: TraceEntry) -> None:
        self.trace += (entry,)

    def forget_scores(self, hook: str) -> None:
        """Drop what `hook` scored and said: a repeated HELO or MAIL is judged anew."""
        if self.score_entries:
            self.score_entries = [e for e in self.score_entries if e.hook != hook]
        if self.trace:
            self.trace = tuple(e for e in self.trace if e.hook != hook)

    @property
    def score(self) -> float:
        # Most scopes have no entry: no generator for them (the sum of none is 0).
        return sum(e.points for e in self.score_entries) if self.score_entries else 0

    @property
    def symbols(self) -> dict[str, float]:
        """Points per symbol (a copy: add scores with `add_score`)."""
        totals: dict[str, float] = {}
        for e in self.score_entries:
            totals[e.symbol] = totals.get(e.symbol, 0.0) + e.points
        return totals


class Session(Scored):
    def __init__(self, protocol: str, listener: str, mode: str = "") -> None:
        self.id = secrets.token_hex(5)
        self.protocol = protocol
        self.listener = listener
        self.mode = mode  # "mx" or "submission" for SMTP listeners
        self.started = time.monotonic()
        self.peer: Any = None  # (address, port, ...) as the socket reports it
        self.local: Any = None  # the listener's end, as the client connected to it
        self.client_name: str | None = None  # verified host name, if looked up
        self.host_name: str | None = None  # HELO/EHLO argument
        self.extended_smtp = False
        self.ssl: dict[str, Any] | None = None  # set once TLS is up
        self.authenticated = False
        self.username: str | None = None
        self.auth_data: Any = None
        self.login_data: Any = None
        self.proxy_data: Any = None
        # IMAP: mailboxes the upstream listed with a special-use attribute (RFC 6154),
        # decoded name -> attribute; so far the `\Trash` ones.
        self.special_use: dict[str, str] = {}
        self.mailbox: str | None = None  # IMAP: the selected mailbox (decoded name)
        self.loop: Any = None
        self.notes: dict[str, Any] = {}
        # Set by proxies that pair the session with an upstream session: checks a
        # username/password by authenticating that upstream session (True, False, None).
        self.upstream_login: Callable[[str, str], Awaitable[bool | None]] | None = None
        # Set by the proxy: waits up to N seconds for the client to do anything, reading
        # nothing: "spoke" (what it sent stays for the session), "left" (its input ended
        # or its connection is gone) or "silent". For checks before the greeting.
        self.wait_for_client: Callable[[float], Awaitable[str]] | None = None
        self.transactions = 0  # messages the upstream accepted in this session
        # Scores about the client (connect, HELO, AUTH, commands outside a transaction),
        # kept for the whole session; thresholds apply to these plus the envelope's.
        self.score_entries: list[ScoreEntry] = []

    @property
    def client_address(self) -> str:
        return self.peer[0] if self.peer else ""

    @property
    def client_port(self) -> int:
        return self.peer[1] if self.peer else 0

    @property
    def tls(self) -> bool:
        return self.ssl is not None

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.protocol}/{self.listener} {self.client_address}>"


class Envelope(Scored):
    def __init__(self) -> None:
        self.mail_from: str | None = None
        self.mail_options: list[str] = []
        self.mail_params: dict[str, str | bool] = {}
        self.smtp_utf8 = False
        self.rcpt_tos: list[str] = []
        self.rcpt_options: list[list[str]] = []
        self.added_headers: list[tuple[str, str]] = []
        self.score_entries: list[ScoreEntry] = []  # scores about this transaction
        self.notes: dict[str, Any] = {}
        self.content: bytes | None = None  # the message, set after end-of-data

    # How the transaction ended, once it has: "delivered", "rejected", "tempfailed",
    # "unknown", "reset" or "abandoned" (its trace line is written then, once).
    outcome: str | None = None

    def add_header(self, name: str, value: str) -> None:
        """Add `name: value` at the top of the message sent to the upstream."""
        if not name or any(c in name for c in ": \t\r\n") or not name.isascii():
            raise ValueError(f"bad header name {name!r}")
        if "\r" in value or "\n" in value:
            raise ValueError("header value must be a single line")
        self.added_headers.append((name, value))
