"""The proxy's server side reading what an SMTP client sends (SmtpServerMachine): wire-byte
tables split at every position, and properties against a reading of the same bytes in
one go, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailproxy.protocol.smtp_message import END_OF_DATA, unstuff, wire_body
from mailproxy.protocol.smtp_server import (
    CLOSED,
    NEED_DATA,
    BadCommand,
    Command,
    EndOfMessage,
    MessageData,
    SmtpServerMachine,
)
from tests.support.chunks import chunked, drive, in_reads, splits

LONGEST = 4096  # bytes in a command line, its line end included
TOO_LONG = BadCommand(500, "5.5.2", "Line too long")
BARE = BadCommand(501, "5.5.2", "Bare CR or NUL in command")
NOOP = Command("NOOP", "", b"NOOP")
QUIT = Command("QUIT", "", b"QUIT")
RSET = Command("RSET", "", b"RSET")
DATA = Command("DATA", "", b"DATA")
LIMIT = 1 << 20


def read_all(chunks, limit: int = LIMIT, stream: bool = False, content: bool = False) -> list:
    """Every event up to CLOSED, the machine driven as the session drives it: on DATA
    the message started before reading on."""
    machine = SmtpServerMachine()

    def start_message(event) -> None:
        if isinstance(event, Command) and event.verb == "DATA":
            machine.start_message(limit, content=content, stream=stream)

    return drive(machine, chunks, start_message)


def forwarded(events) -> list[tuple[bytes, object]]:
    """Each message's forwardable bytes (the MessageData pieces joined, or the body) and
    its WireReceiver. MessageData comes only when streaming, and only inside a message."""
    out, pieces = [], None
    for event in events:
        if isinstance(event, MessageData):
            assert event.pieces and all(isinstance(piece, bytes) for piece in event.pieces), event
            pieces = (pieces or []) + event.pieces
        elif isinstance(event, EndOfMessage):
            message = event.message
            if message.streaming:
                assert message.body == b""  # streamed, nothing kept
                out.append((b"".join(pieces or []), message))
            else:
                assert pieces is None, "MessageData without streaming"
                out.append((message.body, message))
            pieces = None
        elif event is not CLOSED:  # a client may leave mid-message
            assert pieces is None, f"{event} inside a message"
    return out


def outline(events) -> list:
    """The events with each message as one entry ("message", bytes forwarded, overflow):
    None for the bytes of a message over the limit (streamed, how much went out before
    the limit was passed depends on the reads)."""
    messages = iter(forwarded(events))
    out = []
    for event in events:
        if isinstance(event, EndOfMessage):
            body, message = next(messages)
            if not message.overflow:
                assert message.size == len(body)
            out.append(("message", None if message.overflow else body, message.overflow))
        elif not isinstance(event, MessageData):
            out.append(event)
    return out


def reference(stream: bytes, limit: int = LIMIT) -> list:
    """The same as `outline`, read in one go: each line a command or a bad line, and
    after DATA a message up to the first <CR><LF>.<CR><LF> (counting the line end of
    DATA), forwarded as `wire_body` makes it."""
    out: list = []
    while (end := stream.find(b"\n")) >= 0:
        raw, stream = stream[: end + 1], stream[end + 1 :]
        line = raw[:-1].rstrip(b"\r")
        if len(raw) > LONGEST:
            out.append(TOO_LONG)
        elif b"\r" in line or b"\0" in line:
            out.append(BARE)
        else:
            verb, _, argument = line.partition(b" ")
            verb = verb.decode("ascii", "replace").upper()
            out.append(Command(verb, argument.strip().decode("utf-8", "surrogateescape"), line))
            if verb == "DATA":
                at = (b"\r\n" + stream).find(END_OF_DATA)
                if at < 0:
                    break
                message, stream = stream[:at], stream[at + 3 :]
                wire = wire_body(message)
                overflow = len(wire) > limit
                out.append(("message", None if overflow else wire, overflow))
    return out + [CLOSED]


# --- command lines, wire bytes --------------------------------------------------------------

LONG_NAME = b"x" * (LONGEST - 7)  # "HELO " + name + CRLF: the longest line there may be

# (what the client sent, the command read from it)
COMMANDS = [
    (b"NOOP\r\n", NOOP),
    (b"NOOP\n", NOOP),  # a bare LF ends a command line too
    (b"noop\r\n", Command("NOOP", "", b"noop")),
    (b"eHlO client.example\r\n", Command("EHLO", "client.example", b"eHlO client.example")),
    (b"MAIL FROM:<a@b> SIZE=10\n", Command("MAIL", "FROM:<a@b> SIZE=10", b"MAIL FROM:<a@b> SIZE=10")),
    (b"RCPT   TO:<a@b> \t \r\n", Command("RCPT", "TO:<a@b>", b"RCPT   TO:<a@b> \t ")),
    (b"HELO  \n", Command("HELO", "", b"HELO  ")),
    (b"MAIL FROM:<j\xc3\xb6rg@b>\r\n", Command("MAIL", "FROM:<j\u00f6rg@b>", b"MAIL FROM:<j\xc3\xb6rg@b>")),
    (b"MAIL FROM:<\xff\xfe@b>\r\n", Command("MAIL", "FROM:<\udcff\udcfe@b>", b"MAIL FROM:<\xff\xfe@b>")),
    (b"\r\n", Command("", "", b"")),
    (b"\n", Command("", "", b"")),
    (b"QUIT\r\r\n", QUIT),  # every CR before the LF is part of the line end
    (b"HELO " + LONG_NAME + b"\r\n", Command("HELO", LONG_NAME.decode(), b"HELO " + LONG_NAME)),
    (b"HELO " + LONG_NAME + b"x\n", Command("HELO", LONG_NAME.decode() + "x", b"HELO " + LONG_NAME + b"x")),
]


@pytest.mark.parametrize("wire, command", COMMANDS)
def test_command_lines_every_split(wire, command):
    for chunks in splits(wire + b"QUIT\r\n"):
        assert read_all(chunks) == [command, QUIT, CLOSED], chunks
    # After another command in the same read, and with the end of input right after it.
    for chunks in splits(b"NOOP\r\n" + wire):
        assert read_all(chunks) == [NOOP, command, CLOSED], chunks


# (what the client sent, the reply it gets); the next command is read cleanly after it
BAD_LINES = [
    (b"NOOP\rRSET\r\n", BARE),  # an upstream could take the CR for a line end
    (b"\rNOOP\r\n", BARE),
    (b"NOOP\r \r\n", BARE),
    (b"RCPT TO:<a@b>\r.\r\n", BARE),
    (b"MAIL FROM:<a\0@b>\r\n", BARE),
    (b"\0\n", BARE),
    (b"HELO " + LONG_NAME + b"x\r\n", TOO_LONG),  # one byte over
    (b"HELO " + LONG_NAME + b"xx\n", TOO_LONG),
    (b"\0" * LONGEST + b"\n", TOO_LONG),  # too long before anything else
    (b"x" * 3 * LONGEST + b"\r\n", TOO_LONG),
]


@pytest.mark.parametrize("wire, reply", BAD_LINES)
def test_bad_lines_every_split(wire, reply):
    for chunks in splits(wire + b"QUIT\r\n"):
        assert read_all(chunks) == [reply, QUIT, CLOSED], chunks
    for chunks in splits(b"NOOP\r\n" + wire):
        assert read_all(chunks) == [NOOP, reply, CLOSED], chunks


@pytest.mark.parametrize("size", [1, 7, 100, LONGEST - 1, LONGEST, LONGEST + 1, 3 * LONGEST])
def test_an_overlong_line_in_many_reads_is_answered_once(size):
    line = b"y" * (4 * LONGEST)
    for end in (b"\r\n", b"\n"):
        stream = line + end + b"NOOP\r\n" + line + end + b"QUIT\r\n"
        assert read_all(in_reads(stream, size)) == [TOO_LONG, NOOP, TOO_LONG, QUIT, CLOSED]
        # Its line end in a read of its own, or first in the read of the next command.
        assert read_all(in_reads(line, size) + [end, b"QUIT\r\n"]) == [TOO_LONG, QUIT, CLOSED]
        assert read_all(in_reads(line, size) + [end + b"QUIT\r\n"]) == [TOO_LONG, QUIT, CLOSED]


def test_the_part_of_an_overlong_line_already_read_is_not_kept():
    machine = SmtpServerMachine()
    machine.receive_data(b"x" * (LONGEST + 1))
    assert machine.next_event() is NEED_DATA
    assert machine.take_pending() == b""
    # At the limit it may still be a command: it is kept until its line end tells.
    machine.receive_data(b"x" * LONGEST)
    assert machine.next_event() is NEED_DATA
    assert machine.take_pending() == b"x" * LONGEST


def test_two_long_lines_in_one_read():
    name = LONG_NAME.decode()
    line = b"HELO " + LONG_NAME + b"\r\n"
    expected = [Command("HELO", name, line[:-2])] * 2 + [CLOSED]
    assert read_all([line + line]) == expected
    assert read_all([line + line[:-1], b"\n"]) == expected
    assert read_all([line[:5], line[5:] + line[:-1], b"\n"]) == expected


@pytest.mark.parametrize(
    "chunks, events",
    [
        ([], [CLOSED]),
        ([b"NOOP"], [CLOSED]),  # a line cut off by the end of input is dropped
        ([b"NOOP\r"], [CLOSED]),
        ([b"NOOP\r\nQUI"], [NOOP, CLOSED]),
        ([b"NOOP\r\n", b"QUI", b"T"], [NOOP, CLOSED]),
        ([b"x" * (2 * LONGEST)], [CLOSED]),  # nor is an overlong one answered
        ([b"x" * (2 * LONGEST), b"\r"], [CLOSED]),
        ([b"DATA\r\n", b"a\r\n.\r"], [DATA, CLOSED]),  # the client left mid-message
        ([b"DATA\r\na\r\n.\r\nQUI"], [DATA, ("message", b"a\r\n", False), CLOSED]),
    ],
)
def test_the_end_of_input(chunks, events):
    for stream in (False, True):
        assert outline(read_all(chunks, stream=stream)) == events


def test_closed_stays_closed():
    machine = SmtpServerMachine()
    machine.receive_data(b"NOOP\r\nQUIT")
    machine.receive_data(b"")
    assert [machine.next_event() for _ in range(4)] == [NOOP, CLOSED, CLOSED, CLOSED]


def test_need_data_until_a_line_is_complete():
    machine = SmtpServerMachine()
    assert machine.next_event() is NEED_DATA
    for piece in (b"NO", b"OP", b"\r"):
        machine.receive_data(piece)
        assert machine.next_event() is NEED_DATA
        assert machine.next_event() is NEED_DATA
    machine.receive_data(b"\nRSET\r\nQU")
    assert [machine.next_event() for _ in range(3)] == [NOOP, RSET, NEED_DATA]
    machine.receive_data(b"IT\n")
    assert [machine.next_event() for _ in range(2)] == [QUIT, NEED_DATA]
    assert not machine.in_message


# --- messages ---------------------------------------------------------------------------------

# (the message as the client sent it, as forwarded, as plugins read it)
MESSAGES = [
    (b"", b"", b""),
    (b"Subject: x\r\n\r\nhi\r\n", b"Subject: x\r\n\r\nhi\r\n", b"Subject: x\r\n\r\nhi\r\n"),
    (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n", b"a\r\nb\r\nc\r\n"),
    (b"..a\r\n.b\r\n...\r\n", b"..a\r\nb\r\n...\r\n", b".a\r\nb\r\n..\r\n"),
    (b"x\n.\nMAIL FROM:<a@b>\r\n", b"x\r\n\r\nMAIL FROM:<a@b>\r\n", b"x\r\n\r\nMAIL FROM:<a@b>\r\n"),
]


@pytest.mark.parametrize("sent, wire, content", MESSAGES)
def test_a_message_every_split(sent, wire, content):
    """Pipelined after DATA or not, whole or streamed: the message as `wire_body` makes
    it, then the commands that followed its end, in order."""
    assert wire_body(sent) == wire
    stream = b"DATA\r\n" + sent + b".\r\nRSET\r\nQUIT\r\n"
    expected = [DATA, ("message", wire, False), RSET, QUIT, CLOSED]
    for chunks in splits(stream):
        events = read_all(chunks, content=True)
        assert outline(events) == expected, chunks
        [(_, message)] = forwarded(events)
        assert message.content == content == unstuff(wire)
        assert outline(read_all(chunks, stream=True)) == expected, chunks


def test_the_end_marker_split_at_every_two_places():
    stream = b"DATA\r\na\r\n.\r\nRSET\r\nQUIT\r\n"
    assert len(stream) <= 24  # so that `splits` cuts it twice everywhere
    expected = [DATA, ("message", b"a\r\n", False), RSET, QUIT, CLOSED]
    for chunks in splits(stream):
        for mode in (False, True):
            assert outline(read_all(chunks, stream=mode)) == expected, (chunks, mode)


def test_a_message_is_whole_and_handed_out_once_at_its_end_unless_asked_otherwise():
    machine = SmtpServerMachine()
    machine.receive_data(b"DATA\r\na\r\n")
    assert machine.next_event() == DATA
    machine.start_message(LIMIT)
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"b\r\n")
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b".\r\n")
    end = machine.next_event()
    assert isinstance(end, EndOfMessage) and not end.message.streaming
    message = end.message
    assert (message.body, message.size, message.overflow) == (b"a\r\nb\r\n", 6, False)
    with pytest.raises(RuntimeError, match="^content was not kept$"):
        message.content  # not asked for
    assert machine.next_event() is NEED_DATA


def test_a_streamed_message_is_handed_out_as_it_arrives():
    machine = SmtpServerMachine()
    machine.receive_data(b"DATA\r\nSubject: x\r\n")
    assert machine.next_event() == DATA
    assert not machine.in_message
    machine.start_message(LIMIT, stream=True)
    assert machine.in_message
    assert machine.next_event() == MessageData([b"Subject: x\r\n"])  # what DATA's read held
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"\r\nhi\n")
    assert machine.next_event() == MessageData([b"\r\nhi\r\n"])
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"\r\n")
    assert machine.next_event() == MessageData([b"\r\n"])
    machine.receive_data(b".")  # may begin the end marker: held back
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"\r\nNOOP\r\n")
    end = machine.next_event()
    assert isinstance(end, EndOfMessage) and not machine.in_message
    assert (end.message.body, end.message.size, end.message.overflow) == (b"", 20, False)
    assert [machine.next_event() for _ in range(2)] == [NOOP, NEED_DATA]


def test_the_last_pieces_of_a_streamed_message_come_before_its_end():
    events = read_all([b"DATA\r\nab\r\n.\r\nQUIT\r\n"], stream=True)
    assert events[:2] == [DATA, MessageData([b"ab\r\n"])]
    assert isinstance(events[2], EndOfMessage)
    assert events[3:] == [QUIT, CLOSED]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("limit, overflow", [(12, False), (11, True), (0, True)])
def test_a_message_over_the_limit(limit, overflow, stream):
    """Counted as forwarded (bare LFs become CRLF): past the limit nothing more is
    handed out, the end is still found and the next command read."""
    sent = b"ab\nab\nab\r\n"  # 10 bytes, 12 forwarded
    wire = b"ab\r\nab\r\nab\r\n"
    expected = [DATA, ("message", None if overflow else wire, overflow), QUIT, CLOSED]
    for chunks in splits(b"DATA\r\n" + sent + b".\r\nQUIT\r\n"):
        events = read_all(chunks, limit=limit, stream=stream)
        assert outline(events) == expected, chunks
        [(out, message)] = forwarded(events)
        if overflow:
            assert message.size > limit
            assert len(out) <= limit and wire.startswith(out), chunks


def test_a_big_streamed_message_stops_at_the_limit():
    sent = b"0123456789abcde\n" * 1000 + b"\r\n"
    stream = b"DATA\r\n" + sent + b".\r\nQUIT\r\n"
    for size in (1, 100, 4096):
        events = read_all(in_reads(stream, size), limit=5000, stream=True)
        assert outline(events) == [DATA, ("message", None, True), QUIT, CLOSED]
        [(out, message)] = forwarded(events)
        # Up to the limit, less at most the read that passed it; nothing after it.
        assert 5000 - 2 * size - 17 <= len(out) <= 5000
        assert wire_body(sent).startswith(out)


def test_commands_pipelined_after_a_message_come_out_after_it_in_order():
    stream = (b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n"
              b"MAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n.\r\nQUIT\r\n")
    expected = [
        Command("MAIL", "FROM:<a@b>", b"MAIL FROM:<a@b>"),
        Command("RCPT", "TO:<c@d>", b"RCPT TO:<c@d>"),
        DATA,
        ("message", b"hi\r\n", False),
        Command("MAIL", "FROM:<e@f>", b"MAIL FROM:<e@f>"),
        Command("RCPT", "TO:<g@h>", b"RCPT TO:<g@h>"),
        DATA,
        ("message", b"", False),
        QUIT,
        CLOSED,
    ]
    assert reference(stream) == expected
    for chunks in splits(stream):
        for mode in (False, True):
            assert outline(read_all(chunks, stream=mode)) == expected, (chunks, mode)


def test_bytes_may_arrive_before_the_events_are_read():
    """As in h11, a read may be handed over at any time: here one event is taken after
    each read, so reads arrive while a message's end waits to be taken."""
    stream = b"DATA\r\nhi\r\n.\r\nNOOP\r\nDATA\r\nho\r\n.\r\nQUIT\r\n"
    for mode in (False, True):
        for chunks in splits(stream):
            machine = SmtpServerMachine()
            events = []

            def take(event):
                events.append(event)
                if event == DATA:
                    machine.start_message(LIMIT, stream=mode)

            for chunk in filter(None, chunks):
                machine.receive_data(chunk)
                if (event := machine.next_event()) is not NEED_DATA:
                    take(event)
            machine.receive_data(b"")
            for _ in range(len(stream)):  # bounded, in case a bug never gets to CLOSED
                if (event := machine.next_event()) is CLOSED:
                    break
                take(event)
            assert outline(events + [CLOSED]) == reference(stream), (chunks, mode)


