"""POP3 with no sockets: the proxy's server side reading a client (Pop3ServerMachine) and
its reader of the upstream's replies (Pop3ReplyReader). Wire-byte tables split at every
position, and properties: any reads give the events of one read, any bytes give only
the documented events."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailproxy.protocol.pop3 import (
    CLOSED,
    NEED_DATA,
    BadCommand,
    Collected,
    Command,
    Continuation,
    End,
    Passthrough,
    Pop3ReplyReader,
    Pop3ServerMachine,
    ProtocolViolation,
    SaslResponse,
    Status,
    multiline_reply,
)
from tests.support.chunks import chunked, drive, in_reads, splits

LONGEST = 512  # bytes in a command line, its line end included
SASL_LONGEST = 8192  # bytes in a SASL response line
STATUS_LONGEST = LONGEST + 512  # a reply may echo the longest command
COLLECT_MOST = 64 * 1024
TOO_LONG = BadCommand("Line too long")
BARE = BadCommand("Bare CR or NUL in command")
EMPTY = BadCommand("Empty command")
NOOP = Command("NOOP", (), b"NOOP")
QUIT = Command("QUIT", (), b"QUIT")


def some_splits(stream: bytes):
    """Every split of a short stream; a long one whole, byte by byte, and in reads."""
    if len(stream) <= 100:
        yield from splits(stream)
    else:
        yield from ([stream], in_reads(stream, 1), in_reads(stream, 1000), chunked(stream, [len(stream) - 3]))


# --- the client's side ------------------------------------------------------------------


def read_client(chunks) -> list:
    """Driven as the session drives it: after "AUTH <mechanism>" (answered "+ "), the
    next line is a SASL response."""
    machine = Pop3ServerMachine()

    def after(event) -> None:
        if isinstance(event, Command) and event.verb == "AUTH" and len(event.args) == 1:
            machine.expect_sasl()

    return drive(machine, chunks, after)


def reference(stream: bytes) -> list:
    """The client's events read in one go, written out the plain way."""
    out: list = []
    sasl = False
    while (end := stream.find(b"\n")) >= 0:
        raw, stream = stream[: end + 1], stream[end + 1 :]
        line = raw[:-1].rstrip(b"\r")
        if len(raw) > (SASL_LONGEST if sasl else LONGEST):
            out.append(TOO_LONG)
        elif b"\r" in line or b"\0" in line:
            out.append(BARE)
        elif sasl:
            out.append(SaslResponse(line))
        elif not line or line.startswith(b" "):
            out.append(EMPTY)
        else:
            verb, _, rest = line.partition(b" ")
            args = tuple(a.decode("utf-8", "surrogateescape") for a in rest.split(b" ")) if rest else ()
            out.append(Command(verb.decode("ascii", "replace").upper(), args, line))
        last = out[-1]
        sasl = isinstance(last, Command) and last.verb == "AUTH" and len(last.args) == 1
    return out + [CLOSED]


LONG_USER = b"u" * (LONGEST - 7)  # "USER " + name + CRLF: the longest line there may be

# (what the client sent, the event read from it)
COMMANDS = [
    (b"NOOP\r\n", NOOP),
    (b"NOOP\n", NOOP),  # a bare LF ends a line too
    (b"QUIT\r\r\n", QUIT),  # every CR before the LF is part of the line end
    (b"quit\r\n", Command("QUIT", (), b"quit")),
    (b"uSeR alice\r\n", Command("USER", ("alice",), b"uSeR alice")),
    (b"TOP 1 10\r\n", Command("TOP", ("1", "10"), b"TOP 1 10")),
    (b"LIST \r\n", Command("LIST", (), b"LIST ")),  # no argument: a multi-line reply
    (b"LIST  1\r\n", Command("LIST", ("", "1"), b"LIST  1")),  # split on single spaces
    (b"PASS  a b \r\n", Command("PASS", ("", "a", "b", ""), b"PASS  a b ")),
    (b"PASS p\xc3\xa4ss\tw\r\n", Command("PASS", ("p\u00e4ss\tw",), b"PASS p\xc3\xa4ss\tw")),
    (b"PASS \xff\xfe\r\n", Command("PASS", ("\udcff\udcfe",), b"PASS \xff\xfe")),
    (b"N\xffOP\r\n", Command("N\ufffdOP", (), b"N\xffOP")),
    (b"USER " + LONG_USER + b"\r\n", Command("USER", (LONG_USER.decode(),), b"USER " + LONG_USER)),
    (b"USER " + LONG_USER + b"x\n",
     Command("USER", (LONG_USER.decode() + "x",), b"USER " + LONG_USER + b"x")),
]


