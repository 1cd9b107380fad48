"""The proxy's upstream side reading what an IMAP server sends (ImapResponseReader), and the
capability-list rewriting: wire-byte tables split at every position, streaming bounds, and
properties against a model of valid traffic and against arbitrary bytes, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailproxy.protocol.events import CLOSED, NEED_DATA
from mailproxy.protocol.imap_responses import (
    HEAD,
    HOLD_LIMIT,
    Continuation,
    ImapResponseReader,
    Passthrough,
    ProtocolViolation,
    Tagged,
    Untagged,
    capability_list,
    rewrite_capabilities,
    rewrite_capability_response,
)
from tests.support.chunks import chunked, drive, in_reads, splits

END = b"z9 OK end\r\n"
END_EVENT = Tagged("z9", "OK", None, "end", END)
CUT_OFF = ProtocolViolation("input ended inside a response")


def read_all(chunks, hold_limit: int = HOLD_LIMIT) -> list:
    """Every event up to CLOSED, the reader driven as the session drives it."""
    return drive(ImapResponseReader(hold_limit), chunks)


def joined(events) -> list:
    """The events with adjacent Passthrough data joined: where reads fall may cut the
    relayed bytes differently, never anything else."""
    out: list = []
    for event in events:
        if isinstance(event, Passthrough) and out and isinstance(out[-1], Passthrough):
            out[-1] = Passthrough(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def relayed(events) -> bytes:
    """Every byte the events hand out, in order."""
    return b"".join(
        event.data if isinstance(event, Passthrough) else event.raw
        for event in events
        if isinstance(event, (Passthrough, Tagged, Continuation, Untagged))
    )


def untagged(raw: bytes, kind: str, number: int | None = None, code: str | None = None) -> Untagged:
    return Untagged(kind, number, raw, code)


def tagged(raw: bytes, tag: str, status: str, code: str | None, text: str) -> Tagged:
    return Tagged(tag, status, code, text, raw)


def passed(raw: bytes) -> Passthrough:
    return Passthrough(raw)


# --- wire bytes -----------------------------------------------------------------------

GREETING = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN]"
            b" Dovecot ready.\r\n")
FAKE = b"a1 OK fake\r\n"  # a tagged line inside a literal: message text, nothing more

# (what the upstream sent, the events read from it, adjacent Passthrough joined)
RESPONSES = [
    # Tagged: held, parsed; a trailing {n} is text.
    (b"a1 OK done\r\n", [tagged(b"a1 OK done\r\n", "a1", "OK", None, "done")]),
    (b"a1 NO Mailbox doesn't exist: x {5}\r\n",
     [tagged(b"a1 NO Mailbox doesn't exist: x {5}\r\n", "a1", "NO", None, "Mailbox doesn't exist: x {5}")]),
    (b"A0002 bad {0}\r\n", [tagged(b"A0002 bad {0}\r\n", "A0002", "BAD", None, "{0}")]),
    (b"a.1 OK [READ-WRITE] Select completed.\r\n",
     [tagged(b"a.1 OK [READ-WRITE] Select completed.\r\n", "a.1", "OK", "READ-WRITE", "Select completed.")]),
    (b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
     [tagged(b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
             "a1", "OK", "CAPABILITY IMAP4rev1 IDLE", "Logged in")]),
    (b"a1 OK\r\n", [tagged(b"a1 OK\r\n", "a1", "OK", None, "")]),
    (b"a1 NO [UNAVAILABLE]\n", [tagged(b"a1 NO [UNAVAILABLE]\n", "a1", "NO", "UNAVAILABLE", "")]),
    (b"a1 NO [ALERT unclosed\r\n", [tagged(b"a1 NO [ALERT unclosed\r\n", "a1", "NO", None, "[ALERT unclosed")]),
    (b"a1 OK caf\xc3\xa9 \xff\r\n", [tagged(b"a1 OK caf\xc3\xa9 \xff\r\n", "a1", "OK", None, "caf\u00e9 \udcff")]),
    # Continuations: held whole; never a literal.
    (b"+ idling\r\n", [Continuation(b"+ idling\r\n")]),
    (b"+\r\n", [Continuation(b"+\r\n")]),
    (b"+ Ready for literal data {5}\r\n", [Continuation(b"+ Ready for literal data {5}\r\n")]),
    # Untagged status responses: picked out, code parsed, a trailing {n} is text.
    (GREETING, [untagged(GREETING, "OK", code=GREETING[6:GREETING.index(b"]")].decode())]),
    (b"* OK Still here\r\n", [untagged(b"* OK Still here\r\n", "OK")]),
    (b"* ok [READ-ONLY] x\r\n", [untagged(b"* ok [READ-ONLY] x\r\n", "OK", code="READ-ONLY")]),
    (b"* OK [READ-WRITE]\r\n", [untagged(b"* OK [READ-WRITE]\r\n", "OK", code="READ-WRITE")]),
    (b"* NO [ALERT] quota {5}\r\n", [untagged(b"* NO [ALERT] quota {5}\r\n", "NO", code="ALERT")]),
    (b"* BAD x ~{3}\r\n", [untagged(b"* BAD x ~{3}\r\n", "BAD")]),
    (b"* BYE Server shutting down {12}\r\n", [untagged(b"* BYE Server shutting down {12}\r\n", "BYE")]),
    (b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
     [untagged(b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n", "PREAUTH", code="CAPABILITY IMAP4rev1")]),
    (b"* BYE\r\n", [untagged(b"* BYE\r\n", "BYE")]),
    # Untagged data picked out.
    (b"* CAPABILITY IMAP4rev1 STARTTLS\r\n", [untagged(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n", "CAPABILITY")]),
    (b"* capability IMAP4rev1\n", [untagged(b"* capability IMAP4rev1\n", "CAPABILITY")]),
    (b"* ENABLED CONDSTORE\r\n", [untagged(b"* ENABLED CONDSTORE\r\n", "ENABLED")]),
    (b"* VANISHED (EARLIER) 1:3,5\r\n", [untagged(b"* VANISHED (EARLIER) 1:3,5\r\n", "VANISHED")]),
    (b"* 23 EXISTS\r\n", [untagged(b"* 23 EXISTS\r\n", "EXISTS", 23)]),
    (b"* 0 exists\r\n", [untagged(b"* 0 exists\r\n", "EXISTS", 0)]),
    (b"* 4 EXPUNGE\r\n", [untagged(b"* 4 EXPUNGE\r\n", "EXPUNGE", 4)]),
    (b"* 7 FETCH (FLAGS (\\Seen) UID 9)\r\n", [untagged(b"* 7 FETCH (FLAGS (\\Seen) UID 9)\r\n", "FETCH", 7)]),
    (b'* LIST (\\HasNoChildren \\Trash) "." Trash\r\n',
     [untagged(b'* LIST (\\HasNoChildren \\Trash) "." Trash\r\n', "LIST")]),
    (b'* LSUB (\\trash) "/" "Deleted Items"\r\n', [untagged(b'* LSUB (\\trash) "/" "Deleted Items"\r\n', "LSUB")]),
    # FETCH with a literal: noted at the literal, which is counted through; what is inside
    # it is message text, whatever it looks like.
    (b"* 1 FETCH (UID 5 BODY[] {12}\r\n" + FAKE + b")\r\n",
     [untagged(b"* 1 FETCH (UID 5 BODY[] {12}\r\n", "FETCH", 1), passed(FAKE + b")\r\n")]),
    (b"* 2 FETCH (BINARY[] ~{5}\r\n\0a\0\r\0 UID 3)\r\n",
     [untagged(b"* 2 FETCH (BINARY[] ~{5}\r\n", "FETCH", 2), passed(b"\0a\0\r\0 UID 3)\r\n")]),
    (b"* 3 FETCH (BODY[1] {0}\r\n BODY[2] {5}\r\n{3}\r\n)\r\n",  # two literals, one empty
     [untagged(b"* 3 FETCH (BODY[1] {0}\r\n", "FETCH", 3), passed(b" BODY[2] {5}\r\n{3}\r\n)\r\n")]),
    (b"* 4 FETCH (BODY[] {2}\r\n\r\n)\n", [untagged(b"* 4 FETCH (BODY[] {2}\r\n", "FETCH", 4), passed(b"\r\n)\n")]),
    (b"* 5 FETCH (BODY[] {4}\n* 6\n)\r\n", [untagged(b"* 5 FETCH (BODY[] {4}\n", "FETCH", 5), passed(b"* 6\n)\r\n")]),
    # Everything else is relayed; literals in it are counted through.
    (b"* SEARCH 2 3 5\r\n", [passed(b"* SEARCH 2 3 5\r\n")]),
    (b"* SEARCH\r\n", [passed(b"* SEARCH\r\n")]),
    (b"* 1 RECENT\r\n", [passed(b"* 1 RECENT\r\n")]),
    (b"* FLAGS (\\Answered \\Seen)\r\n", [passed(b"* FLAGS (\\Answered \\Seen)\r\n")]),
    (b'* LIST (\\HasNoChildren) "." INBOX\r\n', [passed(b'* LIST (\\HasNoChildren) "." INBOX\r\n')]),
    (b'* LIST () "/" {12}\r\n' + FAKE + b"\r\n", [passed(b'* LIST () "/" {12}\r\n' + FAKE + b"\r\n")]),
    # A \Trash name sent as a literal is relayed, not interpreted.
    (b'* LIST (\\Trash) "/" {12}\r\n' + FAKE + b"\r\n", [passed(b'* LIST (\\Trash) "/" {12}\r\n' + FAKE + b"\r\n")]),
    (b"* METADATA INBOX (/private/comment ~{12}\r\n" + FAKE + b")\r\n",
     [passed(b"* METADATA INBOX (/private/comment ~{12}\r\n" + FAKE + b")\r\n")]),
    # Quotes: a {n} inside a quoted string is text; \" and \\ are escapes.
    (b'* ID ("name" "x {5}")\r\n', [passed(b'* ID ("name" "x {5}")\r\n')]),
    (b'* STATUS "a\\" {12}\r\n' + FAKE,  # an unterminated quoted string: no literal
     [passed(b'* STATUS "a\\" {12}\r\n'), tagged(FAKE, "a1", "OK", None, "fake")]),
    (b'* STATUS "a\\\\" {12}\r\n' + FAKE + b" (MESSAGES 1)\r\n",  # an escaped backslash, then a literal
     [passed(b'* STATUS "a\\\\" {12}\r\n' + FAKE + b" (MESSAGES 1)\r\n")]),
    (b'* X "\\"" {3}\r\n"{}\r\n', [passed(b'* X "\\"" {3}\r\n"{}\r\n')]),
    (b"* X {3}x\r\n", [passed(b"* X {3}x\r\n")]),  # a marker only at the line end
    (b"* X {}\r\n* X {a}\r\n", [passed(b"* X {}\r\n* X {a}\r\n")]),
    (b"* X {3+}\r\n", [passed(b"* X {3+}\r\n")]),  # non-sync literals are the client's
    (b"* X {123456789012345678901}\r\n", [passed(b"* X {123456789012345678901}\r\n")]),  # over number64
    (b"* 5 FETCHED x\r\n", [passed(b"* 5 FETCHED x\r\n")]),
    (b"* OKAY\r\n", [passed(b"* OKAY\r\n")]),
    (b"* \r\n", [passed(b"* \r\n")]),
]


@pytest.mark.parametrize("wire, events", RESPONSES)
def test_responses_every_split(wire, events):
    for chunks in splits(wire + END):
        assert joined(read_all(chunks)) == events + [END_EVENT, CLOSED], chunks
    for chunks in splits(END + wire):
        assert joined(read_all(chunks)) == [END_EVENT] + events + [CLOSED], chunks


def test_every_byte_is_relayed_once_in_order():
    stream = b"".join(wire for wire, _ in RESPONSES)
    for size in (1, 3, 64, 1000, len(stream)):
        events = read_all(in_reads(stream, size))
        assert events[-1] is CLOSED
        assert not [e for e in events if isinstance(e, ProtocolViolation)]
        assert relayed(events) == stream
    assert joined(events) == joined([e for _, evs in RESPONSES for e in evs] + [CLOSED])


def test_a_trailing_number_in_braces_on_a_status_line_does_not_desynchronise():
    """Dovecot echoes the client's mailbox name at the end of a tagged NO: taken for a
    literal, the next 5 bytes would be swallowed and `* 1 EXISTS` and the tagged OK lost."""
    stream = b"a1 NO Mailbox doesn't exist: x {5}\r\n* 1 EXISTS\r\na2 OK [READ-ONLY] Examine completed\r\n"
    expected = [
        Tagged("a1", "NO", None, "Mailbox doesn't exist: x {5}", b"a1 NO Mailbox doesn't exist: x {5}\r\n"),
        Untagged("EXISTS", 1, b"* 1 EXISTS\r\n"),
        Tagged("a2", "OK", "READ-ONLY", "Examine completed", b"a2 OK [READ-ONLY] Examine completed\r\n"),
        CLOSED,
    ]
    for chunks in splits(stream):
        assert joined(read_all(chunks)) == expected, chunks
    # The same from an untagged status line and a continuation.
    for line in (b"* NO x {5}\r\n", b"* BYE x {5}\r\n", b"+ x {5}\r\n"):
        assert joined(read_all([line + stream]))[1:] == expected


def test_a_fake_tagged_line_inside_a_literal_stays_passthrough():
    body = b"Subject: x\r\n\r\n" + FAKE + b"* BYE fake\r\n+ fake\r\n"
    stream = b"* 1 FETCH (BODY[] {%d}\r\n" % len(body) + body + b")\r\na1 OK Fetch completed.\r\n"
    expected = [
        Untagged("FETCH", 1, b"* 1 FETCH (BODY[] {%d}\r\n" % len(body)),
        Passthrough(body + b")\r\n"),
        Tagged("a1", "OK", None, "Fetch completed.", b"a1 OK Fetch completed.\r\n"),
        CLOSED,
    ]
    for chunks in splits(stream):
        assert joined(read_all(chunks)) == expected, chunks


def test_literal8_carries_nul_bytes():
    body = b"\0\0" + FAKE + b"\0"
    head = b"* 1 FETCH (UID 4 BINARY[] ~{%d}\r\n" % len(body)
    stream = head + body + b" BINARY.SIZE[] 15)\r\na1 OK done\r\n"
    expected = [
        Untagged("FETCH", 1, head),
        Passthrough(body + b" BINARY.SIZE[] 15)\r\n"),
        Tagged("a1", "OK", None, "done", b"a1 OK done\r\n"),
        CLOSED,
    ]
    for chunks in splits(stream):
        assert joined(read_all(chunks)) == expected, chunks


# --- streaming: nothing long is held --------------------------------------------------------


def test_a_300_kb_search_line_streams_read_by_read():
    line = b"* SEARCH" + b"".join(b" %d" % n for n in range(1, 52_000)) + b"\r\n"
    assert len(line) > 300_000
    reader = ImapResponseReader()
    for read in in_reads(line, 4096):
        reader.receive_data(read)
        # Each read is handed on at once (the first after its HEAD bytes classify it).
        assert reader.next_event() == Passthrough(read)
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b"a1 OK Search completed\r\n")
    assert reader.next_event() == Tagged("a1", "OK", None, "Search completed", b"a1 OK Search completed\r\n")


def test_a_10_mb_literal_is_counted_through_not_held():
    head = b"* 1 FETCH (UID 7 BODY[] {10485760}\r\n"
    reader = ImapResponseReader()
    reader.receive_data(head)
    assert reader.next_event() == Untagged("FETCH", 1, head)
    assert reader.next_event() is NEED_DATA
    read = (FAKE + b"x" * 4082 + b"\r\n") * 16  # 64 KiB of message text, fake lines in it
    assert len(read) == 65536
    for _ in range(10485760 // len(read)):
        reader.receive_data(read)
        assert reader.next_event() == Passthrough(read)
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b")\r\na1 OK Fetch completed.\r\n")
    assert reader.next_event() == Passthrough(b")\r\n")
    assert reader.next_event() == Tagged("a1", "OK", None, "Fetch completed.", b"a1 OK Fetch completed.\r\n")
    assert reader.next_event() is NEED_DATA


def test_a_literal_and_what_follows_in_the_same_read():
    stream = b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n* 2 EXISTS\r\n"
    reader = ImapResponseReader()
    reader.receive_data(stream)
    assert [reader.next_event() for _ in range(5)] == [
        Untagged("FETCH", 1, b"* 1 FETCH (BODY[] {3}\r\n"),
        Passthrough(b"abc"),  # the literal by count, then the rest of the response
        Passthrough(b")\r\n"),
        Untagged("EXISTS", 2, b"* 2 EXISTS\r\n"),
        NEED_DATA,
    ]


def test_an_untagged_response_waits_for_its_head_only():
    reader = ImapResponseReader()
    reader.receive_data(b"* SEARCH 1 2")
    assert reader.next_event() is NEED_DATA  # fewer than HEAD bytes and no line end yet
    reader.receive_data(b" 3" * HEAD)
    assert reader.next_event() == Passthrough(b"* SEARCH 1 2" + b" 3" * HEAD)
    reader.receive_data(b"\r\n* 1 EXISTS")
    assert reader.next_event() == Passthrough(b"\r\n")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\r\n")
    assert reader.next_event() == Untagged("EXISTS", 1, b"* 1 EXISTS\r\n")


# --- what is over the hold limit ------------------------------------------------------------

LIMIT = 100  # a small hold limit, so lines can be over it and still be split everywhere


@pytest.mark.parametrize(
    "line",
    [
        b"a1 OK " + b"x" * LIMIT + b"\r\n",
        b"a1 NO " + b"x" * (LIMIT - 7) + b"\r\n",  # one byte over
        b"+ " + b"x" * LIMIT + b"\r\n",
        b"x" * (3 * LIMIT) + b"\n",
    ],
)
def test_an_overlong_held_line_is_a_violation_and_dropped_to_its_end(line):
    expected = [ProtocolViolation("response line too long"), END_EVENT, CLOSED]
    for chunks in (*splits(line + END), in_reads(line + END, 7)):
        assert read_all(chunks, LIMIT) == expected, chunks
    fits = b"a1 NO " + b"x" * (LIMIT - 8) + b"\r\n"  # exactly at the limit
    assert len(fits) == LIMIT
    assert read_all([fits], LIMIT) == [Tagged("a1", "NO", None, "x" * (LIMIT - 8), fits), CLOSED]


def test_the_default_hold_limit():
    line = b"a1 OK " + b"x" * (HOLD_LIMIT - 8) + b"\r\n"
    assert len(line) == HOLD_LIMIT
    assert read_all(in_reads(line, 1000))[0] == Tagged("a1", "OK", None, "x" * (HOLD_LIMIT - 8), line)
    over = line[:-2] + b"x\r\n"
    assert read_all(in_reads(over + END, 1000)) == [ProtocolViolation("response line too long"), END_EVENT, CLOSED]


@pytest.mark.parametrize(
    "wire, events",
    [
        # Picked-out responses over the limit are relayed, not interpreted...
        (b"* CAPABILITY" + b" X" * LIMIT + b"\r\n", [passed(b"* CAPABILITY" + b" X" * LIMIT + b"\r\n")]),
        (b'* LIST (\\Trash) "/" ' + b"x" * LIMIT + b"\r\n",
         [passed(b'* LIST (\\Trash) "/" ' + b"x" * LIMIT + b"\r\n")]),
        # ...a status line still has no literal...
        (b"* BYE " + b"x" * LIMIT + b" {12}\r\n" + FAKE,
         [passed(b"* BYE " + b"x" * LIMIT + b" {12}\r\n"), tagged(FAKE, "a1", "OK", None, "fake")]),
        # ...another line may have one...
        (b"* ENABLED " + b"x" * LIMIT + b" {12}\r\n" + FAKE + b"\r\n",
         [passed(b"* ENABLED " + b"x" * LIMIT + b" {12}\r\n" + FAKE + b"\r\n")]),
        # ...and a FETCH is noted with the bytes held, the rest following.
        (b"* 9 FETCH (FLAGS (" + b"\\Seen " * 20 + b") BODY[] {12}\r\n" + FAKE + b")\r\n",
         [untagged((b"* 9 FETCH (FLAGS (" + b"\\Seen " * 20)[:LIMIT], "FETCH", 9),
          passed((b"* 9 FETCH (FLAGS (" + b"\\Seen " * 20)[LIMIT:] + b") BODY[] {12}\r\n" + FAKE + b")\r\n")]),
        (b'* 9 FETCH (ENVELOPE ("' + b"x" * LIMIT + b' {12}")\r\n',  # the quote state carries on past the limit
         [untagged((b'* 9 FETCH (ENVELOPE ("' + b"x" * LIMIT)[:LIMIT], "FETCH", 9),
          passed((b'* 9 FETCH (ENVELOPE ("' + b"x" * LIMIT)[LIMIT:] + b' {12}")\r\n')]),
    ],
)
def test_picked_out_responses_over_the_hold_limit(wire, events):
    for chunks in splits(wire + END):
        assert joined(read_all(chunks, LIMIT)) == events + [END_EVENT, CLOSED], chunks


def test_a_hold_limit_below_the_head_is_refused():
    with pytest.raises(ValueError, match="at least 64"):
        ImapResponseReader(HEAD - 1)


# --- no IMAP response, and the end of input -------------------------------------------------

@pytest.mark.parametrize(
    "line, text",
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "malformed tagged response"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "malformed tagged response"),
        (b"\r\n", "malformed tagged response"),
        (b"\n", "malformed tagged response"),
        (b"a1 OKAY\r\n", "malformed tagged response"),
        (b"a1 PREAUTH x\r\n", "malformed tagged response"),
        (b"a1  OK x\r\n", "malformed tagged response"),
        (b"a\x001 OK x\r\n", "malformed tagged response"),
        (b"*OK x\r\n", "malformed untagged response"),
        (b"*\r\n", "malformed untagged response"),
        (b"*" + b"x" * 3 * HEAD + b"\r\n", "malformed untagged response"),
    ],
)
def test_a_line_that_is_no_response_is_a_violation_and_reading_goes_on(line, text):
    for chunks in splits(line + END):
        assert read_all(chunks) == [ProtocolViolation(text), END_EVENT, CLOSED], chunks


@pytest.mark.parametrize(
    "chunks, events",
    [
        ([], [CLOSED]),
        ([END], [END_EVENT, CLOSED]),
        ([b"a1 OK do"], [CUT_OFF, CLOSED]),  # a held line cut off is dropped
        ([b"+ idl"], [CUT_OFF, CLOSED]),
        ([b"*"], [CUT_OFF, CLOSED]),
        ([b"* 1 EXIS"], [CUT_OFF, CLOSED]),
        ([b"* 1 EXISTS\r"], [CUT_OFF, CLOSED]),
        ([b"* SEARCH " + b"1 " * HEAD], [passed(b"* SEARCH " + b"1 " * HEAD), CUT_OFF, CLOSED]),
        ([b"* 1 FETCH (BODY[] {5}\r\nab"],
         [untagged(b"* 1 FETCH (BODY[] {5}\r\n", "FETCH", 1), passed(b"ab"), CUT_OFF, CLOSED]),
        ([b"* 1 FETCH (BODY[] {2}\r\nab"],  # the literal complete, the response not
         [untagged(b"* 1 FETCH (BODY[] {2}\r\n", "FETCH", 1), passed(b"ab"), CUT_OFF, CLOSED]),
        ([b"HTTP/1.1 400"], [CUT_OFF, CLOSED]),
        ([b"x" * 2 * HOLD_LIMIT], [ProtocolViolation("response line too long"), CLOSED]),  # reported once
    ],
)
def test_the_end_of_input(chunks, events):
    assert joined(read_all(chunks)) == events
    stream = b"".join(chunks)
    assert joined(read_all(in_reads(stream, 3 if len(stream) < 1000 else 4096))) == events


def test_closed_stays_closed():
    reader = ImapResponseReader()
    reader.receive_data(END + b"a2 O")
    reader.receive_data(b"")
    assert [reader.next_event() for _ in range(5)] == [END_EVENT, CUT_OFF, CLOSED, CLOSED, CLOSED]


def test_bytes_may_arrive_before_the_events_are_read():
    """A read may be handed over at any time, also while a literal is being counted."""
    stream = b"* 1 FETCH (BODY[] {12}\r\n" + FAKE + b")\r\n* 1 EXPUNGE\r\n" + END
    expected = joined(read_all([stream]))
    for chunks in splits(stream):
        reader = ImapResponseReader()
        events = []
        for chunk in filter(None, chunks):
            reader.receive_data(chunk)
            if (event := reader.next_event()) is not NEED_DATA:
                events.append(event)
        reader.receive_data(b"")
        for _ in range(len(stream)):
            events.append(event := reader.next_event())
            if event is CLOSED:
                break
        assert joined(events) == expected, chunks


# --- capability lists -------------------------------------------------------------------------

UNKNOWN = ["IMAP4rev2", "XLIST", "X-DOVECOT", "STARTTLSX", "AUTHX", "AUTH", "COMPRESS", "NOTIFYX", "SASL-IRX",
           "UTF8=ACCEPT"]

# (the upstream's list, what the client sees of it after login)
CAPABILITY_LISTS = [
    (["IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+", "STARTTLS", "AUTH=PLAIN"],
     ["IMAP4rev1", "ID", "ENABLE", "IDLE", "LITERAL+"]),
    (["IMAP4rev1", "LOGINDISABLED", "AUTH=PLAIN", "AUTH=SCRAM-SHA-256-PLUS", "auth=login"], ["IMAP4rev1"]),
    (["IMAP4rev1", "COMPRESS=DEFLATE", "compress=zstd", "NOTIFY", "notify", "SORT", "THREAD=REFERENCES"],
     ["IMAP4rev1", "SORT", "THREAD=REFERENCES"]),
    # Unknown extensions, and ones that only look alike, are kept.
    (UNKNOWN, UNKNOWN),
    ([], []),
]


@pytest.mark.parametrize("caps, kept", CAPABILITY_LISTS)
def test_rewrite_capabilities(caps, kept):
    assert rewrite_capabilities(caps) == kept
    assert rewrite_capabilities(iter(caps)) == kept


def test_rewrite_capabilities_with_another_drop_list():
    caps = ["IMAP4rev1", "IDLE", "NOTIFY", "STARTTLS", "X-A", "X-B"]
    assert rewrite_capabilities(caps, drop=["idle", "x-*"]) == ["IMAP4rev1", "NOTIFY", "STARTTLS"]
    assert rewrite_capabilities(caps, drop=()) == caps


# (a response, the same with its list rewritten)
CAPABILITY_RESPONSES = [
    (b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN IDLE\r\n", b"* CAPABILITY IMAP4rev1 IDLE\r\n"),
    (b"* capability IMAP4rev1 NOTIFY\n", b"* capability IMAP4rev1\n"),
    (b"* CAPABILITY STARTTLS\r\n", b"* CAPABILITY\r\n"),
    (b"* CAPABILITY\r\n", b"* CAPABILITY\r\n"),
    (b"* CAPABILITY  IMAP4rev1   SASL-IR  X\r\n", b"* CAPABILITY IMAP4rev1 X\r\n"),
    (GREETING, b"* OK [CAPABILITY IMAP4rev1 ID ENABLE IDLE LITERAL+] Dovecot ready.\r\n"),
    (b"a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE NOTIFY SPECIAL-USE] Logged in\r\n",
     b"a1 OK [CAPABILITY IMAP4rev1 SPECIAL-USE] Logged in\r\n"),
    (b"A0001 ok [capability IMAP4rev1 AUTH=PLAIN]\r\n", b"A0001 ok [capability IMAP4rev1]\r\n"),
    (b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n", b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n"),
    (b"* BYE [CAPABILITY STARTTLS] bye {5}\r\n", b"* BYE [CAPABILITY] bye {5}\r\n"),
    # No capability list: as it was.
    (b"a1 OK [READ-WRITE] STARTTLS\r\n", b"a1 OK [READ-WRITE] STARTTLS\r\n"),
    (b"a1 OK CAPABILITY STARTTLS\r\n", b"a1 OK CAPABILITY STARTTLS\r\n"),
    (b"a1 OK [CAPABILITY STARTTLS\r\n", b"a1 OK [CAPABILITY STARTTLS\r\n"),
    (b"a1 OK [CAPABILITYX STARTTLS]\r\n", b"a1 OK [CAPABILITYX STARTTLS]\r\n"),
    (b"* CAPABILITYX STARTTLS\r\n", b"* CAPABILITYX STARTTLS\r\n"),
    (b"* ENABLED STARTTLS\r\n", b"* ENABLED STARTTLS\r\n"),
    (b"", b""),
]


@pytest.mark.parametrize("raw, rewritten", CAPABILITY_RESPONSES)
def test_rewrite_capability_response(raw, rewritten):
    assert rewrite_capability_response(raw) == rewritten
    assert capability_list(rewrite_capability_response(raw, drop=())) == capability_list(raw)


def test_capability_list():
    assert capability_list(GREETING) == [
        "IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+", "STARTTLS", "AUTH=PLAIN",
    ]
    assert capability_list(b"* CAPABILITY IMAP4rev1 X-\xff\r\n") == ["IMAP4rev1", "X-\udcff"]
    assert capability_list(b"* CAPABILITY\r\n") == []
    assert capability_list(b"a1 OK [READ-WRITE] done\r\n") is None
    assert rewrite_capability_response(b"* CAPABILITY IMAP4rev1 X-\xff\r\n") == b"* CAPABILITY IMAP4rev1 X-\xff\r\n"


def test_the_reader_and_the_rewriting_fit_together():
    """What the session does: rewrite the picked-out responses, relay everything else."""
    stream = (GREETING + b"* CAPABILITY IMAP4rev1 STARTTLS IDLE\r\n* SEARCH STARTTLS\r\n"
              b"a1 OK [CAPABILITY IMAP4rev1 NOTIFY] x\r\n")
    out = []
    for event in read_all(in_reads(stream, 5)):
        if isinstance(event, (Untagged, Tagged)):
            out.append(rewrite_capability_response(event.raw))
        elif isinstance(event, Passthrough):
            out.append(event.data)
    assert b"".join(out) == (
        b"* OK [CAPABILITY IMAP4rev1 ID ENABLE IDLE LITERAL+] Dovecot ready.\r\n"
        b"* CAPABILITY IMAP4rev1 IDLE\r\n* SEARCH STARTTLS\r\na1 OK [CAPABILITY IMAP4rev1] x\r\n"
    )


# --- properties -------------------------------------------------------------------------------

# Valid traffic, each response built with the events it must give (Passthrough joined).
TAGS = st.sampled_from(["a1", "A0002", "x.y", "1", "z"])
TEXTS = st.sampled_from([b"", b"done", b"x {5}", b"{12}", b"~{3}", b'"{2}', b"caf\xc3\xa9"])
CODES = st.sampled_from([None, "READ-WRITE", "READ-ONLY", "CAPABILITY IMAP4rev1 IDLE", "UIDNEXT 4"])
LITERAL_BODIES = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from([FAKE, b"* BYE x\r\n", b"+ go\r\n", b"{3}\r\n", b'"', b"\\", b"\0", b"\r\n"]),
             max_size=6).map(b"".join),
)


def resp_text(code, text) -> bytes:
    """What follows a status keyword: ` [code]`, then ` text`."""
    return (b" [%s]" % code.encode() if code else b"") + (b" " + text if text or not code else b"")


@st.composite
def tagged_responses(draw):
    tag, status, code, text = draw(TAGS), draw(st.sampled_from(["OK", "NO", "BAD"])), draw(CODES), draw(TEXTS)
    raw = tag.encode() + b" " + status.encode() + resp_text(code, text) + b"\r\n"
    return raw, [Tagged(tag, status, code, text.decode("utf-8", "surrogateescape"), raw)]


@st.composite
def untagged_status(draw):
    kind, code, text = draw(st.sampled_from(["OK", "NO", "BAD", "BYE", "PREAUTH"])), draw(CODES), draw(TEXTS)
    raw = b"* " + kind.encode() + resp_text(code, text) + b"\r\n"
    return raw, [Untagged(kind, None, raw, code)]


@st.composite
def fetches(draw):
    number, body, eight = draw(st.integers(0, 10**6)), draw(LITERAL_BODIES), draw(st.booleans())
    head = b"* %d FETCH (UID 3 %s {%d}\r\n" % (number, b"BINARY[] ~" if eight else b"BODY[]", len(body))
    return head + body + b")\r\n", [Untagged("FETCH", number, head), Passthrough(body + b")\r\n")]


@st.composite
def data_with_literals(draw):
    bodies = draw(st.lists(LITERAL_BODIES, min_size=1, max_size=3))
    raw = b'* METADATA "INBOX {1}"' + b"".join(b" ~{%d}\r\n%s" % (len(b), b) for b in bodies) + b"\r\n"
    return raw, [Passthrough(raw)]


SIMPLE = st.sampled_from(RESPONSES)
RESPONSE = st.one_of(tagged_responses(), untagged_status(), fetches(), data_with_literals(), SIMPLE,
                     st.just((b"+ idling\r\n", [Continuation(b"+ idling\r\n")])),
                     st.just((b"* SEARCH" + b" 1" * 200 + b"\r\n", [Passthrough(b"* SEARCH" + b" 1" * 200 + b"\r\n")])))
TRAFFIC = st.lists(RESPONSE, max_size=10).map(
    lambda parts: (b"".join(wire for wire, _ in parts), joined([e for _, events in parts for e in events] + [CLOSED])))
CUTS = st.lists(st.integers(0, 2000), max_size=12)


@given(TRAFFIC, CUTS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_valid_traffic_gives_its_events_however_it_is_read(traffic, cuts):
    stream, expected = traffic
    assert joined(read_all([stream])) == expected
    assert joined(read_all(chunked(stream, cuts))) == expected
    assert relayed(expected) == stream


# Bytes that make up IMAP responses and their traps, and a few long runs.
TOKENS = [b"* ", b"*", b"a1 ", b"+ ", b"OK ", b"NO", b"BYE ", b"1 ", b"FETCH ", b"EXISTS", b"CAPABILITY ",
          b"LIST (\\Trash) ", b"[CAPABILITY ", b"]", b"{3}", b"~{2}", b"{0}", b"{", b"}", b"\r\n", b"\n",
          b"\r", b'"', b"\\", b"(", b")", b"\0", b"x", b"\xff", b"x" * 70, b"1" * 150,
          b"\r\na1 OK ", b"\r\n* OK [CAPABILITY ", b"\r\n* 1 FETCH (", b"\r\n+ ", b"\r\n* LIST (\\Trash) "]
IMAPISH = st.lists(st.sampled_from(TOKENS), max_size=50).map(b"".join)
ANY_BYTES = st.one_of(IMAPISH, st.binary(max_size=400))


@given(ANY_BYTES, CUTS, st.sampled_from([HEAD, LIMIT, HOLD_LIMIT]))
@example(b"* 1 FETCH (" + b"x" * 200 + b" {3}\r\nabc)\r\n", [65, 130], HEAD)
@example(b'* 1 FETCH ("\\' + b"x" * 61 + b'" {3}\r\nabc)\r\n', [63, 64, 65], HEAD)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_give_documented_events_however_they_are_read(stream, cuts, hold_limit):
    events = read_all(chunked(stream, cuts), hold_limit)
    assert events[-1] is CLOSED and CLOSED not in events[:-1]
    for event in events[:-1]:
        assert isinstance(event, (Passthrough, Tagged, Continuation, Untagged, ProtocolViolation)), event
        if isinstance(event, Passthrough):
            assert event.data
        elif isinstance(event, Tagged):
            assert event.status in ("OK", "NO", "BAD") and event.raw.endswith(b"\n")
            assert len(event.raw) <= hold_limit
        elif isinstance(event, Untagged):
            assert len(event.raw) <= hold_limit and event.raw.startswith(b"* ")
    assert joined(events) == joined(read_all([stream], hold_limit))
    if not any(isinstance(event, ProtocolViolation) for event in events):
        assert relayed(events) == stream


@pytest.mark.parametrize("raw, name", [
    (b'* LIST (\\HasNoChildren \\Trash) "." Trash\r\n', "Trash"),
    (b'* LSUB (\\Trash) "/" "Deleted Items"\r\n', "Deleted Items"),
    (b'* LIST (\\Trash) NIL "a\\"b\\\\c"\r\n', 'a"b\\c'),
    (b'* LIST (\\Trash) "." INBOX.Trash\r\n', "INBOX.Trash"),
    (b'* LIST (\\Trash) "." {5}\r\n', None),  # a literal name: its bytes follow, unread
    (b"* 1 EXISTS\r\n", None),
])
def test_listed_mailbox(raw, name):
    from mailproxy.protocol.imap_responses import listed_mailbox

    assert listed_mailbox(raw) == name