def test_take_pending_drops_what_was_received_and_not_read():
    """What a client pipelined after STARTTLS, in plaintext: exactly the bytes received
    after that command line, however the reads fell; the next read starts afresh."""
    head = b"STARTTLS\r\n"
    stream = head + b"MAIL FROM:<evil@b>\r\nRCPT TO:<x@y>\r\nDA"
    for cut in range(len(head), len(stream) + 1):
        machine = SmtpServerMachine()
        machine.receive_data(stream[:cut])
        assert machine.next_event() == Command("STARTTLS", "", b"STARTTLS")
        if cut < len(stream):
            machine.receive_data(stream[cut:])
        assert machine.take_pending() == stream[len(head) :]
        assert machine.take_pending() == b""
        assert machine.next_event() is NEED_DATA
        machine.receive_data(b"EHLO c\r\n")
        assert machine.next_event() == Command("EHLO", "c", b"EHLO c")


def test_take_pending_keeps_nothing_of_a_read_command():
    machine = SmtpServerMachine()
    assert machine.take_pending() == b""
    machine.receive_data(b"NOOP\r\nRSET\r\n")
    assert machine.next_event() == NOOP
    assert machine.take_pending() == b"RSET\r\n"
    machine.receive_data(b"QU")
    machine.receive_data(b"IT\r\n")
    assert machine.next_event() == QUIT
    assert machine.take_pending() == b""


