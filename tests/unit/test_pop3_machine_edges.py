"""mailproxy.protocol.pop3 at its edges: each bound exactly at its value and past it,
however the bytes arrive; what of a body is held back, and nothing more; the greeting,
which no command asked for; and what is left unread."""

from __future__ import annotations

import pytest

from mailproxy.protocol.pop3 import (
    CLOSED,
    NEED_DATA,
    Collected,
    Command,
    End,
    Passthrough,
    Pop3ReplyReader,
    Pop3ServerMachine,
    ProtocolViolation,
    Status,
)
from tests.support.chunks import drive, in_reads, splits

LONGEST = 512  # bytes in a command line, its line end included
SASL_LONGEST = 8192  # bytes in a SASL response line
STATUS_LONGEST = LONGEST + 512  # bytes in a status line from the upstream
AUTH = Command("AUTH", ("PLAIN",), b"AUTH PLAIN")
OK = Status(True, b"+OK\r\n")
TOO_LONG = ProtocolViolation("status line too long")


def no_status_line(shown: bytes) -> ProtocolViolation:
    return ProtocolViolation(f"not a POP3 status line: {shown!r}")


def reader_expecting(*expectations) -> Pop3ReplyReader:
    reader = Pop3ReplyReader()
    for expectation in expectations:
        reader.expect(*expectation)
    return reader


# --- the client's side ------------------------------------------------------------------


def read_then_take_pending(chunks) -> tuple[list, bytes]:
    """The client's events up to the end of its input (after AUTH PLAIN, answered "+ ",
    the next line is a SASL response), and then what take_pending hands over."""
    machine = Pop3ServerMachine()

    def after(event) -> None:
        if event == AUTH:
            machine.expect_sasl()

    return drive(machine, chunks, after), machine.take_pending()


@pytest.mark.parametrize("before, bound", [(b"", LONGEST), (b"AUTH PLAIN\r\n", SASL_LONGEST)])
@pytest.mark.parametrize("read_size", [1, 100, 1 << 20])
def test_a_line_waiting_for_its_end_is_kept_up_to_the_bound_and_dropped_past_it(before, bound, read_size):
    """What a client sent of a line whose end has not come is held, and handed over by
    take_pending (a piped session sends it on to the upstream), until it is more than
    the bound; then it is dropped, and the line is answered "Line too long" at its end."""
    for size, kept in ((bound, True), (bound + 1, False)):
        partial = b"A" * size
        events, pending = read_then_take_pending([before, *in_reads(partial, read_size)])
        assert events == ([AUTH] if before else []) + [CLOSED]
        assert pending == (partial if kept else b""), size


# --- the upstream's side ----------------------------------------------------------------


@pytest.mark.parametrize(
    "size, event",
    [(STATUS_LONGEST - 1, NEED_DATA), (STATUS_LONGEST, TOO_LONG), (STATUS_LONGEST + 1, TOO_LONG),
     (3 * STATUS_LONGEST, TOO_LONG)],
)
def test_a_status_line_without_its_end_is_refused_as_soon_as_it_cannot_fit(size, event):
    """In one read or in many: once the bytes without a line end are as many as the
    bound, no line end can make them a status line within it."""
    start = b"+OK " + b"x" * (size - 4)
    for chunks in ([start], in_reads(start, 1), in_reads(start, 1000)):
        reader = Pop3ReplyReader()
        for chunk in chunks:
            reader.receive_data(chunk)
            got = reader.next_event()
            if got is not NEED_DATA:
                break
        assert got == event, len(chunks)


@pytest.mark.parametrize("over", [1, 2, 100])
@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_a_status_line_past_the_bound_is_refused_when_it_comes_whole_in_one_read(over, line_end):
    line = b"-ERR " + b"x" * (STATUS_LONGEST + over - 5 - len(line_end)) + line_end
    assert len(line) == STATUS_LONGEST + over
    assert drive(reader_expecting((False,)), [line + b"+OK\r\n"]) == [TOO_LONG, CLOSED]


@pytest.mark.parametrize(
    "wire, events",
    [
        (b"\n", [no_status_line(b"\n")]),
        (b"\n+OK\r\n", [no_status_line(b"\n")]),
        (b"\r\n", [no_status_line(b"\r\n")]),
        (b"+OK\r\n\n", [OK, no_status_line(b"\n")]),
    ],
)
def test_an_empty_line_where_a_status_line_belongs_is_no_status_line(wire, events):
    for chunks in splits(wire):
        assert drive(reader_expecting((False,), (False,)), chunks) == events + [CLOSED], chunks


