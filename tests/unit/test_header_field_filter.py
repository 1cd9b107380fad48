"""The header section as the proxy touches it: the lines it adds (`header_block`), and
the named fields HeaderFieldFilter drops, folded lines included, however the message is
cut into reads; nothing else changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailproxy.protocol.smtp_headers import HeaderFieldFilter, header_block

NAMES = ["X-Spam-Flag", "X-Spam-Status"]
MESSAGE = (
    b"From: <a@example.org>\r\n"
    b"X-Spam-Flag: YES\r\n"
    b"\tstill the flag\r\n"
    b"Subject: x-spam-flag: not a field name here\r\n"
    b"x-spam-status : Yes,\r\n"
    b" score=99\r\n"
    b"X-Spam-Flagged: a longer name is another field\r\n"
    b"To: <b@example.test>\r\n"
    b"\r\n"
    b"X-Spam-Flag: YES in the body stays\r\n"
    b"..a stuffed line\r\n"
)
FILTERED = (
    b"From: <a@example.org>\r\n"
    b"Subject: x-spam-flag: not a field name here\r\n"
    b"X-Spam-Flagged: a longer name is another field\r\n"
    b"To: <b@example.test>\r\n"
    b"\r\n"
    b"X-Spam-Flag: YES in the body stays\r\n"
    b"..a stuffed line\r\n"
)


def filtered(pieces: list[bytes], names=NAMES) -> bytes:
    fields = HeaderFieldFilter(names)
    return b"".join(fields.feed(piece) for piece in pieces) + fields.finish()


def test_the_named_fields_and_their_folded_lines_leave_the_header_section_only():
    assert filtered([MESSAGE]) == FILTERED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(MESSAGE)), max_size=12))
def test_how_the_message_is_cut_into_reads_changes_nothing(cuts):
    bounds = [0, *sorted(cuts), len(MESSAGE)]
    assert filtered([MESSAGE[a:b] for a, b in zip(bounds, bounds[1:])]) == FILTERED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_a_message_without_those_names_passes_byte_for_byte(data):
    if b"x-spam" in data.lower():
        return
    assert filtered([data]) == data


def test_a_message_with_no_header_section_is_untouched():
    body = b"\r\nX-Spam-Flag: YES\r\n"
    assert filtered([body]) == body


def test_a_very_long_line_start_is_passed_on_without_waiting_for_it_to_end():
    fields = HeaderFieldFilter(NAMES)
    start = b"X" * 2000  # no ":" within a header line's length: no field to drop
    assert fields.feed(start) == start
    assert fields.feed(b": value\r\nX-Spam-Flag: YES\r\n\r\n") == b": value\r\n\r\n"


def test_a_last_line_that_never_ends_is_given_back_at_the_finish():
    fields = HeaderFieldFilter(NAMES)
    assert fields.feed(b"Subject: a\r\nX-Spam") == b"Subject: a\r\n"
    assert fields.finish() == b"X-Spam"


def test_header_block():
    assert header_block([("X-Spam-Score", "3.5"), ("X-Tag", "é")]) == (
        b"X-Spam-Score: 3.5\r\nX-Tag: \xc3\xa9\r\n"
    )
    assert header_block([]) == b""
