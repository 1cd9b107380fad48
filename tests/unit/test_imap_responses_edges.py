"""mailproxy.protocol.imap_responses at its edges: quotes and escapes cut by a read, the
hold limit at its value, a keyword right before a bare LF, what is left unread, the
text around a response code, a capability response without its line end, and the
memory a long data line takes while it streams."""

from __future__ import annotations

import tracemalloc

import pytest

from mailproxy.protocol.events import CLOSED, NEED_DATA, ProtocolViolation
from mailproxy.protocol.imap_responses import (
    ImapResponseReader,
    Passthrough,
    Tagged,
    Untagged,
    capability_list,
    rewrite_capability_response,
)
from tests.support.chunks import drive, in_reads, splits

END = b"z9 OK end\r\n"
END_EVENT = Tagged("z9", "OK", None, "end", END)
FAKE = b"a1 OK fake\r\n"  # a tagged line: a response of its own, or message text in a literal
FAKE_EVENT = Tagged("a1", "OK", None, "fake", FAKE)
TOO_LONG = ProtocolViolation("response line too long")
LIMIT = 100  # a small hold limit
LONG = b"x" * 70  # puts what follows past the bytes that classify a response, where a read may cut it


def read_all(chunks, **options) -> list:
    return drive(ImapResponseReader(**options), chunks)


def relayed_as_is(events) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, Passthrough))


def picked_out(events) -> list:
    return [event for event in events if not isinstance(event, Passthrough)]


# --- quotes and escapes cut by a read ---------------------------------------------------

# (a data line longer than the classifying head, relayed as it is with what follows it;
# the responses picked out after it)
QUOTED = [
    # \" inside a quoted string: the string runs to the line end, so {12} is text there
    # and the next line is a response.
    (b'* STATUS "' + LONG + b'\\" {12}\r\n', [FAKE_EVENT]),
    # \" and then the closing quote: {12} is outside the string and announces a literal.
    (b'* STATUS "' + LONG + b'\\"" {12}\r\n' + FAKE + b")\r\n", []),
    # \\ and then the closing quote: the same.
    (b'* STATUS "' + LONG + b'\\\\" {12}\r\n' + FAKE + b")\r\n", []),
    # A quoted string that opens after the head.
    (b"* STATUS " + LONG + b' "x {12}" {3}\r\nabc)\r\n', []),
]


@pytest.mark.parametrize("relayed, picked", QUOTED)
def test_quotes_and_escapes_cut_by_a_read_keep_their_meaning(relayed, picked):
    """A read may end right after a backslash or right before a quote: the next read
    goes on with the quoting where the last one left it."""
    stream = relayed + b"".join(event.raw for event in picked) + END
    for chunks in splits(stream):
        events = read_all(chunks)
        assert relayed_as_is(events) == relayed, chunks
        assert picked_out(events) == picked + [END_EVENT, CLOSED], chunks


def test_a_quote_right_after_a_literal_opens_a_quoted_string():
    """Where a literal ends, the response goes on with its next byte, whatever it is."""
    head = b"* 1 FETCH (BODY[1] {3}\r\n"
    rest = b'abc"x" BODY[2] {2}\r\nzz)\r\n'
    for chunks in splits(head + rest + END):
        events = read_all(chunks)
        assert picked_out(events) == [Untagged("FETCH", 1, head), END_EVENT, CLOSED], chunks
        assert relayed_as_is(events) == rest, chunks


# --- line ends and the hold limit ------------------------------------------------------


@pytest.mark.parametrize(
    "raw, event",
    [
        (b"* BYE\n", Untagged("BYE", None, b"* BYE\n")),
        (b"* OK\n", Untagged("OK", None, b"* OK\n")),
        (b"* CAPABILITY\n", Untagged("CAPABILITY", None, b"* CAPABILITY\n")),
        (b"* 3 EXISTS\n", Untagged("EXISTS", 3, b"* 3 EXISTS\n")),
    ],
)
def test_a_keyword_right_before_a_bare_lf_is_picked_out(raw, event):
    for chunks in splits(raw + END):
        assert read_all(chunks) == [event, END_EVENT, CLOSED], chunks


def test_the_default_hold_limit_is_dovecots_longest_line():
    """64 KiB with the line end (Dovecot's imap_max_line_length): held whole; a byte
    more is a violation."""
    longest = 64 * 1024
    line = b"a1 OK " + b"x" * (longest - 8) + b"\r\n"
    assert read_all(in_reads(line, 4096)) == [Tagged("a1", "OK", None, "x" * (longest - 8), line), CLOSED]
    over = b"a1 OK " + b"x" * (longest - 7) + b"\r\n"
    assert read_all(in_reads(over + END, 4096)) == [TOO_LONG, END_EVENT, CLOSED]