@pytest.mark.parametrize("wire, command", COMMANDS)
def test_command_lines_every_split(wire, command):
    for chunks in splits(wire + b"QUIT\r\n"):
        assert read_client(chunks) == [command, QUIT, CLOSED], chunks
    for chunks in splits(b"NOOP\r\n" + wire):
        assert read_client(chunks) == [NOOP, command, CLOSED], chunks


@pytest.mark.parametrize(
    "line, argument",
    [(b"PASS  my secret ", " my secret "), (b"PASS \xff x", "\udcff x"), (b"PASS", ""), (b"PASS ", "")],
)
def test_the_argument_is_the_rest_of_the_line_after_one_space(line, argument):
    [command, _] = read_client([line + b"\r\n"])
    assert command.argument == argument == " ".join(command.args)
    assert command.argument.encode("utf-8", "surrogateescape") == line[5:]


# (what the client sent, the reply it gets); the next command is read cleanly after it
BAD_LINES = [
    (b"\r\n", EMPTY),
    (b"\n", EMPTY),
    (b" NOOP\r\n", EMPTY),
    (b"NOOP\rQUIT\r\n", BARE),  # an upstream could take the CR for a line end
    (b"\rNOOP\r\n", BARE),
    (b"PASS a\0b\r\n", BARE),
    (b"\0\n", BARE),
    (b"USER " + LONG_USER + b"x\r\n", TOO_LONG),  # one byte over
    (b"USER " + LONG_USER + b"xx\n", TOO_LONG),
    (b"\0" * LONGEST + b"\n", TOO_LONG),  # too long before anything else
    (b"x" * 3 * LONGEST + b"\r\n", TOO_LONG),
]


@pytest.mark.parametrize("wire, reply", BAD_LINES)
def test_bad_lines_every_split(wire, reply):
    for chunks in splits(wire + b"QUIT\r\n"):
        assert read_client(chunks) == [reply, QUIT, CLOSED], chunks
    for chunks in splits(b"NOOP\r\n" + wire):
        assert read_client(chunks) == [NOOP, reply, CLOSED], chunks


@pytest.mark.parametrize("size", [1, 7, 100, LONGEST - 1, LONGEST, LONGEST + 1, 3 * LONGEST])
def test_an_overlong_line_in_many_reads_is_answered_once(size):
    line = b"y" * (20 * LONGEST)
    for end in (b"\r\n", b"\n"):
        stream = line + end + b"NOOP\r\n" + line + end + b"QUIT\r\n"
        assert read_client(in_reads(stream, size)) == [TOO_LONG, NOOP, TOO_LONG, QUIT, CLOSED]
        assert read_client(in_reads(line, size) + [end + b"QUIT\r\n"]) == [TOO_LONG, QUIT, CLOSED]


def test_the_part_of_an_overlong_line_already_read_is_not_kept():
    machine = Pop3ServerMachine()
    machine.receive_data(b"x" * (LONGEST + 1))
    assert machine.next_event() is NEED_DATA
    assert machine.take_pending() == b""


PLAIN = b"AGFsaWNlAHNlY3JldA=="  # "\0alice\0secret"
AUTH = Command("AUTH", ("PLAIN",), b"AUTH PLAIN")


