"""What an IMAP server sends, as the proxy's upstream side reads it, with no I/O (in the
style of h11): bytes in (`receive_data`), events out (`next_event`).

The reader only frames the stream: where a response ends, where a literal starts and
how long it is. Most responses are relayed as they arrive (`Passthrough`), a few are
picked out for the session. It never needs to know which command is outstanding.

- `Tagged`, `Continuation`: held until their line end (at most `hold_limit` bytes; a
  longer line is a `ProtocolViolation`, dropped up to its end).
- `Untagged`: every status response (`* OK|NO|BAD|BYE|PREAUTH`, so the greeting is
  recognised whatever its code), `* CAPABILITY`, `* ENABLED`, `* VANISHED`,
  `* n EXISTS|EXPUNGE|FETCH`, and `* LIST|LSUB` with the `\\Trash` attribute. Held up to
  `hold_limit` bytes; a longer one falls back to `Passthrough` and is not interpreted,
  except FETCH, which is noted with the bytes held so far. A FETCH that carries a literal
  is noted at the literal; the literal and the rest follow as `Passthrough`. Any other
  picked-out response with a literal (a LIST whose name is one) is relayed, not read.
- `Passthrough`: everything else, chunk by chunk, with no line-length limit, and
  literal bodies counted through, never held (`BODY[] {10485760}`; literal8 `~{5}`,
  whose bytes may be NUL).

Literals are recognised only where the grammar has them: a trailing `{n}` or `~{n}`
outside quotes, in untagged data. Status responses end in free text that servers fill
with what the client sent (Dovecot answers `a1 SELECT "x {5}"` with
`a1 NO Mailbox doesn't exist: x {5}`), so there a trailing `{n}` is text: otherwise a
client could desynchronise the reader at will.

Every byte received is in exactly one event's `data` or `raw`, in order, except the
lines reported as `ProtocolViolation` and a response cut off by the end of input.
`next_event` returns NEED_DATA when it needs more bytes, and CLOSED once the upstream's
input has ended.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from .events import CLOSED, NEED_DATA, ProtocolViolation

HOLD_LIMIT = 64 * 1024  # Dovecot's imap_max_line_length is 64k
HEAD = 64  # bytes that classify an untagged response; its keywords are short


@dataclass(slots=True)
class Passthrough:
    """Bytes to relay unchanged, in order."""

    data: bytes


@dataclass(slots=True)
class Tagged:
    """A command's completion. `status` is OK, NO or BAD; `code` is the response code
    without its brackets (`"CAPABILITY IMAP4rev1 ..."`) or None; `raw` is the whole line
    with its line end."""

    tag: str
    status: str
    code: str | None
    text: str
    raw: bytes


@dataclass(slots=True)
class Continuation:
    """A `+` line, with its line end."""

    raw: bytes


@dataclass(slots=True)
class Untagged:
    """A response picked out for the session. `kind` is its keyword upper-cased (OK, NO,
    BAD, BYE, PREAUTH, CAPABILITY, ENABLED, VANISHED, LIST, LSUB, EXISTS, EXPUNGE, FETCH);
    `number` the message number of EXISTS, EXPUNGE and FETCH; `code` the response code of
    a status response, as in `Tagged`. `raw` is the whole response with its line end,
    except for a FETCH with a literal or over `hold_limit`: then it ends where the
    literal starts (or at the limit), and the rest follows as `Passthrough`."""

    kind: str
    number: int | None
    raw: bytes
    code: str | None = None


STATUS_KINDS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
NUMBERED_KINDS = frozenset({"EXISTS", "EXPUNGE", "FETCH"})
DATA_KINDS = frozenset({"CAPABILITY", "ENABLED", "VANISHED", "LIST", "LSUB"})

# `* ` [number SP] keyword, the keyword ended by a space or the line end. No match means
# untagged data nobody picks out (or a keyword cut by the HEAD window).
_UNTAGGED_HEAD = re.compile(rb"\* (?:(\d+) )?([A-Za-z][A-Za-z0-9-]*)(?=[ \r\n])")
_TAGGED = re.compile(rb"([\x21-\x7e]+) (OK|NO|BAD)(?=[ \r\n])", re.IGNORECASE)
_LITERAL_MARKER = re.compile(rb"~?\{(\d{1,20})\}\r?\Z")  # number64 has 20 digits at most
_MARKER_TAIL = 24  # enough bytes of a line's end to hold the longest marker and a CR
_QUOTE_CHARS = re.compile(rb'["\\]')
_LIST_FLAGS = re.compile(rb"\* L(?:IST|SUB) \(([^)\r\n]*)\)", re.IGNORECASE)

_TOO_LONG = object()  # a line over the hold limit, from _take_line


class _Mode(Enum):
    START = "at a response's first byte"
    STREAM = "relaying a data line up to its end"
    LITERAL = "counting a literal through"
    DISCARD = "dropping a reported line up to its end"


class _LineScan:
    """The quoting state of a data line as it streams past, and its last bytes: enough
    to tell at its end whether it ends in a literal marker outside quotes."""

    def __init__(self) -> None:
        self.quoted = False
        self.escaped = False  # a backslash in a quoted string ended the previous piece
        self.tail = b""

    def feed(self, data: bytes, start: int, end: int) -> None:
        if start >= end:
            return
        skip = start + 1 if self.escaped else start  # bytes before `skip` are escaped
        self.escaped = False
        for match in _QUOTE_CHARS.finditer(data, start, end):
            at = match.start()
            if at < skip:
                continue
            if data[at] == 0x22:  # '"'
                self.quoted = not self.quoted
            elif self.quoted:  # a backslash escapes the next byte, maybe in the next piece
                skip = at + 2
                self.escaped = at + 1 == end
        self.tail = (self.tail + data[max(start, end - _MARKER_TAIL) : end])[-_MARKER_TAIL:]

    def literal_size(self) -> int | None:
        """At the line end: the size of the literal the line announces, if it does."""
        if self.quoted:
            return None
        marker = _LITERAL_MARKER.search(self.tail)
        return int(marker.group(1)) if marker else None


class ImapResponseReader:
    def __init__(self, hold_limit: int = HOLD_LIMIT) -> None:
        if hold_limit < HEAD:
            raise ValueError(f"hold_limit must be at least {HEAD} bytes")
        self._limit = hold_limit
        self._buffer = b""
        self._position = 0  # where the unread part of _buffer starts
        self._ended = False
        self._mode = _Mode.START
        self._literal_left = 0
        self._literals = True  # whether the line streaming past may end in a literal
        self._scan = _LineScan()

    def take_pending(self) -> bytes:
        """Remove and return what was received and not yet read, between responses:
        when the session becomes a byte pipe, these bytes are the client's first."""
        pending = self._buffer[self._position :]
        self._buffer, self._position = b"", 0
        return pending

    @property
    def pending(self) -> bool:
        """Bytes were received and not yet read: after a go-ahead to STARTTLS, bytes that
        came in plaintext and must not be taken as if they came through TLS."""
        return self._position < len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """The upstream's next bytes, at any time; b"" for the end of its input."""
        if not data:
            self._ended = True
        elif self._position >= len(self._buffer):
            self._buffer, self._position = data, 0
        else:
            self._buffer = self._buffer[self._position :] + data
            self._position = 0

    def next_event(self):
        """The next event, NEED_DATA, or CLOSED once the input has ended and been read."""
        if self._mode is _Mode.LITERAL:
            return self._literal_bytes()
        if self._mode is _Mode.STREAM:
            return self._stream_line()
        if self._mode is _Mode.DISCARD:
            return self._discard_line()
        return self._response()

    # --- a response's first line ---------------------------------------------------------

    def _response(self):
        first = self._buffer[self._position : self._position + 1]
        if not first:
            return self._need_more()
        if first == b"*":
            return self._untagged()
        line = self._take_line()
        if line is None:
            return self._need_more()
        if line is _TOO_LONG:
            return self._violation("response line too long")
        if first == b"+":
            return Continuation(line)
        return _tagged(line)

    def _untagged(self):
        head = self._head()
        if head is None:
            return self._need_more()
        if not head.startswith(b"* "):
            return self._violation("malformed untagged response")
        kind, number = _classify(head)
        if kind is None:
            self._start_stream(literals=True)
            return self._stream_line()
        line = self._take_line()
        if line is None:
            return self._need_more()
        if line is _TOO_LONG:
            return self._overlong_picked(kind, number)
        if kind not in STATUS_KINDS:
            self._scan = _LineScan()
            self._scan.feed(line, 0, len(line) - 1)
            if self._line_ended(literals=True):  # the rest follows as Passthrough
                return Untagged(kind, number, line) if kind == "FETCH" else Passthrough(line)
        return _picked(kind, number, line)

    def _overlong_picked(self, kind: str, number: int | None):
        """A picked-out response longer than the limit: relayed as it streams, not
        interpreted; only a FETCH is still noted (the audit counts it)."""
        raw = self._take(self._limit)
        self._start_stream(literals=kind not in STATUS_KINDS)
        self._scan.feed(raw, 0, len(raw))
        return Untagged(kind, number, raw) if kind == "FETCH" else Passthrough(raw)

    # --- streaming: data lines, literals, dropped lines ----------------------------------

    def _start_stream(self, literals: bool) -> None:
        self._mode, self._literals, self._scan = _Mode.STREAM, literals, _LineScan()

    def _stream_line(self):
        buffer, position = self._buffer, self._position
        if position >= len(buffer):
            return self._need_more()
        end = buffer.find(b"\n", position)
        if end < 0:
            self._scan.feed(buffer, position, len(buffer))
            return Passthrough(self._take(len(buffer) - position))
        self._scan.feed(buffer, position, end)
        piece = self._take(end + 1 - position)
        self._line_ended(self._literals)
        return Passthrough(piece)

    def _line_ended(self, literals: bool) -> bool:
        """At the end of a data line: if it announced a literal, count its bytes through
        next, then stream the rest of the response."""
        size = self._scan.literal_size() if literals else None
        if size is None:
            self._mode = _Mode.START
            return False
        self._literal_left = size
        if size:
            self._mode = _Mode.LITERAL
        else:
            self._start_stream(literals=True)
        return True

    def _literal_bytes(self):
        available = len(self._buffer) - self._position
        if not available:
            return self._need_more()
        piece = self._take(min(available, self._literal_left))
        self._literal_left -= len(piece)
        if not self._literal_left:
            self._start_stream(literals=True)
        return Passthrough(piece)

    def _violation(self, text: str) -> ProtocolViolation:
        """Report the line at hand and drop it up to its end, so reading goes on after it."""
        self._mode = _Mode.DISCARD
        return ProtocolViolation(text)

    def _discard_line(self):
        end = self._buffer.find(b"\n", self._position)
        if end < 0:
            self._buffer, self._position = b"", 0
            return CLOSED if self._ended else NEED_DATA  # the line was reported already
        self._position = end + 1
        self._mode = _Mode.START
        return self.next_event()

    # --- the buffer ------------------------------------------------------------------

    def _head(self) -> bytes | None:
        """The first HEAD bytes of the response, or its whole line if shorter; None until
        either is there."""
        window = self._buffer[self._position : self._position + HEAD]
        end = window.find(b"\n")
        if end >= 0:
            return window[: end + 1]
        return window if len(window) == HEAD else None

    def _take_line(self):
        """The next line with its line end if it is at most `hold_limit` bytes; _TOO_LONG
        (nothing taken) if it is longer; None until one of these is known."""
        buffer, position = self._buffer, self._position
        end = buffer.find(b"\n", position, position + self._limit)
        if end >= 0:
            return self._take(end + 1 - position)
        return _TOO_LONG if len(buffer) - position >= self._limit else None

    def _take(self, size: int) -> bytes:
        start = self._position
        self._position = start + size
        return self._buffer[start : self._position]

    def _need_more(self):
        """What to say when the bytes at hand are not enough."""
        if not self._ended:
            return NEED_DATA
        if self._mode is _Mode.START and self._position >= len(self._buffer):
            return CLOSED
        # Cut off mid-response: what was held back is dropped, once.
        self._mode, self._buffer, self._position = _Mode.START, b"", 0
        return ProtocolViolation("input ended inside a response")


