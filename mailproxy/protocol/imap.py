"""What an IMAP client sends, as the proxy's server side reads it, with no I/O (in the
style of h11): bytes in (`receive_data`), events out (`next_event`).

A command is read line by line (`imap_syntax.CommandReader` tokenises it) and comes out
whole as a `Command`, with its exact bytes for forwarding, when every literal in it was
small enough to read. A literal marker that ends a line may make the machine pause
with a `LiteralAhead`, until the session decides:

- a sync literal `{n}`: the client waits for a continuation. `accept_literal()` reads it
  (the session wrote its own `+`), `accept_literal(stream=True)` hands it out as
  `LiteralData` as it arrives (the session forwarded `head` and relayed the upstream's
  `+`), `refuse_literal()` drops the command (the client sends no more of it).
- a non-sync literal `{n+}` (RFC 7888) whose bytes are coming anyway: up to
  `max_inline_literal` it is read without a pause; a bigger one pauses as above, and
  refusing it discards its bytes by count, then the rest of the command. One over
  `max_literal_size` (or the pre-login `max_nonsync_literal`) cannot be refused cleanly:
  that is a fatal `BadCommand`, answered with BYE.

After a streamed literal, the rest of its line comes as `CommandRest`, or as another
`LiteralAhead(continued=True)` when that line ends in a literal too (MULTIAPPEND).

A line that is no command is a `BadCommand`, consumed to its end so the next command
parses cleanly, and the rest of its command with it: a client that sent a sync literal
marker waits for the `+` it will not get. When the line ends in what may be a non-sync
literal marker, the client may be sending bytes that nothing can place: that BadCommand
is fatal, as is any once part of the command went upstream (nginx closes there too).

`start_idle()` and `expect_sasl()` make the next line an `IdleDone`/`IdleOther` or a
`SaslResponse`. `next_event` returns NEED_DATA when it needs more bytes and CLOSED once
the client's input has ended (a command cut off by the end of input is dropped) or a
fatal BadCommand was given. No input makes it raise.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from .events import CLOSED, NEED_DATA
from .imap_syntax import Atom, CommandReader, ImapSyntaxError, Literal, Node, ParenList, Quoted, astring, tag_of

# The nodes and astring are the syntax module's, here too so one import serves a session.
__all__ = [
    "CLOSED", "NEED_DATA", "PRE_LOGIN_LIMITS", "Atom", "BadCommand", "Command", "CommandRest",
    "IdleDone", "IdleOther", "ImapLimits", "ImapServerMachine", "Literal", "LiteralAhead",
    "LiteralData", "Node", "ParenList", "Quoted", "SaslResponse", "astring",
]

KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImapLimits:
    """The bounds on what a client may send; the constructor's and `set_limits`'s keywords."""

    max_line_length: int = 64 * KiB  # a command's lines with their line ends, literals excluded
    max_inline_literal: int = 64 * KiB  # a literal read before the hook (credentials, names)
    max_literal_size: int = 50 * MiB  # any literal (an APPENDed message)
    max_literals: int = 256  # per command (MULTIAPPEND, CATENATE)
    max_inline_bytes: int = MiB  # literal bytes read per command
    max_depth: int = 32  # of nested parentheses (SEARCH nests)
    max_nonsync_literal: int | None = None  # None: max_literal_size; 4096 before login

    @property
    def nonsync_cap(self) -> int:
        if self.max_nonsync_literal is None:
            return self.max_literal_size
        return min(self.max_nonsync_literal, self.max_literal_size)


# Before login: Dovecot's own login process closes on a 9000-byte {9000+} in LOGIN, and
# the proxy advertises LITERAL- (non-sync literals up to 4096 bytes) then.
PRE_LOGIN_LIMITS = {"max_line_length": 8 * KiB, "max_inline_literal": 8 * KiB, "max_nonsync_literal": 4096}


@dataclass(frozen=True, slots=True)
class Command:
    """A complete command whose literals were all read; `raw` is its exact bytes (lines
    with their line ends, and literal values), for byte-exact forwarding."""

    tag: str
    verb: str  # upper case; "UID STORE" and the like for UID commands
    args: tuple[Node, ...]
    raw: list[bytes]


@dataclass(frozen=True, slots=True)
class LiteralAhead:
    """A literal marker ended a line; the machine waits for `accept_literal` or
    `refuse_literal`. `args_so_far` ends with `literal` (value None). `head` is the bytes
    of the command not yet handed out, up to the marker's line end: handed out if the
    literal streams, else they stay with the command. `continued` when an earlier literal
    of the command was streamed. `fits_inline`: small enough to read whole."""

    tag: str
    verb: str
    args_so_far: tuple[Node, ...]
    literal: Literal
    head: list[bytes]
    continued: bool
    fits_inline: bool


@dataclass(frozen=True, slots=True)
class LiteralData:
    """Bytes of a streamed literal, in order: a slice of one read."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CommandRest:
    """The rest of a command after its last streamed literal, to its final line end.
    `parts`: the same bytes as lines and the values of literals read in between."""

    raw: bytes
    parts: tuple[bytes, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class BadCommand:
    """Answer `tag BAD text` (`* BAD` without a tag); when fatal, BYE and close."""

    tag: str | None
    text: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The DONE line that ends IDLE."""


@dataclass(frozen=True, slots=True)
class IdleOther:
    """Any other line during IDLE, with its line end; IDLE is over."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """A line of an AUTHENTICATE exchange, without its line end."""

    line: bytes


_AGAIN = object()  # a step changed the state without an event: take the next one
_TOO_LONG = object()
_REFUSED = object()  # the session answered the command; the rest is read and dropped


@dataclass(slots=True)
class _Progress:
    """The command being read, from its first line to its end."""

    reader: CommandReader
    raw: list[bytes] = field(default_factory=list)  # read and not yet handed out
    text: int = 0  # bytes of its lines so far
    literals: int = 0
    inline: int = 0  # literal bytes read
    streamed: bool = False  # part of it went out: an error now cannot be answered with BAD
    outcome: object = None  # _REFUSED, or the BadCommand owed once it ends

    @property
    def tag(self) -> str | None:
        return self.reader.tag


class ImapServerMachine:
    def __init__(self, **limits: int | None) -> None:
        self.limits = ImapLimits(**limits)
        self._buffer = b""
        self._position = 0  # where the unread part of _buffer starts
        self._reads: deque[bytes] = deque()  # reads not yet looked at, never joined
        self._ended = False
        self._step = self._line_step
        self._command: _Progress | None = None
        self._ahead: LiteralAhead | None = None  # while paused
        self._literal: Literal | None = None  # being read, streamed or discarded
        self._left = 0  # its bytes still to come
        self._pieces: list[bytes] = []  # of a literal being read
        self._overlong_tag: str | None = None
        self._overlong_tail = b""  # the last bytes of a line being skipped

    # --- the session's side -----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """The client's next bytes, at any time; b"" for the end of its input."""
        if self._ended:
            return
        if not data:
            self._ended = True
        elif self._position >= len(self._buffer) and not self._reads:
            self._buffer, self._position = data, 0
        else:
            self._reads.append(data)

    def next_event(self):
        while (event := self._step()) is _AGAIN:
            pass
        return event

    def set_limits(self, **limits: int | None) -> None:
        """Change bounds (after login); they apply from the next command."""
        self.limits = replace(self.limits, **limits)

    def accept_literal(self, stream: bool = False) -> None:
        """Go on after a LiteralAhead: read the literal into the command (only when it
        `fits_inline`), or stream it as LiteralData."""
        ahead = self._waiting()
        if not (stream or ahead.fits_inline):
            raise ValueError("this literal is too big to read whole")
        self._ahead = None
        if stream:
            self._command.raw = []
            self._command.streamed = True
            self._command.reader.add_literal(ahead.literal)
        self._start_literal(ahead.literal, self._stream_step if stream else self._inline_step)

    def refuse_literal(self) -> None:
        """Drop the command after a LiteralAhead (the session answers it with NO). A sync
        literal's client sends no more of it; a non-sync one's bytes are discarded by
        count, and the rest of the command after them."""
        ahead, self._ahead = self._waiting(), None
        if ahead.literal.sync:
            self._command = None
            self._step = self._line_step
        else:
            self._command.outcome = _REFUSED
            self._command.reader.add_literal(ahead.literal)
            self._start_literal(ahead.literal, self._discard_step)

    def start_idle(self) -> None:
        """After the upstream's `+` to IDLE: the next line ends it. Call it before the
        next `next_event`, so that a DONE sent right after IDLE is read as such."""
        self._between_commands("start_idle")
        self._step = self._idle_step

    def expect_sasl(self) -> None:
        """After a `+` in AUTHENTICATE: the next line is a SaslResponse."""
        self._between_commands("expect_sasl")
        self._step = self._sasl_step

    def take_pending(self) -> bytes:
        """Remove and return what was received and not yet read; used before STARTTLS,
        where anything pipelined in plaintext must be dropped."""
        pending = self._buffer[self._position :] + b"".join(self._reads)
        self._buffer, self._position = b"", 0
        self._reads.clear()
        return pending

    def _waiting(self) -> LiteralAhead:
        if self._ahead is None:
            raise RuntimeError("no LiteralAhead is waiting for an answer")
        return self._ahead

    def _between_commands(self, name: str) -> None:
        if self._step != self._line_step or self._command is not None:
            raise RuntimeError(f"{name}() in the middle of a command")

    # --- steps: each returns an event, NEED_DATA, CLOSED or _AGAIN --------------------

    def _starved(self):
        return CLOSED if self._ended else NEED_DATA

    def _closed_step(self):
        return CLOSED

    def _paused_step(self):
        return self._ahead  # until the session answers it

    def _line_step(self):
        command = self._command
        budget = self.limits.max_line_length - (command.text if command else 0)
        line = self._read_line(budget)
        if line is None:
            return self._starved()
        if line is _TOO_LONG:
            prefix = self._buffer[self._position : self._position + budget]
            return self._skip_overlong(command.tag if command else tag_of(prefix))
        text = _without_line_end(line)
        if command is None:
            command = self._command = _Progress(CommandReader(self.limits.max_depth))
        command.text += len(line)
        try:
            literal = command.reader.feed(text)
        except ImapSyntaxError as error:
            return self._bad_line(str(error), text)
        if command.outcome is None:
            command.raw.append(line)
        if literal is None:
            return self._end_of_command()
        return self._on_literal(literal, text)

    def _idle_step(self):
        return self._single_line(lambda line: IdleDone() if _without_line_end(line).upper() == b"DONE" else IdleOther(line))

    def _sasl_step(self):
        return self._single_line(lambda line: SaslResponse(_without_line_end(line)))

    def _single_line(self, event_of):
        """One line that is no command (IDLE's DONE, a SASL response), bounded as a
        command line is; then commands again."""
        line = self._read_line(self.limits.max_line_length)
        if line is None:
            return self._starved()
        self._step = self._line_step
        if line is _TOO_LONG:
            return self._skip_overlong(None)
        return event_of(line)

    def _overlong_step(self):
        """Skip a line that is too long to its end, keeping only its last bytes."""
        while (end := self._buffer.find(b"\n", self._position)) < 0:
            self._overlong_tail = _tail(self._overlong_tail, self._buffer, self._position, len(self._buffer))
            self._buffer, self._position = b"", 0
            if not self._pull():
                return self._starved()
        tail = _tail(self._overlong_tail, self._buffer, self._position, end)
        self._position = end + 1
        return self._bad_line("Line too long", tail.removesuffix(b"\r"), self._overlong_tag)

    def _inline_step(self):
        data = self._take_literal()
        if data is None:
            return self._starved()
        self._pieces.append(data)
        if self._left:
            return _AGAIN
        value, self._pieces = b"".join(self._pieces), []
        return self._literal_read(replace(self._literal, value=value))

    def _stream_step(self):
        data = self._take_literal()
        if data is None:
            return self._starved()
        if not self._left:
            self._step = self._line_step
        return LiteralData(data) if data else _AGAIN

    def _discard_step(self):
        data = self._take_literal()
        if data is None:
            return self._starved()
        if not self._left:
            self._step = self._line_step
        return _AGAIN

    # --- a command's course -----------------------------------------------------------

    def _on_literal(self, literal: Literal, text: bytes):
        """A literal marker ended a line of the command."""
        command, limits = self._command, self.limits
        command.literals += 1
        if command.literals > limits.max_literals:
            return self._bad_line("Too many literals", text)
        if not literal.sync and literal.size > limits.nonsync_cap:
            # Its bytes are on their way and cannot be told from commands: fatal.
            return self._bad_line("[TOOBIG] Literal too big", text)
        if command.outcome is not None:  # read for its framing only
            if literal.sync:  # the client waits for a "+" and gets the answer instead
                return self._drop()
            command.reader.add_literal(literal)
            self._start_literal(literal, self._discard_step)
            return _AGAIN
        fits = literal.size <= limits.max_inline_literal and command.inline + literal.size <= limits.max_inline_bytes
        if fits and not literal.sync:
            self._start_literal(literal, self._inline_step)
            return _AGAIN
        verb, args = command.reader.so_far(literal)
        head = list(command.raw)
        self._ahead = LiteralAhead(command.tag, verb, args, literal, head, command.streamed, fits)
        self._step = self._paused_step
        return self._ahead

    def _literal_read(self, literal: Literal):
        """A literal's value was read whole: on with the command."""
        command = self._command
        command.inline += literal.size
        command.reader.add_literal(literal)
        self._step = self._line_step
        if b"\0" in literal.value and not literal.binary:
            if command.streamed:
                return self._bad_line("NUL outside a literal8", b"")  # fatal
            command.outcome = BadCommand(command.tag, "NUL outside a literal8")
            return _AGAIN
        command.raw.append(literal.value)
        return _AGAIN

    def _end_of_command(self):
        command = self._command
        try:
            verb, args = command.reader.finish()
        except ImapSyntaxError as error:
            return self._bad_line(str(error), b"")  # a line that ended in no literal
        if command.outcome is not None:
            return self._drop()
        self._command = None
        if command.streamed:
            return CommandRest(b"".join(command.raw), tuple(command.raw))
        return Command(command.tag, verb, args, command.raw)

    def _drop(self):
        """The command ends, answered already or owed a BAD."""
        outcome, self._command = self._command.outcome, None
        return _AGAIN if outcome is _REFUSED else outcome

    def _bad_line(self, text: str, line: bytes, tag: str | None = None):
        """The command ends in error at `line` (without its line end). Fatal when the line
        may end in a non-sync literal marker, or when part of the command went out."""
        command, self._command = self._command, None
        fatal = line.endswith(b"+}") or (command is not None and command.streamed)
        self._step = self._closed_step if fatal else self._line_step
        if command is not None:
            tag = command.tag
            if command.outcome is _REFUSED and not fatal:
                return _AGAIN  # answered already
            if command.outcome is not None and not fatal:
                return command.outcome  # the first error tells
        return BadCommand(tag, text, fatal)

    def _skip_overlong(self, tag: str | None):
        self._overlong_tag, self._overlong_tail = tag, b""
        self._step = self._overlong_step
        return _AGAIN

    def _start_literal(self, literal: Literal, step) -> None:
        self._literal, self._left, self._step = literal, literal.size, step

    # --- the bytes received -----------------------------------------------------------

    def _pull(self) -> bool:
        """Append the next read to the unread part of the buffer; False if there is none."""
        if not self._reads:
            return False
        read = self._reads.popleft()
        rest = self._buffer[self._position :]
        self._buffer, self._position = rest + read if rest else read, 0
        return True

    def _read_line(self, budget: int):
        """The next line with its line end; None until it is complete, or _TOO_LONG (left
        unread) once it is known to pass `budget` bytes."""
        while (end := self._buffer.find(b"\n", self._position)) < 0:
            if len(self._buffer) - self._position >= budget:
                return _TOO_LONG
            if not self._pull():
                return None
        if end + 1 - self._position > budget:
            return _TOO_LONG
        line = self._buffer[self._position : end + 1]
        self._position = end + 1
        return line

    def _take_literal(self) -> bytes | None:
        """Up to the rest of the current literal from one read; None if nothing is there
        (b"" when the literal is complete already)."""
        if not self._left:
            return b""
        if self._position >= len(self._buffer):
            self._buffer, self._position = b"", 0
            if not self._pull():
                return None
        start = self._position
        end = min(len(self._buffer), start + self._left)
        self._position, self._left = end, self._left - (end - start)
        if start == 0 and end == len(self._buffer):
            return self._buffer  # the whole read, not a copy
        return self._buffer[start:end]


def _without_line_end(line: bytes) -> bytes:
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def _tail(kept: bytes, buffer: bytes, start: int, end: int) -> bytes:
    """The last three bytes of `kept` followed by buffer[start:end], with no big copy."""
    return (kept + buffer[max(start, end - 3) : end])[-3:]
