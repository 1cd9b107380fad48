"""POP3 with no I/O (in the style of h11): bytes in (`receive_data`, b"" for the end of
input), events out (`next_event`, which never raises), for both sides of the proxy.

  * `Pop3ServerMachine` reads what a client sends: one event per line, bounded.
  * `Pop3ReplyReader` frames what the upstream answers. A POP3 reply does not say
    whether it is multi-line, the command does (`multiline_reply`), so the session tells
    the reader what to expect before each command it forwards. Bodies are passed on as
    they arrive, dot-stuffing and all, and never held whole.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from .events import CLOSED, NEED_DATA, ProtocolViolation

__all__ = [
    "CLOSED", "NEED_DATA", "BadCommand", "Collected", "Command", "Continuation", "End",
    "Passthrough", "Pop3ReplyReader", "Pop3ServerMachine", "ProtocolViolation",
    "SaslResponse", "Status", "multiline_reply",
]

MAX_COMMAND_LINE = 512  # with its line end; RFC 2449 §4 says 255, clients send longer
MAX_SASL_LINE = 8192  # RFC 5034 §4 sends long initial responses after "+ ", not on AUTH
# Servers echo the command in an error (Dovecot: "-ERR Unknown command: ..."): a status
# line may be as long as the longest command plus a reply's own words.
MAX_STATUS_LINE = MAX_COMMAND_LINE + 512
MAX_COLLECTED = 64 * 1024

# --- the client's side ----------------------------------------------------------------


@dataclass(slots=True)
class Command:
    """One command line. `args` is the rest of the line split on single spaces, so
    `" ".join(args) == argument` (two spaces give an empty arg, as the upstream sees
    them); undecodable bytes are kept as surrogates (surrogateescape)."""

    verb: str  # upper case
    args: tuple[str, ...]
    line: bytes  # without its line end

    @property
    def argument(self) -> str:
        """Everything after the first space, spaces included: PASS's password."""
        return self.line.partition(b" ")[2].decode("utf-8", "surrogateescape")


@dataclass(slots=True)
class BadCommand:
    """A line that is no command; the session answers `-ERR <text>`."""

    text: str


@dataclass(slots=True)
class SaslResponse:
    """The line after `expect_sasl()`, raw and without its line end: base64, empty, or
    `*` to cancel (RFC 5034 §4)."""

    line: bytes


LINE_TOO_LONG = BadCommand("Line too long")
BARE_CR_OR_NUL = BadCommand("Bare CR or NUL in command")
EMPTY_COMMAND = BadCommand("Empty command")


class Pop3ServerMachine:
    def __init__(self) -> None:
        self._buffer = b""
        self._position = 0  # where the unread part of _buffer starts
        self._discarding = False  # inside an overlong line
        self._ended = False
        self._sasl = False  # the next line is a SASL response

    def receive_data(self, data: bytes) -> None:
        """The client's next bytes, at any time; b"" for the end of its input."""
        if not data:
            self._ended = True
        elif self._position >= len(self._buffer):
            self._buffer, self._position = data, 0
        else:
            self._buffer = self._buffer[self._position :] + data
            self._position = 0

    def expect_sasl(self) -> None:
        """The client was sent "+ ": its next line is a SaslResponse (or a BadCommand)."""
        self._sasl = True

    def next_event(self):
        limit = MAX_SASL_LINE if self._sasl else MAX_COMMAND_LINE
        buffer, position = self._buffer, self._position
        end = buffer.find(b"\n", position)
        if end < 0:
            if len(buffer) - position > limit:  # drop it now, answer at its line end
                self._discarding = True
                self._buffer, self._position = b"", 0
            return CLOSED if self._ended else NEED_DATA
        self._position = end + 1
        sasl, self._sasl = self._sasl, False
        if self._discarding or end + 1 - position > limit:
            self._discarding = False
            return LINE_TOO_LONG
        line = buffer[position:end].rstrip(b"\r")
        if b"\r" in line or b"\0" in line:  # an upstream could take a bare CR for a line end
            return BARE_CR_OR_NUL
        if sasl:
            return SaslResponse(line)
        verb, _, argument = line.partition(b" ")
        if not verb:
            return EMPTY_COMMAND
        args = tuple(argument.decode("utf-8", "surrogateescape").split(" ")) if argument else ()
        return Command(verb.decode("ascii", "replace").upper(), args, line)

    def take_pending(self) -> bytes:
        """Remove and return what was received and not yet read; used before STLS,
        where anything pipelined in plaintext must be dropped."""
        pending = self._buffer[self._position :]
        self._buffer, self._position = b"", 0
        return pending


# --- the upstream's side --------------------------------------------------------------