def _classify(head: bytes) -> tuple[str | None, int | None]:
    """The kind and number of an untagged response to pick out, or (None, None)."""
    match = _UNTAGGED_HEAD.match(head)
    if not match:
        return None, None
    number, kind = match.group(1), match.group(2).decode("ascii").upper()
    if number is None and (kind in STATUS_KINDS or kind in DATA_KINDS):
        return kind, None
    if number is not None and kind in NUMBERED_KINDS:
        return kind, int(number)
    return None, None


def _picked(kind: str, number: int | None, line: bytes):
    if kind in STATUS_KINDS:
        return Untagged(kind, None, line, _code_and_text(line, len(b"* ") + len(kind))[0])
    if kind in ("LIST", "LSUB") and not _has_trash(line):
        return Passthrough(line)
    return Untagged(kind, number, line)


_LIST_NAME = re.compile(
    rb'\* L(?:IST|SUB) \([^)\r\n]*\) (?:"(?:[^"\\]|\\.)*"|NIL) (?:"((?:[^"\\]|\\.)*)"|([^\s"(){]+))\r?\n?\Z',
    re.IGNORECASE,
)


def listed_mailbox(raw: bytes) -> str | None:
    """The mailbox name of a LIST or LSUB response, as sent (quoted or atom; a name sent
    as a literal is not returned), or None."""
    match = _LIST_NAME.match(raw)
    if match is None:
        return None
    quoted, atom = match.groups()
    name = re.sub(rb"\\(.)", rb"\1", quoted) if quoted is not None else atom
    return name.decode("utf-8", "surrogateescape")