@pytest.mark.parametrize(
    "response, event",
    [
        (PLAIN + b"\r\n", SaslResponse(PLAIN)),
        (b"*\r\n", SaslResponse(b"*")),  # cancel
        (b"\r\n", SaslResponse(b"")),  # an empty response
        (b"=\n", SaslResponse(b"=")),
        (b"NOOP\r\n", SaslResponse(b"NOOP")),  # not a command: the session decodes it
        (b"A" * (SASL_LONGEST - 2) + b"\r\n", SaslResponse(b"A" * (SASL_LONGEST - 2))),
        (b"A" * (SASL_LONGEST - 1) + b"\r\n", TOO_LONG),
        (b"A" * (3 * SASL_LONGEST) + b"\n", TOO_LONG),
        (b"AB\rCD\r\n", BARE),
    ],
)
def test_a_sasl_response_is_one_line_after_expect_sasl(response, event):
    stream = b"AUTH PLAIN\r\n" + response + b"NOOP\r\n"
    expected = [AUTH, event, NOOP, CLOSED]
    assert reference(stream) == expected
    for chunks in some_splits(stream):
        assert read_client(chunks) == expected, chunks


def test_a_line_over_the_command_bound_is_fine_as_a_sasl_response_only():
    token = b"Q" * (4 * LONGEST)
    assert read_client([b"AUTH PLAIN\r\n" + token + b"\r\n"]) == [AUTH, SaslResponse(token), CLOSED]
    assert read_client([b"NOOP\r\n" + token + b"\r\n"]) == [NOOP, TOO_LONG, CLOSED]


@pytest.mark.parametrize(
    "chunks, events",
    [
        ([], [CLOSED]),
        ([b"NOOP"], [CLOSED]),  # a line cut off by the end of input is dropped
        ([b"NOOP\r"], [CLOSED]),
        ([b"NOOP\r\nQUI"], [NOOP, CLOSED]),
        ([b"x" * (2 * LONGEST)], [CLOSED]),  # nor is an overlong one answered
        ([b"AUTH PLAIN\r\n", b"AGFs"], [AUTH, CLOSED]),
    ],
)
def test_the_end_of_input(chunks, events):
    assert read_client(chunks) == events


def test_need_data_until_a_line_is_complete_and_closed_stays_closed():
    machine = Pop3ServerMachine()
    assert machine.next_event() is NEED_DATA
    for piece in (b"NO", b"OP", b"\r"):
        machine.receive_data(piece)
        assert machine.next_event() is NEED_DATA
    machine.receive_data(b"\nSTAT\r\nQU")
    assert [machine.next_event() for _ in range(3)] == [NOOP, Command("STAT", (), b"STAT"), NEED_DATA]
    machine.receive_data(b"")
    assert [machine.next_event() for _ in range(3)] == [CLOSED] * 3


def test_take_pending_drops_what_was_pipelined_after_stls():
    head = b"STLS\r\n"
    stream = head + b"USER evil\r\nPASS x\r\nQU"
    for cut in range(len(head), len(stream) + 1):
        machine = Pop3ServerMachine()
        machine.receive_data(stream[:cut])
        assert machine.next_event() == Command("STLS", (), b"STLS")
        if cut < len(stream):
            machine.receive_data(stream[cut:])
        assert machine.take_pending() == stream[len(head) :]
        assert machine.take_pending() == b""
        assert machine.next_event() is NEED_DATA
        machine.receive_data(b"CAPA\r\n")
        assert machine.next_event() == Command("CAPA", (), b"CAPA")


# Bytes that make up POP3 commands, their line ends and traps, and long runs.
CLIENT_TOKENS = [b"\r", b"\n", b"\r\n", b" ", b"\0", b"\xff", b"a", b"NOOP\r\n", b"PASS a  b\r\n",
                 b"LIST \r\n", b"AUTH PLAIN\r\n", b"auth login\n", PLAIN + b"\r\n", b"*\r\n",
                 b"x" * (LONGEST - 2), b"x" * LONGEST, b"Z" * (SASL_LONGEST - 2)]
CLIENT_BYTES = st.one_of(st.lists(st.sampled_from(CLIENT_TOKENS), max_size=30).map(b"".join),
                         st.binary(max_size=600))
