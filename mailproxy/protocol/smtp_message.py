"""An SMTP message on the wire, with no I/O.

  * `DataReceiver`: a message after `354`, ended only by <CR><LF>.<CR><LF>, bounded in size.
  * `wire_body`: a received message made safe to forward: bare CR and bare LF become
    CRLF and dot-stuffing is redone, so no smuggled end-of-data can reach the upstream.
    `WireNormaliser` does it a piece at a time, and `WireReceiver` (a DataReceiver)
    with it as the message arrives, bounding the size that will be forwarded.
  * `unstuff`: the message as plugins read it. The header section's own handling is
    in `smtp_headers.py`.
"""

from __future__ import annotations

import io

from .smtp import CRLF

END_OF_DATA = b"\r\n.\r\n"


class DataReceiver:
    """Receive a message after `354` until <CR><LF>.<CR><LF>, bounded in size.

    The end marker is looked for in the bytes as the client sent them, and nothing else
    ends the message. The bytes that may begin it (a "." or ".<CR>" after a line end,
    last in what has arrived) are held back until the next read tells, so whatever is
    passed on as content is content. This class keeps the message as the client sent it
    (`WireReceiver` keeps it as it will be forwarded), appending each read to one buffer:
    no read waits for a copy of the whole message, and a client trickling a byte at a
    time costs no object per byte. Past `limit` bytes the content is discarded while
    the end is still looked for, so an oversized message is answered cleanly instead of
    cutting the session.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0  # bytes of content, stored or not
        self.overflow = False
        self.leftover = b""  # bytes after the end marker (pipelined commands)
        self._buffer = io.BytesIO()
        # The last bytes of the stream; at first the CRLF of the DATA command line, so
        # that ".\r\n" at the very start ends the message.
        self._tail = CRLF
        self._held = b""  # the end of `_tail` that may begin the end marker
        self._body: bytes | None = None

    @property
    def done(self) -> bool:
        return self._body is not None

    def feed(self, data: bytes) -> bool:
        """Take the next bytes from the client; return True once the end was seen."""
        if self.done:
            raise RuntimeError("message already complete")
        # Where the content ends in `data`: just past the CRLF that begins the marker. At
        # or before 0 when that CRLF came earlier; the bytes held back are then the
        # marker's own ".\r" or ".".
        probe = self._tail + data[:4]
        at = probe.find(END_OF_DATA)
        if at >= 0:
            end = at + 2 - len(self._tail)
        else:
            at = data.find(END_OF_DATA)
            if at < 0:
                self._pass_on(data)
                return False
            end = at + 2
        if end > 0:
            self._take(self._held + data[:end])
        self.leftover = data[end + 3 :]
        self._take_end()
        # BytesIO hands over its own buffer here, without a copy.
        self._body = b"" if self.overflow else self._buffer.getvalue()
        self._buffer = io.BytesIO()
        return True

    def _pass_on(self, data: bytes) -> None:
        """No end marker yet: pass on all but what may begin one."""
        self._tail = (self._tail + data[-4:])[-4:]
        hold = 2 if self._tail.endswith(b"\r\n.\r") else 1 if self._tail.endswith(b"\r\n.") else 0
        stream = self._held + data if self._held else data
        if len(stream) > hold:
            self._take(stream[: len(stream) - hold] if hold else stream)
        self._held = stream[len(stream) - hold :] if hold else b""

    def _take(self, piece: bytes) -> None:
        """Bytes that are certainly part of the message, in order."""
        self._store(piece)

    def _take_end(self) -> None:
        """The message is complete."""

    def _store(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.overflow:
            return
        if self.size > self.limit:
            self.overflow = True
            self._discard()
        else:
            self._keep(piece)

    def _keep(self, piece: bytes) -> None:
        self._buffer.write(piece)

    def _discard(self) -> None:
        self._buffer = io.BytesIO()

    @property
    def body(self) -> bytes:
        """The message (ending in CRLF, or empty). Here as the client sent it, dot-stuffed."""
        if self._body is None:
            raise RuntimeError("message not complete")
        return self._body


class WireReceiver(DataReceiver):
    """A DataReceiver that keeps the message as it will be forwarded (`wire_body` of
    what the client sent), normalising each read as it arrives, so the work per read is
    bounded and a message is never held in the form the client sent.

    `size` and `limit` count the forwarded bytes, which bare line ends make larger and
    dropped dot-stuffing smaller than what the client sent. Once over the limit nothing
    is normalised any more, and `size` goes on counting the bytes as received.

    With `content`, the message is also unstuffed as it arrives (what `smtp_data` hooks
    read, `unstuff(body)`); until a line starts with a dot that is the body itself.
    With `stream`, nothing is kept: each read's forwardable bytes wait in `take_pieces`.
    """

    def __init__(self, limit: int, content: bool = False, stream: bool = False) -> None:
        super().__init__(limit)
        self._normaliser = WireNormaliser()
        self._keeps_content = content
        self._unstuffer = _Unstuffer() if content else None
        self._unstuffed: bytes | None = None  # None: the body itself
        # Streaming: the forwardable pieces are handed out (`take_pieces`), not kept.
        self._pieces: list[bytes] | None = [] if stream else None

    @property
    def streaming(self) -> bool:
        return self._pieces is not None

    def take_pieces(self) -> list[bytes]:
        """Streaming: the forwardable bytes that arrived since the last call."""
        pieces, self._pieces = self._pieces, []
        return pieces

    def _take(self, piece: bytes) -> None:
        if self.overflow:
            self._store(piece)
            return
        for out in self._normaliser.feed(piece):
            self._store(out)

    def _take_end(self) -> None:
        if not self.overflow:
            for out in self._normaliser.finish():
                self._store(out)
        if self._unstuffer is not None and not self.overflow:
            self._unstuffed = self._unstuffer.value()
        self._unstuffer = None

    def _keep(self, piece: bytes) -> None:
        if self._pieces is not None:
            self._pieces.append(piece)
            return
        if self._unstuffer is not None:
            self._unstuffer.feed(piece, self._buffer)
        super()._keep(piece)

    def _discard(self) -> None:
        super()._discard()
        if self._pieces is not None:
            self._pieces = []
        self._unstuffer = None

    @property
    def content(self) -> bytes:
        """The message without its dot-stuffing; for a receiver made with `content`."""
        if not self._keeps_content:
            raise RuntimeError("content was not kept")
        return self.body if self._unstuffed is None else self._unstuffed


class _Unstuffer:
    """`unstuff`, a piece of the forwarded message at a time. Until a line starts with
    a dot the content is the message itself, and nothing is kept here."""

    def __init__(self) -> None:
        self._buffer: io.BytesIO | None = None
        self._line_start = True

    def feed(self, piece: bytes, before: io.BytesIO) -> None:
        """Take the next piece; `before` holds the message up to it."""
        if not piece:
            return
        at_line_start, self._line_start = self._line_start, piece[-1:] == b"\n"
        if (at_line_start and piece[:1] == b".") or b"\n." in piece:
            if self._buffer is None:  # the content so far is the message so far
                self._buffer = io.BytesIO()
                with before.getbuffer() as message:
                    self._buffer.write(message)
            piece = piece.replace(b"\n.", b"\n")
            if at_line_start and piece[:1] == b".":
                piece = piece[1:]
        if self._buffer is not None:
            self._buffer.write(piece)

    def value(self) -> bytes | None:
        """The content, or None if it is the message itself."""
        return None if self._buffer is None else self._buffer.getvalue()


_CR, _LF, _DOT = b"\r\n."


class WireNormaliser:
    """`wire_body` a piece at a time: feed the message in any slices, then `finish`; the
    pieces returned, joined, are `wire_body` of the whole.

    Each piece takes a few passes of bytes methods. A piece that needs no change comes
    back as it came (or sliced), never split inside a CRLF. Only one byte waits for the
    next piece: a CR, which may be half of a CRLF, or a dot first on its line, which is
    stuffing unless a second dot follows.
    """

    def __init__(self) -> None:
        self._carry = b""  # b"\r", b"." or nothing
        self._line_start = True  # the next byte starts a line

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        out: list[bytes] = []
        start = self._settle_carry(data, out)
        end = len(data)
        carry = b""
        if end > start:
            if data[-1] == _CR:
                carry, end = b"\r", end - 1
            elif data[-1] == _DOT and self._starts_line(data, start, end - 1):
                carry, end = b".", end - 1
        if end > start:
            if converted := self._convert(data, start, end):  # a lone dot may leave nothing
                out.append(converted)
            self._line_start = data[end - 1] in (_CR, _LF)
        self._carry = carry
        return out

    def finish(self) -> list[bytes]:
        """The end of the message: an unterminated last line gets its CRLF."""
        unterminated = self._carry or not self._line_start
        self._carry, self._line_start = b"", True
        return [CRLF] if unterminated else []

    def _settle_carry(self, data: bytes, out: list) -> int:
        """Decide the byte carried over with the first of `data`; return how many of
        `data` that took."""
        carry, self._carry = self._carry, b""
        if carry == b"\r":
            out.append(CRLF)
            self._line_start = True
            return 1 if data[0] == _LF else 0
        if carry == b".":  # first on its line
            self._line_start = False
            if data[0] == _DOT:
                out.append(b"..")
                return 1
        return 0

    def _starts_line(self, data: bytes, start: int, index: int) -> bool:
        return self._line_start if index == start else data[index - 1] in (_CR, _LF)

    def _convert(self, data: bytes, start: int, end: int) -> bytes:
        """data[start:end], which ends neither in a CR nor in a dot first on its line
        unless the byte after it (in `data`) is not a LF or a dot."""
        if self._unchanged(data, start, end):
            return data if start == 0 and end == len(data) else data[start:end]
        text = data[start:end].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Unstuff every line, then stuff it again: a first dot goes unless another follows.
        if self._line_start and text[:1] == b"." and text[1:2] != b".":
            text = text[1:]
        if b"\n." in text:
            text = text.replace(b"\n.", b"\n").replace(b"\n.", b"\n..")
        return text.replace(b"\n", b"\r\n")

    def _unchanged(self, data: bytes, start: int, end: int) -> bool:
        """No bare CR or LF, and every line that starts with a dot starts with two."""
        crlf = data.count(b"\r\n", start, end)
        if data.count(b"\r", start, end) != crlf or data.count(b"\n", start, end) != crlf:
            return False
        if self._line_start and data[start] == _DOT and data[start + 1 : start + 2] != b".":
            return False
        return data.find(b"\n.", start, end) < 0 or (
            data.count(b"\n.", start, end) == data.count(b"\n..", start, end)
        )


def has_bare_line_ends(body: bytes) -> bool:
    crlf = body.count(b"\r\n")
    return body.count(b"\n") != crlf or body.count(b"\r") != crlf


def wire_body(body: bytes) -> bytes:
    """The client's dot-stuffed message as it may go to the upstream.

    Every line ending becomes CRLF, lines are unstuffed then stuffed again, so a bare
    <LF>.<LF> or <CR>.<CR> inside the message stays content and cannot end the DATA at
    the upstream (CVE-2023-51764/51765/51766); an unterminated last line gets a CRLF. A
    message that needs no change (CRLF only, every leading dot doubled) is returned as
    is. `WireReceiver` does the same a read at a time as the message arrives.
    """
    normaliser = WireNormaliser()
    pieces = normaliser.feed(body) + normaliser.finish()
    if not pieces:
        return body
    if len(pieces) == 1 and pieces[0] is body:
        return body
    return b"".join(pieces)


def unstuff(wire: bytes) -> bytes:
    """A dot-stuffed CRLF message as its content (what plugins read).

    The first dot of every line that starts with one is removed, whether or not a second
    dot follows (RFC 5321 4.5.2): that is what the upstream stores, and a plugin must not
    see `.Subject:` where the upstream sees a `Subject:` header.
    """
    if not wire.startswith(b".") and b"\n." not in wire:
        return wire
    content = wire.replace(b"\r\n.", b"\r\n")
    return content[1:] if content.startswith(b".") else content