def _has_trash(line: bytes) -> bool:
    flags = _LIST_FLAGS.match(line)
    return flags is not None and b"\\trash" in flags.group(1).lower().split()


def _tagged(line: bytes) -> Tagged | ProtocolViolation:
    match = _TAGGED.match(line)
    if not match:
        return ProtocolViolation("malformed tagged response")
    tag, status = match.groups()
    code, text = _code_and_text(line, match.end())
    return Tagged(tag.decode("ascii"), status.decode("ascii").upper(), code, text, line)


def _code_and_text(line: bytes, after: int) -> tuple[str | None, str]:
    """`[CODE args] text` after the status keyword that ends at `after`: the code without
    its brackets (or None), and the text."""
    rest = line[after:].removesuffix(b"\n").removesuffix(b"\r").removeprefix(b" ")
    if rest.startswith(b"["):
        end = rest.find(b"]")
        if end > 0:
            text = rest[end + 1 :]
            return _text(rest[1:end]), _text(text[1:] if text.startswith(b" ") else text)
    return None, _text(rest)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# --- capability lists -------------------------------------------------------------------

# What the proxy takes out of the upstream's capabilities after login: login and TLS are
# over, referrals would send the client past the proxy, compression would hide the stream
# from the hooks, and NOTIFY's unsolicited data at any time is not supported. A trailing
# `*` matches any suffix. Unknown extensions are kept.
DROPPED_CAPABILITIES = (
    "STARTTLS",
    "LOGINDISABLED",
    "AUTH=*",
    "SASL-IR",
    "COMPRESS=*",
    "LOGIN-REFERRALS",
    "NOTIFY",
)