CUTS = st.lists(st.integers(0, 3 * SASL_LONGEST), max_size=12)


@given(CLIENT_BYTES, CUTS)
@example(b"AUTH PLAIN\r\n" + b"Z" * (SASL_LONGEST - 2) + b"\r\n", [12 + SASL_LONGEST])
@example(b"NOOP\r\n" + b"x" * LONGEST + b"\nQUIT\r\n", [6, 6 + LONGEST])
@example(b"LIST \r\nLIST  \r\n", [])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_client_events_do_not_depend_on_the_reads(stream, cuts):
    """Any bytes, in one read or in many: the events of `reference`, each of a
    documented kind, and CLOSED at the end."""
    expected = reference(stream)
    assert read_client([stream]) == expected
    events = read_client(chunked(stream, cuts))
    assert events == expected
    for event in events[:-1]:
        assert isinstance(event, (Command, BadCommand, SaslResponse)), event
        if isinstance(event, Command):
            assert event.verb == event.verb.upper() and event.verb
            assert " ".join(event.args) == event.argument
            assert not any(c in event.line for c in b"\r\n\0") and len(event.line) < LONGEST
        elif isinstance(event, BadCommand):
            assert event in (TOO_LONG, BARE, EMPTY)


# --- the upstream's side ----------------------------------------------------------------


def reader_expecting(expectations) -> Pop3ReplyReader:
    reader = Pop3ReplyReader()
    for expectation in expectations:
        reader.expect(*expectation)
    return reader


def read_replies(chunks, expectations=()) -> list:
    """The reader's events up to CLOSED, each run of Passthrough joined into one (how
    a body falls into pieces depends on the reads); a piece is never empty."""
    out: list = []
    for event in drive(reader_expecting(expectations), chunks):
        if isinstance(event, Passthrough):
            assert event.data, "empty Passthrough"
            if out and isinstance(out[-1], Passthrough):
                out[-1] = Passthrough(out[-1].data + event.data)
                continue
        out.append(event)
    return out


def passed(data: bytes):
    return [Passthrough(data)] if data else []


SINGLE, MULTI, COLLECT, SASL = (False,), (True,), (True, True), (False, False, True)
OK, ERR = Status(True, b"+OK\r\n"), Status(False, b"-ERR no\r\n")
BYE = b"-ERR Disconnected for inactivity.\r\n"  # Dovecot's, at its idle timeout
BODY = b"Subject: x\r\n\r\n..leading dot\r\n...\r\n..\r\nend.\r\n .\r\n"