def test_hold_limit_bytes_without_a_line_end_are_over_the_limit_at_once():
    """The limit counts the line end, so a line whose first hold_limit bytes hold none
    is too long already: it is reported without waiting for another byte."""
    reader = ImapResponseReader(hold_limit=LIMIT)
    reader.receive_data(b"a1 OK " + b"x" * (LIMIT - 6))
    assert reader.next_event() == TOO_LONG
    reader = ImapResponseReader(hold_limit=LIMIT)
    head = b"* 9 FETCH (" + b"x" * (LIMIT - 11)
    reader.receive_data(head)
    assert reader.next_event() == Untagged("FETCH", 9, head)  # noted, the rest to follow
    assert read_all([b"a1 OK " + b"x" * (LIMIT - 6)], hold_limit=LIMIT) == [TOO_LONG, CLOSED]


# --- what is left unread ----------------------------------------------------------------


def test_pending_tells_whether_bytes_wait_unread():
    """After the upstream's go-ahead to STARTTLS, bytes behind it came in plaintext and
    must not be read as if they came through TLS: `pending` tells the session so."""
    go_ahead = b"a1 OK Begin TLS negotiation now\r\n"
    reader = ImapResponseReader()
    assert reader.pending is False
    reader.receive_data(go_ahead + b"* OK planted\r\n")
    assert reader.pending is True
    assert reader.next_event() == Tagged("a1", "OK", None, "Begin TLS negotiation now", go_ahead)
    assert reader.pending is True
    assert reader.take_pending() == b"* OK planted\r\n"
    assert reader.pending is False
    assert reader.take_pending() == b""

    reader.receive_data(b"a2 OK done\r\n")
    assert reader.next_event() == Tagged("a2", "OK", None, "done", b"a2 OK done\r\n")
    assert reader.pending is False  # each response read to its end


def test_what_was_dropped_of_a_reported_line_is_not_pending():
    reader = ImapResponseReader(hold_limit=LIMIT)
    reader.receive_data(b"a1 OK " + b"x" * LIMIT)
    assert reader.next_event() == TOO_LONG
    assert reader.next_event() is NEED_DATA
    assert reader.pending is False
    reader.receive_data(b"xx\r\n" + END)
    assert reader.next_event() == END_EVENT
    assert reader.pending is False


# --- the text around a response code, capability lists -------------------------------------


@pytest.mark.parametrize(
    "line, code, text",
    [
        (b"a1 NO [ALERT]  two spaces\r\n", "ALERT", " two spaces"),  # one space separates them
        (b"a1 NO [ALERT]none\r\n", "ALERT", "none"),
        (b"a1 NO [] empty\r\n", "", "empty"),  # closed brackets: a code, if an empty one
    ],
)
def test_the_text_after_a_response_code_is_all_there(line, code, text):
    assert read_all([line]) == [Tagged("a1", "NO", code, text, line), CLOSED]


def test_a_capability_response_without_its_line_end():
    assert capability_list(b"* CAPABILITY IMAP4rev1 IDLE") == ["IMAP4rev1", "IDLE"]
    assert rewrite_capability_response(b"* CAPABILITY IMAP4rev1 STARTTLS") == b"* CAPABILITY IMAP4rev1"


# --- memory ---------------------------------------------------------------------------------


def test_a_long_data_line_that_trickles_in_is_not_kept():
    """A data line has no length limit (a SEARCH in a big mailbox), and may come a few
    bytes a read: the reader keeps what tells where a literal starts, not the line."""
    head = b"* SEARCH" + b" 1" * 40  # more than the bytes that classify it
    read = b" 1234567" * 2
    reader = ImapResponseReader()
    reader.receive_data(head)
    assert [reader.next_event() for _ in range(2)] == [Passthrough(head), NEED_DATA]
    tracemalloc.start()
    try:
        for _ in range(16384):  # 256 KiB
            reader.receive_data(read)
            assert reader.next_event() == Passthrough(read)
            assert reader.next_event() is NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # Python's own first-run allocations are a few KiB of it
    reader.receive_data(b"\r\n" + END)
    assert [reader.next_event() for _ in range(3)] == [Passthrough(b"\r\n"), END_EVENT, NEED_DATA]