# --- properties -----------------------------------------------------------------------------

# Bytes that make up SMTP, its line ends and its traps, and a few long runs.
TOKENS = [b"\r", b"\n", b"\r\n", b".", b"\r\n.\r\n", b".\r\n", b"\0", b" ", b"a", b"\xff",
          b"DATA\r\n", b"data\n", b"NOOP\r\n", b"MAIL FROM:<a@b>\r\n", b"x" * (LONGEST - 2),
          b"x" * LONGEST]
SMTPISH = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
ANY_BYTES = st.one_of(SMTPISH, st.binary(max_size=400))
CUTS = st.lists(st.integers(0, 4 * LONGEST), max_size=12)


@given(ANY_BYTES, CUTS, st.integers(0, 300), st.booleans(), st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_give_only_the_documented_events(stream, cuts, limit, streaming, content):
    events = read_all(chunked(stream, cuts), limit=limit, stream=streaming, content=content)
    assert events[-1] is CLOSED and CLOSED not in events[:-1]
    for event in events[:-1]:
        assert isinstance(event, (Command, BadCommand, MessageData, EndOfMessage)), event
        if isinstance(event, Command):
            assert event.verb == event.verb.upper()
            assert event.argument == event.argument.strip()
            assert not any(c in event.line for c in b"\r\n\0") and len(event.line) < LONGEST
        elif isinstance(event, BadCommand):
            assert event in (TOO_LONG, BARE)
    for body, message in forwarded(events):
        assert (len(body) <= limit) if message.overflow else (message.size == len(body) <= limit)
        if content and not streaming and not message.overflow:
            assert message.content == unstuff(body)


VERBS = st.sampled_from([b"NOOP", b"noop", b"RSET", b"MAIL", b"Rcpt", b"EHLO", b"DATA", b"data", b"QUIT", b""])
ARGUMENTS = st.one_of(st.just(b""), st.sampled_from([b" FROM:<a@b>", b"  TO:<\xff@b> ", b" x\ty "]),
                      st.binary(max_size=12).filter(lambda b: b"\n" not in b))
LINE_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])
COMMAND_LINES = st.builds(lambda verb, argument, end: verb + argument + end, VERBS, ARGUMENTS, LINE_ENDS)
NOISE = st.one_of(
    st.builds(lambda n, end: b"z" * n + end, st.integers(LONGEST - 3, LONGEST + 3), LINE_ENDS),
    st.sampled_from([b"NOOP\rRSET\r\n", b"A\0B\n", b"x" * (3 * LONGEST) + b"\n"]),
)
MESSAGE_BODIES = st.one_of(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"\r\n.", b"QUIT\r\n"]), max_size=30)
    .map(b"".join),
    st.binary(max_size=200),
)
MESSAGES_SENT = st.builds(lambda body: b"DATA\r\n" + body + b"\r\n.\r\n", MESSAGE_BODIES)
CONVERSATIONS = st.builds(
    lambda parts, tail: b"".join(parts) + tail,
    st.lists(st.one_of(COMMAND_LINES, COMMAND_LINES, MESSAGES_SENT, NOISE), max_size=12),
    st.sampled_from([b"", b"QUI", b"DATA\r\nunfinished", b"x" * (LONGEST + 1)]),
)