@pytest.mark.parametrize(
    "wire, expectations, events",
    [
        (b"+OK Dovecot ready.\r\n", (), [Status(True, b"+OK Dovecot ready.\r\n")]),  # the greeting
        (BYE, (), [Status(False, BYE)]),  # unasked, before the upstream closes
        (b"+OK\n", [SINGLE], [Status(True, b"+OK\n")]),
        (b"+OK 1 2\r\n-ERR no\r\n", [SINGLE, SINGLE], [Status(True, b"+OK 1 2\r\n"), ERR]),
        (b"+OK 2 messages\r\n" + BODY + b".\r\n", [MULTI],
         [Status(True, b"+OK 2 messages\r\n"), Passthrough(BODY), End()]),
        (b"+OK\r\n.\r\n", [MULTI], [OK, End()]),  # an empty body: the status line's LF starts the "." line
        (b"+OK\n.\r\n", [MULTI], [Status(True, b"+OK\n"), End()]),
        (b"+OK\r\n\r\n.\r\n", [MULTI], [OK, Passthrough(b"\r\n"), End()]),
        (b"+OK\r\nab.\r\n.\r\n", [MULTI], [OK, Passthrough(b"ab.\r\n"), End()]),
        (b"+OK\r\n.\n.\r\n", [MULTI], [OK, Passthrough(b".\n"), End()]),  # only "." CRLF ends it
        (b"-ERR no\r\n+OK\r\n", [MULTI, SINGLE], [ERR, OK]),  # -ERR is always one line
        (b"+OK\r\n.\r\n-ERR no\r\n+OK\r\nx\r\n.\r\n", [MULTI, MULTI, MULTI],
         [OK, End(), ERR, OK, Passthrough(b"x\r\n"), End()]),
        (b"+OK\r\nCAPA\r\nTOP\r\nSTLS\r\n.\r\n+OK\r\n", [COLLECT, SINGLE],
         [OK, Collected([b"CAPA\r\n", b"TOP\r\n", b"STLS\r\n"]), OK]),
        (b"+OK\r\n.\r\n", [COLLECT], [OK, Collected([])]),
        (b"+OK\r\nSASL PLAIN\n..x\r\n.\r\n", [COLLECT], [OK, Collected([b"SASL PLAIN\n", b"..x\r\n"])]),
        (b"-ERR no\r\n", [COLLECT], [ERR]),
        (b"+ \r\n+OK Logged in.\r\n", [SASL], [Continuation(b"+ \r\n"), Status(True, b"+OK Logged in.\r\n")]),
        (b"+ VXNlcm5hbWU6\r\n+\r\n-ERR no\r\n+OK\r\n", [SASL, SINGLE],
         [Continuation(b"+ VXNlcm5hbWU6\r\n"), Continuation(b"+\r\n"), ERR, OK]),
        (b"+ \r\n", [SINGLE], [ProtocolViolation("not a POP3 status line: b'+ \\r\\n'")]),  # not in AUTH
        (b"+OKAY\r\n", [SINGLE], [ProtocolViolation("not a POP3 status line: b'+OKAY\\r\\n'")]),
        (b"+ok\r\n", [SINGLE], [ProtocolViolation("not a POP3 status line: b'+ok\\r\\n'")]),
        (b"\r\n", [SINGLE], [ProtocolViolation("not a POP3 status line: b'\\r\\n'")]),
        (b"* OK IMAP4\r\n", [SINGLE], [ProtocolViolation("not a POP3 status line: b'* OK IMAP4\\r\\n'")]),
        (b"-ERR\r\n", [SINGLE], [Status(False, b"-ERR\r\n")]),
        # What comes after a violation is not read: the reader is dead.
        (b"junk\r\n+OK\r\n", [SINGLE, SINGLE], [ProtocolViolation("not a POP3 status line: b'junk\\r\\n'")]),
        # Cut off by the end of input: nothing more, and the session knows it was mid-reply.
        (b"+OK", [SINGLE], []),
        (b"+OK\r\nabc\r\n.\r", [MULTI], [OK, Passthrough(b"abc\r")]),  # "\n.\r" might have been the end
    ],
)
def test_replies_every_split(wire, expectations, events):
    for chunks in splits(wire):
        assert read_replies(chunks, expectations) == events + [CLOSED], chunks


def test_the_terminator_is_found_split_at_every_two_places():
    stream = b"+OK\r\n.a\r\n..\r\n.\r\n+OK\r\n"
    assert len(stream) <= 24  # so that `splits` cuts it twice everywhere
    expected = [OK, Passthrough(b".a\r\n..\r\n"), End(), OK, CLOSED]
    for chunks in splits(stream):
        assert read_replies(chunks, [MULTI, SINGLE]) == expected, chunks


LONGEST_OK = b"+OK " + b"x" * (STATUS_LONGEST - 6) + b"\r\n"
LONGEST_ERR = b"-ERR " + b"x" * (STATUS_LONGEST - 6) + b"\n"


@pytest.mark.parametrize(
    "status, event",
    [
        (LONGEST_OK, Status(True, LONGEST_OK)),
        (LONGEST_OK[:5] + LONGEST_OK[4:], ProtocolViolation("status line too long")),
        (LONGEST_ERR, Status(False, LONGEST_ERR)),
        (LONGEST_ERR[:5] + LONGEST_ERR[4:], ProtocolViolation("status line too long")),
    ],
)
def test_the_status_line_bound(status, event):
    assert len(LONGEST_OK) == len(LONGEST_ERR) == STATUS_LONGEST
    for chunks in ([status], in_reads(status, 1), in_reads(status, 100), [status[:-1], status[-1:]]):
        assert read_replies(chunks, [MULTI]) == [event, CLOSED]