_CAPABILITY_DATA = re.compile(rb"\* CAPABILITY(?=[ \r\n]|\Z)", re.IGNORECASE)
_CAPABILITY_CODE = re.compile(rb"[\x21-\x7e]+ (?:OK|NO|BAD|BYE|PREAUTH) \[CAPABILITY(?=[ \]])", re.IGNORECASE)


def rewrite_capabilities(caps: Iterable[str], *, drop: Iterable[str] = DROPPED_CAPABILITIES) -> list[str]:
    """`caps` in order without those `drop` names (case-insensitive; `X*` for a prefix)."""
    patterns = [pattern.upper() for pattern in drop]

    def dropped(cap: str) -> bool:
        cap = cap.upper()
        return any(cap.startswith(p[:-1]) if p.endswith("*") else cap == p for p in patterns)

    return [cap for cap in caps if not dropped(cap)]


def capability_list(raw: bytes) -> list[str] | None:
    """The capabilities in a `* CAPABILITY` response or in the `[CAPABILITY ...]` code of a
    status line (tagged or untagged), or None if it has none."""
    span = _capability_span(raw)
    if span is None:
        return None
    return raw[span[0] : span[1]].decode("ascii", "surrogateescape").split()


def rewrite_capability_response(raw: bytes, *, drop: Iterable[str] = DROPPED_CAPABILITIES) -> bytes:
    """`raw` with `rewrite_capabilities` applied to its capability list; everything else,
    tag and line end included, as it was. A response without a list comes back as is."""
    span = _capability_span(raw)
    if span is None:
        return raw
    start, end = span
    kept = rewrite_capabilities(capability_list(raw), drop=drop)
    listed = "".join(" " + cap for cap in kept).encode("ascii", "surrogateescape")
    return raw[:start] + listed + raw[end:]


def _capability_span(raw: bytes) -> tuple[int, int] | None:
    """Where the list is: from right after the word CAPABILITY to the line end (data
    response) or to the closing bracket (response code)."""
    data = _CAPABILITY_DATA.match(raw)
    if data:
        line_end = raw.find(b"\n")
        end = len(raw) if line_end < 0 else line_end
        return data.end(), end - 1 if raw[end - 1 : end] == b"\r" else end
    code = _CAPABILITY_CODE.match(raw)
    if code:
        end = raw.find(b"]", code.end())
        return (code.end(), end) if end >= 0 else None
    return None
