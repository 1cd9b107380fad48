"""What an SMTP client sends, as the proxy's server side reads it, with no I/O (in the
style of h11): bytes in (`receive_data`), events out (`next_event`).

Two modes. In command mode each complete line is one event: a `Command`, or a
`BadCommand` carrying the reply it deserves (an overlong line, consumed up to its end so
the next command parses cleanly; a bare CR or NUL, which an upstream could take for a
line end). After `start_message` the bytes are a message, normalised as they arrive
(`WireReceiver`): handed out as `MessageData` when streaming, and finished by one
`EndOfMessage`; then command mode again, starting with whatever the client pipelined
after the end marker.

`next_event` returns NEED_DATA when it needs more bytes, and CLOSED once the client's
input has ended (a command line cut off by the end of input is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import CLOSED, NEED_DATA
from .smtp import split_command
from .smtp_message import WireReceiver

MAX_COMMAND_LINE = 4096  # RFC 5321 says 512; extensions (SIZE, DSN, SMTPUTF8) add more


@dataclass(slots=True)
class Command:
    verb: str  # upper case
    argument: str  # stripped; undecodable bytes kept as surrogates
    line: bytes  # the whole line without its line end


@dataclass(slots=True)
class BadCommand:
    """A line that is no command; the session answers it with this reply."""

    code: int
    enhanced: str
    text: str


@dataclass(slots=True)
class MessageData:
    """Forwardable bytes of a streamed message, in order."""

    pieces: list[bytes]


@dataclass(slots=True)
class EndOfMessage:
    """The message is complete: `message.size`, `.overflow`, and when not streamed
    `.body` (as forwarded) and `.content` (unstuffed, if asked for)."""

    message: WireReceiver


LINE_TOO_LONG = BadCommand(500, "5.5.2", "Line too long")
BARE_CR_OR_NUL = BadCommand(501, "5.5.2", "Bare CR or NUL in command")


class SmtpServerMachine:
    def __init__(self) -> None:
        self._buffer = b""
        self._position = 0  # where the unread part of _buffer starts
        self._discarding = False  # inside an overlong line
        self._ended = False
        self._message: WireReceiver | None = None

    def receive_data(self, data: bytes) -> None:
        """The client's next bytes, at any time; b"" for the end of its input."""
        if not data:
            self._ended = True
        elif self._message is not None and not self._message.done:
            self._message.feed(data)
        elif self._position >= len(self._buffer):
            self._buffer, self._position = data, 0
        else:
            self._buffer = self._buffer[self._position :] + data
            self._position = 0

    def next_event(self):
        if self._message is not None:
            return self._message_event()
        buffer, position = self._buffer, self._position
        end = buffer.find(b"\n", position)
        if end < 0:
            if len(buffer) - position > MAX_COMMAND_LINE:
                self._discarding = True
                self._buffer, self._position = b"", 0
            return CLOSED if self._ended else NEED_DATA
        self._position = end + 1
        if self._discarding or end + 1 - position > MAX_COMMAND_LINE:
            self._discarding = False
            return LINE_TOO_LONG
        line = buffer[position : end + 1].rstrip(b"\r\n")
        if b"\r" in line or b"\0" in line:
            return BARE_CR_OR_NUL
        verb, argument = split_command(line)
        return Command(verb, argument, line)

    def start_message(self, limit: int, content: bool = False, stream: bool = False) -> None:
        """The client was told to send its message (354): what follows is message data,
        `limit` bytes at most as forwarded."""
        message = self._message = WireReceiver(limit, content=content, stream=stream)
        pending = self.take_pending()
        if pending:
            message.feed(pending)

    def _message_event(self):
        message = self._message
        if message.streaming:
            pieces = message.take_pieces()
            if pieces:
                return MessageData(pieces)
        if message.done:
            self._message = None
            # What the client sent after the end marker, then what arrived since.
            self._buffer, self._position = message.leftover + self.take_pending(), 0
            return EndOfMessage(message)
        return CLOSED if self._ended else NEED_DATA

    @property
    def in_message(self) -> bool:
        return self._message is not None

    def take_pending(self) -> bytes:
        """Remove and return what was received and not yet read as commands; used
        before STARTTLS, where anything pipelined in plaintext must be dropped."""
        pending = self._buffer[self._position :]
        self._buffer, self._position = b"", 0
        return pending