def test_an_endless_status_line_is_refused_once_over_the_bound_without_its_end():
    reader = Pop3ReplyReader()
    reader.receive_data(b"+OK " + b"x" * (STATUS_LONGEST - 5))
    assert reader.next_event() is NEED_DATA  # its line end may be next
    reader.receive_data(b"x")
    assert reader.next_event() == ProtocolViolation("status line too long")
    reader.receive_data(b"\r\n+OK\r\n")
    assert [reader.next_event() for _ in range(2)] == [CLOSED, CLOSED]


@pytest.mark.parametrize("extra, fits", [(0, True), (1, False)])
def test_a_collected_body_is_bounded(extra, fits):
    lines = [b"x" * 1022 + b"\r\n"] * 63 + [b"x" * (1022 + extra) + b"\r\n"]
    assert sum(map(len, lines)) == COLLECT_MOST + extra
    stream = b"+OK\r\n" + b"".join(lines) + b".\r\n"
    expected = Collected(lines) if fits else ProtocolViolation("multi-line reply over 64 KiB")
    for size in (1000, 1 << 20):
        assert read_replies(in_reads(stream, size), [COLLECT]) == [OK, expected, CLOSED]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 1000, 65536])
def test_a_big_body_is_passed_on_as_it_arrives_holding_back_at_most_three_bytes(size):
    """RETR of a big message: after each read everything but a possible start of the
    "." line has been handed out, so the reader never holds the body."""
    body = b"".join(b"line %d\r\n.%d\r\n..\r\n" % (i, i) for i in range(20000 if size > 5 else 500))
    reader = reader_expecting([MULTI])
    reader.receive_data(b"+OK\r\n")
    assert reader.next_event() == OK
    out, fed = bytearray(), 0
    for chunk in in_reads(body, size):
        reader.receive_data(chunk)
        fed += len(chunk)
        while (event := reader.next_event()) is not NEED_DATA:
            assert isinstance(event, Passthrough) and 0 < len(event.data) <= size + 3, event
            out += event.data
        assert fed - 3 <= len(out) <= fed
    reader.receive_data(b".\r\n")
    rest = [reader.next_event() for _ in range(3)]
    assert out + b"".join(event.data for event in rest[:-2]) == body
    assert rest[-2:] == [End(), NEED_DATA]


@pytest.mark.parametrize(
    "verb, args, multiline",
    [
        ("CAPA", (), True), ("RETR", ("1",), True), ("TOP", ("1", "0"), True), ("retr", ("1",), True),
        ("LIST", (), True), ("LIST", ("1",), False), ("UIDL", (), True), ("UIDL", ("1",), False),
        ("AUTH", (), True), ("AUTH", ("PLAIN",), False), ("LANG", (), True), ("LANG", ("en",), False),
        ("STAT", (), False), ("USER", ("a",), False), ("PASS", ("a",), False), ("DELE", ("1",), False),
        ("NOOP", (), False), ("RSET", (), False), ("QUIT", (), False), ("STLS", (), False),
        ("LIST", ("", "1"), False),  # "LIST  1": Dovecot answers one line
    ],
)
def test_multiline_reply(verb, args, multiline):
    assert multiline_reply(verb, args) is multiline


# Replies as an upstream sends them, with the events each must give.
NO_LF = st.binary(max_size=60).filter(lambda b: b"\n" not in b)
TEXTS = st.one_of(st.just(b""), NO_LF.map(lambda b: b" " + b))
STUFFED_LINES = st.lists(
    st.one_of(st.sampled_from([b"", b".", b"..", b".x", b"a.", b"\r", b" ."]),
              NO_LF),
    max_size=8,
).map(lambda lines: b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines))