FORTY = b"+OKAY" + b"y" * 33 + b"\r\n"
IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE] Dovecot ready.\r\n"


@pytest.mark.parametrize(
    "line, shown",
    [
        (FORTY, FORTY),
        (FORTY[:-2] + b"y\r\n", FORTY[:-2] + b"y\r"),
        (IMAP_GREETING, b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN"),
    ],
)
def test_a_line_that_is_no_status_line_is_named_by_its_first_40_bytes(line, shown):
    assert len(shown) == 40
    assert drive(Pop3ReplyReader(), [line]) == [no_status_line(shown), CLOSED]


def read_after_greeting(chunks, *expectations) -> list:
    """The reader's events as a session drives it: nothing expected of the greeting,
    and the expectations of the commands queued once it is read."""
    reader, queued = Pop3ReplyReader(), False

    def after(event) -> None:
        nonlocal queued
        if not queued:  # the first event: the greeting
            for expectation in expectations:
                reader.expect(*expectation)
            queued = True

    return drive(reader, chunks, after)


def test_the_greeting_is_one_line_and_the_first_expectation_is_the_first_commands():
    """The greeting comes before any command, with nothing expected of it: a +OK
    greeting has no body, and what follows it is the reply to the first command."""
    stream = b"+OK ready\r\n+OK\r\nTOP\r\n.\r\n"
    assert len(stream) <= 24  # so that `splits` cuts it twice everywhere
    greeting = Status(True, b"+OK ready\r\n")
    for chunks in splits(stream):
        events = read_after_greeting(chunks, (True, True))  # CAPA's: a body, collected
        assert events == [greeting, OK, Collected([b"TOP\r\n"]), CLOSED], chunks


@pytest.mark.parametrize(
    "wire, expectations, events",
    [
        (b"+ hello\r\n", [], [no_status_line(b"+ hello\r\n")]),  # as the greeting
        (b"+OK\r\n+ \r\n", [(False,)], [OK, no_status_line(b"+ \r\n")]),  # after the last reply asked for
    ],
)
def test_a_challenge_line_nobody_asked_for_is_no_status_line(wire, expectations, events):
    """A "+ " line is a SASL challenge only while an AUTH, expected with `sasl`, waits
    for its reply."""
    for chunks in splits(wire):
        assert drive(reader_expecting(*expectations), chunks) == events + [CLOSED], chunks


@pytest.mark.parametrize(
    "body, passed_on",
    [
        (b"x", b"x"),
        (b"abc", b"abc"),
        (b"abc\r", b"abc\r"),
        (b"abc\r\n", b"abc\r"),  # the LF may begin the "." line
        (b"abc\r\n.", b"abc\r"),
        (b"abc\r\n.\r", b"abc\r"),
        (b"abc\r\n..", b"abc\r\n.."),  # a stuffed dot: no "." line
        (b"abc\r\n.x", b"abc\r\n.x"),
        (b"abc\r\n.\rx", b"abc\r\n.\rx"),
        (b".", b""),  # the status line's LF and a dot
        (b".\r", b""),
        (b"..", b".."),
    ],
)
def test_a_body_is_passed_on_at_once_but_for_what_may_begin_its_dot_line(body, passed_on):
    """However the reads fall, every body byte that cannot be part of the "." line
    that ends the body has been passed on when the reader asks for more."""
    for chunks in splits(b"+OK\r\n" + body):
        events = drive(reader_expecting((True,)), chunks)
        assert events[0] == OK and events[-1] is CLOSED, chunks
        assert all(isinstance(event, Passthrough) for event in events[1:-1]), chunks
        assert b"".join(event.data for event in events[1:-1]) == passed_on, chunks


def test_pending_tells_whether_bytes_wait_unread_between_replies():
    """After the upstream's go-ahead to STLS, bytes behind it came in plaintext and
    must not be read as if they came through TLS: `pending` tells the session so."""
    reader = reader_expecting((False,))
    assert reader.pending is False
    reader.receive_data(b"+OK Begin TLS negotiation now.\r\n-ERR planted\r\n")
    assert reader.pending is True
    assert reader.next_event() == Status(True, b"+OK Begin TLS negotiation now.\r\n")
    assert reader.pending is True
    assert reader.take_pending() == b"-ERR planted\r\n"
    assert reader.pending is False

    reader = reader_expecting((False,), (True,))
    reader.receive_data(b"+OK\r\n+OK\r\nbody\r\n.\r\n")
    assert [reader.next_event() for _ in range(4)] == [OK, OK, Passthrough(b"body\r\n"), End()]
    assert reader.pending is False  # each reply read to its end
