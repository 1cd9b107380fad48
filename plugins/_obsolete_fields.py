"""Header fields in RFC 5322's obsolete syntax (4.5.3): spaces or tabs between the name
and the colon, "Subject : hi". Receivers must read them as fields, and Postfix's header
parser does. The email package instead ends the header block at such a line and takes
it, and every field after it, for body: a Subject rule would miss it, and a Content-Type
after it (the message's own, or a part's) would go unseen, so that an .exe attachment
passed the file name rules. `read_as_fields` writes each such field of a header block
without the spaces before its colon, so that the parser reads the message as mail
programs do.

The header blocks are found as the parser finds them: the message's start; after each
delimiter line of a boundary that a header block declared; and, where a header block
declares a message/* type (a part of a multipart/digest does by default), right after
it, for the message inside. Only what the parser will read is walked, and nothing of a
message without a space or tab before a colon (most mail: two searches).
"""

from __future__ import annotations

import re
from email.message import Message

# A line the parser keeps in a header block (the email package's headerRE): a field, a
# "From " line, a folded line.
_KEPT_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[ \t]")
# A field in the obsolete syntax; the group is what is dropped.
_OBSOLETE_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]++([ \t]++):")
_CONTENT_TYPE = re.compile(rb"content-type[ \t]*+:", re.IGNORECASE)
_LINE = re.compile(rb"[^\r\n]*+(?:\r\n|\r|\n)?")
_LINE_BREAKS = frozenset({b"\r\n", b"\r", b"\n"})
# A line that starts with "--", after the line break before it (CR or LF: a CRLF
# matches at its LF), without its own line break: that is the next line's to match by.
# Searched for by its first character, which a regular expression does many times
# faster than it tries "the start of a line" at each byte.
_DASH_LINE = re.compile(rb"[\r\n]--([^\r\n]*+)")


def read_as_fields(message: bytes, until: int | None) -> tuple[bytes, int]:
    """`message` with every field in the obsolete syntax of each header block that
    starts before `until` (where the parser stops reading it) written without the
    spaces before its colon, and where the parser stops in what is returned. `until`
    None: only the message's own header block, and not its Content-Type (it may be too
    big to read). A message with none such is returned as it is."""
    if b" :" not in message and b"\t:" not in message:
        return message, until or 0
    walk = _Walk(message)
    if until is None:
        walk.header_block(0, len(message))
        return walk.result(), 0
    start: int | None = 0
    in_digest = False
    while start is not None and start < until:
        end, content_type = walk.header_block(start, until)
        declared, boundary = _declared_type(content_type, in_digest)
        if boundary is not None:
            walk.boundaries[boundary] = declared == "multipart/digest"
        if declared.startswith("message/") and end > start:
            start, in_digest = end, False  # the message inside: its header block is next
            continue
        start, in_digest = walk.next_part(end)
    return walk.result(), until - walk.dropped


class _Walk:
    """The message's header blocks, walked in order, and the message as it is rewritten."""

    def __init__(self, message: bytes) -> None:
        self._message = message
        self._out = bytearray()
        self._copied = 0  # message[:_copied] is in _out
        self.dropped = 0
        self.boundaries: dict[str, bool] = {}  # each declared, and whether its parts are messages

    def header_block(self, start: int, until: int) -> tuple[int, bytes | None]:
        """Walk the header block at `start`, up to `until` at most: where it ends (after
        its empty line, or at the first line that is no field or is a delimiter line)
        and the value of its first Content-Type field (None: it has none)."""
        message = self._message
        position, content_type, value_from = start, None, None
        while position < until:
            line_end = _LINE.match(message, position).end()
            if line_end - position <= 2 and message[position:line_end] in _LINE_BREAKS:
                position = line_end  # the empty line: the block's last
                break
            if message[position] not in b" \t":
                if value_from is not None and content_type is None:
                    content_type = message[value_from:position]
                if message.startswith(b"--", position) and self._delimiter(position, line_end) is not None:
                    break  # the parser ends the part here, whatever the line looks like
                obsolete = _OBSOLETE_FIELD.match(message, position, line_end)
                if obsolete is not None:
                    self._drop(*obsolete.span(1))
                elif _KEPT_LINE.match(message, position, line_end) is None:
                    break  # the parser ends the block here: this line starts the body
                if value_from is None:
                    field = _CONTENT_TYPE.match(message, position, line_end)
                    value_from = None if field is None else field.end()
            position = line_end
        if value_from is not None and content_type is None:
            content_type = message[value_from:position]
        return position, content_type

    def next_part(self, start: int) -> tuple[int | None, bool]:
        """Where the header block of the next part starts, after the first delimiter
        line (not a closing one) of a declared boundary from `start` (a line start) on,
        and whether that boundary's parts are messages; None when no such line follows.
        A boundary is declared in a header block that ends after the message's start,
        so `start` is not 0 when there is one."""
        if not self.boundaries:
            return None, False
        for line in _DASH_LINE.finditer(self._message, start - 1):  # from the line break before it
            boundary = self._delimiter(line.start() + 1, line.end())
            if boundary in self.boundaries:
                return _LINE.match(self._message, line.start() + 1).end(), self.boundaries[boundary]
        return None, False

    def _delimiter(self, start: int, end: int) -> str | None:
        """The boundary of the line from `start` (after its "--") to `end` when it is a
        delimiter line of a declared one, with "--" after it when it is a closing one."""
        text = self._message[start + 2:end].rstrip(b" \t\r\n").decode("ascii", "surrogateescape")
        if text in self.boundaries or (text.endswith("--") and text[:-2] in self.boundaries):
            return text
        return None

    def _drop(self, start: int, end: int) -> None:
        self._out += self._message[self._copied:start]
        self._copied = end
        self.dropped += end - start

    def result(self) -> bytes:
        if not self.dropped:
            return self._message
        self._out += self._message[self._copied:]
        return bytes(self._out)


def content_type_field(value: bytes) -> Message:
    """A message whose only header is a Content-Type field of `value` (as it came,
    folded lines and all): the email package's reading of its type and parameters."""
    field = Message()
    field["Content-Type"] = value.decode("ascii", "surrogateescape").lstrip(" \t")
    return field


def _declared_type(value: bytes | None, in_digest: bool) -> tuple[str, str | None]:
    """The type a header block declares by its first Content-Type field's `value`, as
    the parser reads it, and the boundary of a multipart. A part of a digest without
    one is a message/rfc822 (RFC 2046 5.1.5)."""
    if value is None:
        return ("message/rfc822" if in_digest else "text/plain"), None
    field = content_type_field(value.rstrip(b"\r\n"))
    declared = field.get_content_type()
    if not declared.startswith("multipart/"):
        return declared, None
    try:
        return declared, field.get_boundary()
    except Exception:  # malformed RFC 2231 parameters: the parser gives up on it too
        return declared, None