@st.composite
def replies(draw):
    """(expectation, wire bytes, events) for one command's reply."""
    ok = draw(st.booleans())
    line = (b"+OK" if ok else b"-ERR") + draw(TEXTS) + draw(st.sampled_from([b"\r\n", b"\n"]))
    shape = draw(st.sampled_from([SINGLE, MULTI, COLLECT, SASL]))
    if shape == SASL:
        challenges = draw(st.lists(st.sampled_from([b"+ \r\n", b"+\r\n", b"+ VXNlcm5hbWU6\r\n"]), max_size=2))
        return shape, b"".join(challenges) + line, [Continuation(c) for c in challenges] + [Status(ok, line)]
    if not ok or shape == SINGLE:
        return shape, line, [Status(ok, line)]
    body = draw(STUFFED_LINES)
    if shape == COLLECT:
        lines = [part + b"\n" for part in body.split(b"\n")[:-1]]
        return shape, line + body + b".\r\n", [Status(ok, line), Collected(lines)]
    return shape, line + body + b".\r\n", [Status(ok, line), *passed(body), End()]


CONVERSATIONS = st.lists(replies(), max_size=6)
UPSTREAM_TOKENS = [b"+OK\r\n", b"-ERR x\r\n", b"+ \r\n", b".\r\n", b"\r\n.\r\n", b"\r\n", b"\n", b".", b"\r",
                   b"..", b"a", b"\0", b"x" * (STATUS_LONGEST - 2), b"y" * 1000]
UPSTREAM_BYTES = st.one_of(st.lists(st.sampled_from(UPSTREAM_TOKENS), max_size=30).map(b"".join),
                           st.binary(max_size=600))
EXPECTATIONS = st.lists(st.sampled_from([SINGLE, MULTI, COLLECT, SASL]), max_size=8)


@given(CONVERSATIONS, CUTS)
@example([(MULTI, b"+OK\r\n.a\r\n.\r\n", [OK, Passthrough(b".a\r\n"), End()])], [5, 6, 7, 9, 10, 11])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_replies_do_not_depend_on_the_reads(conversation, cuts):
    """Pipelined replies, read in one go and in any reads: each reply's events, bodies
    relayed exactly as sent, dot-stuffing kept."""
    expectations = [shape for shape, _, _ in conversation]
    stream = b"".join(wire for _, wire, _ in conversation)
    expected = [event for _, _, events in conversation for event in events] + [CLOSED]
    assert read_replies([stream], expectations) == expected
    assert read_replies(chunked(stream, cuts), expectations) == expected
    assert read_replies(in_reads(stream, 1), expectations) == expected
    assert relayed(expected) == stream


@given(UPSTREAM_BYTES, EXPECTATIONS, CUTS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_upstream_bytes_give_only_the_documented_events(stream, expectations, cuts):
    expected = read_replies([stream], expectations)
    assert read_replies(chunked(stream, cuts), expectations) == expected
    assert expected[-1] is CLOSED and CLOSED not in expected[:-1]
    assert stream.startswith(relayed(expected))  # byte for byte, nothing added or changed
    for event in expected[:-1]:
        if isinstance(event, (Status, Continuation)):
            assert event.line.endswith(b"\n") and len(event.line) <= STATUS_LONGEST
        if isinstance(event, Status):
            assert event.line.startswith(b"+OK" if event.ok else b"-ERR")
        elif isinstance(event, Continuation):
            assert event.line.startswith(b"+") and not event.line.startswith(b"+OK")
        elif isinstance(event, ProtocolViolation):
            assert event is expected[-2]  # the reader is dead after it
        else:
            assert isinstance(event, (Passthrough, End, Collected)), event


def relayed(events) -> bytes:
    """What a session relays from these events: the bytes of the replies they framed."""
    out = bytearray()
    for event in events:
        if isinstance(event, (Status, Continuation)):
            out += event.line
        elif isinstance(event, Passthrough):
            out += event.data
        elif isinstance(event, Collected):
            out += b"".join(event.lines) + b".\r\n"
        elif isinstance(event, End):
            out += b".\r\n"
    return bytes(out)
