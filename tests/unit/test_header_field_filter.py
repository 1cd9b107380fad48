"""The header section as the proxy touches it: the lines it adds (`header_block`), and
the named fields HeaderFieldFilter drops, folded lines included, however the message is
cut into reads; nothing else changes."""

from __future__ import annotations

from hypothesis import example, given, settings
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


_LINES = st.sampled_from([
    b"From: <a@example.org>", b"X-Spam-Flag: YES", b"x-spam-status : No", b"\tfolded", b" X-Spam-Flag: folded",
    b"no colon", b"", b"Subject: x-spam-flag", b"X-Spam-Flagged: 1", b".X-Spam-Flag: stuffed", b"X-Spam-Flag:",
])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_LINES, st.sampled_from([b"\r\n", b"\n", b"\r"])), max_size=10))
@example([(b"X-Spam-Flag:", b"\r\n"), (b"", b"\r\n"), (b"X-Spam-Flag: in the body", b"\r\n")])
@example([(b"Subject: x", b"\n"), (b"x-spam-status: Yes", b"\n"), (b"", b"\n")])
def test_a_message_read_whole_loses_what_it_loses_read_byte_by_byte(lines):
    # Read whole, a header section without the names is passed on in one step; read a
    # byte at a time, each line is looked at on its own. Both must drop the same lines.
    message = b"".join(line + end for line, end in lines)
    assert filtered([message]) == filtered([message[i:i + 1] for i in range(len(message))])