@given(CONVERSATIONS, CUTS, st.integers(0, 400), st.booleans())
@example(b"HELO x\r\n" + b"z" * (LONGEST - 1) + b"\n", [8 + LONGEST - 1], LIMIT, False)
@example(b"NOOP\r\n" + b"z" * LONGEST + b"\nQUIT\r\n", [6], LIMIT, False)
@example(b"DATA\r\n.\r\nNOOP\r\nDATA\r\na\r\n.\r\n", [14, 15], LIMIT, True)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_events_do_not_depend_on_the_reads(stream, cuts, limit, streaming):
    """A conversation read in one go and in any reads gives the same commands, bad
    lines and messages (a streamed one's pieces joined), in the same order."""
    expected = reference(stream, limit)
    assert outline(read_all([stream], limit, stream=streaming)) == expected
    assert outline(read_all(chunked(stream, cuts), limit, stream=streaming)) == expected


@given(CONVERSATIONS, CUTS, st.integers(0, 400))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_streaming_and_whole_messages_forward_the_same_bytes(stream, cuts, limit):
    chunks = chunked(stream, cuts)
    whole = forwarded(read_all(chunks, limit, content=True))
    streamed = forwarded(read_all(chunks, limit, stream=True))
    assert len(whole) == len(streamed)
    for (body, kept), (pieces, passed) in zip(whole, streamed):
        assert (kept.overflow, kept.size) == (passed.overflow, passed.size)
        if kept.overflow:
            assert body == b"" and len(pieces) <= limit
        else:
            assert pieces == body
            assert kept.content == unstuff(body)
