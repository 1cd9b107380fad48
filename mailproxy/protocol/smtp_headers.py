"""A message's header section as the proxy touches it, with no I/O: the lines the proxy
and its plugins add on top (`header_block`), and the fields only the proxy may write,
dropped from what the client sent (`HeaderFieldFilter`). Both work on the wire form:
CRLF lines, dot-stuffed.
"""

from __future__ import annotations

import functools
import re


def header_block(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("utf-8") for name, value in headers)


# The empty line after a line, CRLF or LF: where a header section ends.
_END_OF_HEADER = re.compile(rb"\n\r?\n")


@functools.lru_cache(maxsize=64)  # a filter is made per message, for the same few names
def _lowered(names: tuple[str, ...]) -> tuple[frozenset[bytes], re.Pattern[bytes]]:
    """The names in lower case, and a pattern that finds any of them: one search costs
    less than an `in` for each."""
    lowered = frozenset(name.lower().encode("ascii") for name in names)
    return lowered, re.compile(b"|".join(re.escape(name) for name in sorted(lowered)))


class HeaderFieldFilter:
    """Drops the named fields from a message's header section as the message streams
    by (wire form: CRLF lines, dot-stuffed), folded lines included; the body passes
    untouched. For fields that only the proxy may write, such as its X-Spam-* lines: a
    client's own would sit beside them and say otherwise.

    Linear and bounded: only the start of a line is held, until its field name is known
    (its ":"), at most `MAX_NAME` bytes; a longer start of a line is no field to drop."""

    MAX_NAME = 998  # RFC 5322 2.1.1: a line of a header section at most

    def __init__(self, names) -> None:
        self._names, self._any_name = _lowered(tuple(names))
        self._in_header = True
        self._held = b""  # the start of a line whose field is not known yet
        self._line: str | None = None  # "keep" or "drop" within a line; None at its start
        self._field = "keep"  # the last field's fate, for its folded lines

    def feed(self, data: bytes) -> bytes:
        """What of `data` (and of the bytes held before it) goes on now."""
        if not self._in_header:
            return data
        if self._held:
            data, self._held = self._held + data, b""
        if self._line is None and self._names_nowhere_in_header(data):
            self._in_header = False  # no line to drop: all of it goes on as it is
            return data
        out = []
        position, size = 0, len(data)
        while position < size:
            if self._line is None and not self._start_line(data, position):
                if not self._in_header:  # the empty line: the body follows, untouched
                    out.append(data[position:])
                    break
                self._held = data[position:]  # not known yet: wait for more
                break
            end = data.find(b"\n", position)
            stop = size if end < 0 else end + 1
            if self._line == "keep":
                out.append(data[position:stop])
            if end >= 0:
                self._line = None
            position = stop
        return b"".join(out)

    def _names_nowhere_in_header(self, data: bytes) -> bool:
        """Whether the rest of the header section ends in `data`, which starts at the
        start of a line, and holds none of the names (anywhere: a field to drop is a
        line that starts with one). Most messages: one look at their header section,
        not a step per line."""
        if data.startswith((b"\r\n", b"\n")):
            return True
        end = _END_OF_HEADER.search(data)
        return end is not None and self._any_name.search(data[:end.start()].lower()) is None

    def _start_line(self, data: bytes, position: int) -> bool:
        """Decide the fate of the line starting at `position`; False when the header
        section ended there or the line cannot be told yet."""
        if data[position:position + 1] in (b" ", b"\t"):  # folded: its field's fate
            self._line = self._field
            return True
        colon = data.find(b":", position, position + self.MAX_NAME + 1)
        end = data.find(b"\n", position)
        if end >= 0 and (colon < 0 or end < colon):  # a line with no field name
            if data[position:end + 1] in (b"\r\n", b"\n"):
                self._in_header = False
                return False
            self._line = self._field = "keep"
        elif colon >= 0:
            name = data[position:colon].strip().lower()
            self._line = self._field = "drop" if name in self._names else "keep"
        elif len(data) - position > self.MAX_NAME:
            self._line = self._field = "keep"
        else:
            return False
        return True

    def finish(self) -> bytes:
        """What is still held at the end of the message: the start of a line that never
        ended, which names no field."""
        held, self._held = self._held, b""
        return held
