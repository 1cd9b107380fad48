"""Header fields in RFC 5322's obsolete syntax (4.5.3): spaces or tabs between the name
and the colon, "Subject : hi". Receivers must read them as fields, and Postfix's and
Thunderbird's header parsers do. The email package instead ends the header block at
such a line and takes it, and every field after it, for body: a Subject rule would
miss it, and a Content-Type after it (the message's own, or a part's) would go unseen,
so that an .exe attachment passed the file name rules. (To it, "From : a@b" is an mbox
"From " line, and the From field is dropped.)

`read_as_fields` writes every line of that form without the spaces before its colon,
wherever it stands: which lines are header lines is the parser's to tell (after a
delimiter line, in a message/rfc822 part, in each block of a message/delivery-status,
...), and any of them may be one. The message's structure must not change, so no
delimiter line may appear or go: a line that starts with "--" becomes a field named
"X-" and the rest ("--a : b" becomes "X---a: b"), unless it is, as written, a delimiter
line of one of the message's boundaries, which is left as it is. A line of a text
part written so is rewritten too: a body rule sees "Total: 3" for "Total : 3" in such a
message.
"""

from __future__ import annotations

import re
from typing import Iterator

# A line in the obsolete syntax, after the line break before it (CR or LF: a CRLF
# matches at its LF); the group is what is dropped. Searched for by its first
# character, which a regular expression does many times faster than it tries "the
# start of a line" at each byte.
_OBSOLETE_LINE = re.compile(rb"[\r\n][\x21-\x39\x3b-\x7e]++([ \t]++):")
_OBSOLETE_FIRST_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]++([ \t]++):")
_LINE_REST = re.compile(rb"[^\r\n]*+")
_NOT_A_DELIMITER = b"X-"  # before a line that starts with "--"


def read_as_fields(message: bytes, until: int | None, boundaries: set[bytes]) -> tuple[bytes, int]:
    """`message` with every line in the obsolete syntax before `until` (where the
    parser stops reading it; None: all of it, which is read for its header block only)
    written as a field (see above), given the `boundaries` of the message; and where
    the parser stops in what is returned. The copy is built in one buffer: a message
    of millions of such lines costs no object per line."""
    end = len(message) if until is None else until
    out = bytearray()
    copied = 0  # message[:copied] is in `out`
    for line_start, (start, stop) in _obsolete_lines(message, end):
        if not message.startswith(b"--", line_start):
            out += message[copied:start]  # the spaces dropped
        elif _is_delimiter(_LINE_REST.match(message, line_start + 2)[0], boundaries):
            continue
        else:
            out += message[copied:line_start] + _NOT_A_DELIMITER + message[line_start:start]
        copied = stop
    if not copied:
        return message, end
    out += message[copied:]
    return bytes(out), end + len(out) - len(message)


def _obsolete_lines(message: bytes, end: int) -> Iterator[tuple[int, tuple[int, int]]]:
    """Where each line in the obsolete syntax before `end` starts, and where the spaces
    before its colon are."""
    first = _OBSOLETE_FIRST_LINE.match(message, 0, end)
    if first is not None:
        yield 0, first.span(1)
    for match in _OBSOLETE_LINE.finditer(message, 0, end):
        yield match.start() + 1, match.span(1)


def _is_delimiter(text: bytes, boundaries: set[bytes]) -> bool:
    """Whether "--" + `text` is a delimiter line (a closing one too) of one of
    `boundaries`, as the parser tells one: spaces and tabs after it do not count."""
    text = text.rstrip(b" \t")
    return text in boundaries or (text.endswith(b"--") and text[:-2] in boundaries)
