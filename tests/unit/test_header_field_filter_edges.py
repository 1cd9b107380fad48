"""HeaderFieldFilter at its edges: a field name of up to MAX_NAME (998) bytes is a name
and one of 999 is not, whichever read its colon comes in; a line start is held while it
is at most 998 bytes long, counted from where the line starts, and passed on once it is
longer; a line at the very start of a read (a bare LF, a leading ":") is told the same
as anywhere else."""

from __future__ import annotations

import pytest

from mailproxy.protocol.smtp_headers import HeaderFieldFilter
from tests.unit.test_header_field_filter import NAMES, filtered

BEFORE = b"Subject: a\r\n"
AFTER = b"To: <b@example.test>\r\n\r\nbody\r\n"


def long_field(length: int) -> tuple[str, bytes]:
    """A field name of `length` bytes, and a line of that field."""
    name = "n" * length
    return name, name.encode("ascii") + b": value\r\n"


def cut_near_the_colon(message: bytes, colon: int) -> list[list[bytes]]:
    """The message whole, and cut in two at each point from a few bytes before its
    colon to a few after."""
    cuts = [[message]]
    cuts += [[message[:at], message[at:]] for at in range(colon - 3, colon + 4)]
    return cuts


@pytest.mark.parametrize("length", [997, 998])
def test_a_field_name_of_up_to_998_bytes_is_dropped_wherever_the_reads_cut(length):
    name, line = long_field(length)
    message = BEFORE + line + AFTER
    for pieces in cut_near_the_colon(message, len(BEFORE) + length):
        assert filtered(pieces, names=[name]) == BEFORE + AFTER


def test_a_999_byte_start_before_the_colon_is_no_field_name_and_passes_wherever_the_reads_cut():
    name, line = long_field(999)
    message = BEFORE + line + AFTER
    for pieces in cut_near_the_colon(message, len(BEFORE) + 999):
        assert filtered(pieces, names=[name]) == message


def test_a_line_start_of_998_bytes_is_held_and_its_field_dropped_when_the_colon_follows():
    name, line = long_field(998)
    fields = HeaderFieldFilter([name])
    assert fields.feed(line[:998]) == b""
    assert fields.feed(line[998:] + AFTER) == AFTER
    assert fields.finish() == b""


def test_a_line_start_of_999_bytes_is_passed_on_at_once_and_its_field_kept():
    name, line = long_field(999)
    fields = HeaderFieldFilter([name])
    assert fields.feed(line[:999]) == line[:999]
    assert fields.feed(line[999:] + AFTER) == line[999:] + AFTER
    assert fields.finish() == b""


def test_a_held_line_start_is_measured_from_where_its_line_starts_not_from_the_read():
    long_line = b"Subject: " + b"a" * 985 + b"\r\n"  # the read grows past 998 bytes
    fields = HeaderFieldFilter(NAMES)
    assert fields.feed(long_line + b"X-Spam") == long_line
    assert fields.feed(b"-Flag: YES\r\n\r\nbody\r\n") == b"\r\nbody\r\n"
    assert fields.finish() == b""


def test_a_bare_lf_at_the_very_start_of_a_read_ends_the_header_section():
    body = b"\nX-Spam-Flag: YES\n"
    fields = HeaderFieldFilter(NAMES)
    assert fields.feed(body) == body
    fields = HeaderFieldFilter(NAMES)
    assert fields.feed(b"Subject: a\n") == b"Subject: a\n"
    assert fields.feed(body) == body
    assert fields.finish() == b""


def test_a_line_starting_with_a_colon_at_the_start_of_a_read_is_kept_at_once():
    fields = HeaderFieldFilter(NAMES)
    message = b": no field name\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n"
    assert fields.feed(message) == b": no field name\r\n\r\nbody\r\n"
    assert fields.finish() == b""


@pytest.mark.parametrize(
    "pieces",
    [
        [b": nameless\r\n" + BEFORE + AFTER],
        [BEFORE + b": nameless\r\n" + AFTER],
        [BEFORE, b": nameless\r\n" + AFTER],
    ],
)
def test_the_empty_field_name_when_named_drops_a_line_starting_with_a_colon_wherever_it_falls(
    pieces,
):
    assert filtered(pieces, names=[""]) == BEFORE + AFTER