def multiline_reply(verb: str, args: tuple[str, ...]) -> bool:
    """Whether a +OK to this command has a body ended by "." (RFC 1939, RFC 2449, and
    Dovecot's mechanism list for a bare AUTH; RFC 6856's bare LANG lists languages)."""
    verb = verb.upper()
    return verb in ("CAPA", "RETR", "TOP") or (verb in ("LIST", "UIDL", "AUTH", "LANG") and not args)


@dataclass(slots=True)
class Status:
    """A reply's first line, exactly as received with its line end."""

    ok: bool
    line: bytes


@dataclass(slots=True)
class Continuation:
    """A "+ challenge" line during AUTH (only when expected with `sasl=True`); the
    reply to the same command is still to come."""

    line: bytes


@dataclass(slots=True)
class Passthrough:
    """Body bytes of a multi-line reply, in order and as received (still dot-stuffed)."""

    data: bytes


@dataclass(slots=True)
class End:
    """The line "." CRLF that ends a multi-line reply; the session sends b".\\r\\n"."""


@dataclass(slots=True)
class Collected:
    """A whole multi-line body (with `collect=True`): its lines with their line ends,
    as received; the "." line is not among them."""

    lines: list[bytes]


_STATUS = re.compile(rb"(\+OK|-ERR|\+)[ \r\n]")  # RFC 1939: indicators in upper case
TERMINATOR = b"\n.\r\n"  # the "." line, with the line end before it


def _held_back(data: bytes) -> int:
    """How many bytes at the end of data may begin a terminator."""
    return next((n for n in (3, 2, 1) if data.endswith(TERMINATOR[:n])), 0)


class Pop3ReplyReader:
    def __init__(self) -> None:
        # In a body _buffer starts with the last byte passed on (at first the status
        # line's LF): the "." line ends the body only right after a line end.
        self._buffer = b""
        self._expected: deque[tuple[bool, bool, bool]] = deque()
        self._in_body = False
        self._collected: bytearray | None = None
        self._ended = False
        self._dead = False

    def expect(self, multiline: bool, collect: bool = False, sasl: bool = False) -> None:
        """Before forwarding a command: what its reply looks like. Queued in order, for
        pipelined commands. Without one (the greeting, a last "-ERR" before the upstream
        closes) a reply is one line. `collect`: a multi-line body comes as one Collected
        (at most 64 KiB). `sasl`: "+ " lines may come first (AUTH)."""
        self._expected.append((multiline, collect, sasl))

    def take_pending(self) -> bytes:
        """Remove and return what was received and not yet read, between replies: when
        the session becomes a byte pipe, these bytes are the client's first."""
        pending, self._buffer = self._buffer, b""
        return pending

    @property
    def pending(self) -> bool:
        """Bytes were received and not yet read: after a go-ahead to STLS, bytes that
        came in plaintext and must not be taken as if they came through TLS."""
        return bool(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """The upstream's next bytes; b"" for the end of its output."""
        if not data:
            self._ended = True
        elif not self._dead:
            self._buffer += data

    def next_event(self):
        if self._dead:
            return CLOSED
        if self._in_body:
            return self._body_event()
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0 and len(buffer) < MAX_STATUS_LINE:
            return CLOSED if self._ended else NEED_DATA
        if end < 0 or end >= MAX_STATUS_LINE:
            return self._violation("status line too long")
        line = buffer[: end + 1]
        match = _STATUS.match(line)
        indicator = match.group(1) if match else None
        multiline, collect, sasl = self._expected[0] if self._expected else (False, False, False)
        if indicator == b"+" and sasl:
            self._buffer = buffer[end + 1 :]
            return Continuation(line)
        if indicator not in (b"+OK", b"-ERR"):
            return self._violation(f"not a POP3 status line: {line[:40]!r}")
        if self._expected:
            self._expected.popleft()
        ok = indicator == b"+OK"
        self._in_body = ok and multiline
        self._collected = bytearray() if self._in_body and collect else None
        self._buffer = buffer[end:] if self._in_body else buffer[end + 1 :]
        return Status(ok, line)

    def _body_event(self):
        while True:
            data = self._buffer
            at = data.find(TERMINATOR)
            cut = at + 1 if at >= 0 else max(len(data) - _held_back(data), 1)
            if cut > 1:
                piece, self._buffer = data[1:cut], data[cut - 1 :]
                if self._collected is None:
                    return Passthrough(piece)
                self._collected += piece
                if len(self._collected) > MAX_COLLECTED:
                    return self._violation("multi-line reply over 64 KiB")
                continue
            if at < 0:
                return CLOSED if self._ended else NEED_DATA
            self._buffer, self._in_body = data[at + len(TERMINATOR) :], False
            collected, self._collected = self._collected, None
            if collected is None:
                return End()
            # The body ends with the line end before the "." line: it is whole lines.
            return Collected([line + b"\n" for line in bytes(collected).split(b"\n")[:-1]])

    def _violation(self, text: str) -> ProtocolViolation:
        self._dead = True
        self._buffer, self._collected = b"", None
        return ProtocolViolation(text)
