"""The proxy's server side reading what an IMAP client sends (ImapServerMachine): wire-byte
tables split at every position, the bounds, memory while a literal streams, and
properties (commands built from nodes parse back to them; the reads never change the
events; no bytes make it raise), no sockets."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailproxy.protocol.imap import (
    CLOSED,
    NEED_DATA,
    PRE_LOGIN_LIMITS,
    BadCommand,
    Command,
    CommandRest,
    IdleDone,
    IdleOther,
    ImapServerMachine,
    LiteralAhead,
    LiteralData,
    SaslResponse,
)
from mailproxy.protocol.imap_syntax import Atom, Literal, ParenList, Quoted, astring
from tests.support.chunks import chunked, drive, splits

SMALL = {"max_inline_literal": 8}  # literals over 8 bytes stream in most tests


def inline_or_stream(event: LiteralAhead) -> str:
    return "inline" if event.fits_inline else "stream"


def read_all(chunks, decide=inline_or_stream, **limits) -> list:
    """Every event up to CLOSED, the machine driven as a session drives it: a decision
    on each LiteralAhead, IDLE and AUTHENTICATE without an initial response answered
    with `+`."""
    machine = ImapServerMachine(**limits)
    return drive(machine, chunks, lambda event: answer(machine, event, decide), slack=8)


def answer(machine: ImapServerMachine, event, decide) -> None:
    if isinstance(event, LiteralAhead):
        choice = decide(event)
        if choice == "refuse":
            machine.refuse_literal()
        else:
            machine.accept_literal(stream=choice == "stream")
    elif isinstance(event, Command) and event.verb == "IDLE":
        machine.start_idle()
    elif isinstance(event, Command) and event.verb == "AUTHENTICATE" and len(event.args) == 1:
        machine.expect_sasl()


def outline(events) -> list:
    """The events with each run of LiteralData joined: how a streamed literal is cut
    depends on the reads."""
    out: list = []
    for event in events:
        if isinstance(event, LiteralData) and out and isinstance(out[-1], LiteralData):
            out[-1] = LiteralData(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def every_split(stream: bytes, decide=inline_or_stream, **limits) -> list:
    """The outline of the events, the same however the stream was cut into reads."""
    expected = outline(read_all([stream], decide, **limits))
    for chunks in splits(stream):
        assert outline(read_all(chunks, decide, **limits)) == expected, chunks
    return expected


def ahead(tag, verb, args, head, continued=False, fits=True) -> LiteralAhead:
    return LiteralAhead(tag, verb, tuple(args), args[-1], head, continued, fits)


def lit(size, value=None, sync=True, binary=False) -> Literal:
    return Literal(size, sync, binary, value)


NOOP = Command("n1", "NOOP", (), [b"n1 NOOP\r\n"])
DELETED = ParenList((Atom("\\Deleted"),))
HELLO = b"Subject: hi\r\n\r\nhello\r\n"  # 22 bytes, over SMALL's inline limit

# --- commands, wire bytes ---------------------------------------------------------------------

# (what the client sent, the events read from it)
COMMANDS = [
    (b'a1 LOGIN "alice" "p a\\"s\\\\s"\r\n',
     [Command("a1", "LOGIN", (Quoted("alice"), Quoted('p a"s\\s')), [b'a1 LOGIN "alice" "p a\\"s\\\\s"\r\n'])]),
    (b"a1 login alice secret\n",  # a bare LF ends a line too; verbs are upper-cased
     [Command("a1", "LOGIN", (Atom("alice"), Atom("secret")), [b"a1 login alice secret\n"])]),
    # Sync literals: the client waits for "+" before each (the session writes it).
    (b"a1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
     [ahead("a1", "LOGIN", [lit(5)], [b"a1 LOGIN {5}\r\n"]),
      ahead("a1", "LOGIN", [lit(5, b"alice"), lit(6)], [b"a1 LOGIN {5}\r\n", b"alice", b" {6}\r\n"]),
      Command("a1", "LOGIN", (lit(5, b"alice"), lit(6, b"secret")),
              [b"a1 LOGIN {5}\r\n", b"alice", b" {6}\r\n", b"secret", b"\r\n"])]),
    # Small non-sync literals are read without a pause.
    (b"a1 LOGIN {5+}\r\nalice \"secret\"\r\n",
     [Command("a1", "LOGIN", (lit(5, b"alice", sync=False), Quoted("secret")),
              [b"a1 LOGIN {5+}\r\n", b"alice", b' "secret"\r\n'])]),
    (b"a1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",  # SASL-IR (RFC 4959)
     [Command("a1", "AUTHENTICATE", (Atom("PLAIN"), Atom("AGFsaWNlAHNlY3JldA==")),
              [b"a1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n"])]),
    (b"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
     [Command("a1", "AUTHENTICATE", (Atom("PLAIN"),), [b"a1 AUTHENTICATE PLAIN\r\n"]),
      SaslResponse(b"AGFsaWNlAHNlY3JldA==")]),
    (b"a1 AUTHENTICATE PLAIN\r\n*\n",
     [Command("a1", "AUTHENTICATE", (Atom("PLAIN"),), [b"a1 AUTHENTICATE PLAIN\r\n"]), SaslResponse(b"*")]),
    (b"a2 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\r\n",
     [Command("a2", "UID STORE", (Atom("1:*"), Atom("+FLAGS.SILENT"), DELETED),
              [b"a2 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\r\n"])]),
    (b"a2 uid expunge 4:7\r\n", [Command("a2", "UID EXPUNGE", (Atom("4:7"),), [b"a2 uid expunge 4:7\r\n"])]),
    (b"a2 STORE 2 (UNCHANGEDSINCE 5) FLAGS \\Deleted\r\n",
     [Command("a2", "STORE", (Atom("2"), ParenList((Atom("UNCHANGEDSINCE"), Atom("5"))), Atom("FLAGS"),
                              Atom("\\Deleted")), [b"a2 STORE 2 (UNCHANGEDSINCE 5) FLAGS \\Deleted\r\n"])]),
    # A section runs to its "]", spaces and parentheses included.
    (b"a3 FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>)\r\n",
     [Command("a3", "FETCH", (Atom("1:*"), ParenList((Atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>"),))),
              [b"a3 FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>)\r\n"])]),
    (b"a3 UID FETCH 1 (FLAGS BODY[1.MIME] BINARY.PEEK[1]<0.10>)\r\n",
     [Command("a3", "UID FETCH",
              (Atom("1"), ParenList((Atom("FLAGS"), Atom("BODY[1.MIME]"), Atom("BINARY.PEEK[1]<0.10>")))),
              [b"a3 UID FETCH 1 (FLAGS BODY[1.MIME] BINARY.PEEK[1]<0.10>)\r\n"])]),
    (b"a3 SELECT [Gmail]/Drafts\r\n",
     [Command("a3", "SELECT", (Atom("[Gmail]/Drafts"),), [b"a3 SELECT [Gmail]/Drafts\r\n"])]),
    (b"a3 SELECT a[b\r\n", [Command("a3", "SELECT", (Atom("a[b"),), [b"a3 SELECT a[b\r\n"])]),  # no "]": a plain atom
    (b"a4 SEARCH OR (FROM x (TO \"y z\" (NOT (SEEN)))) NOT DELETED\r\n",
     [Command("a4", "SEARCH", (Atom("OR"), ParenList((Atom("FROM"), Atom("x"), ParenList((
         Atom("TO"), Quoted("y z"), ParenList((Atom("NOT"), ParenList((Atom("SEEN"),)))))))),
         Atom("NOT"), Atom("DELETED")), [b"a4 SEARCH OR (FROM x (TO \"y z\" (NOT (SEEN)))) NOT DELETED\r\n"])]),
    (b"a4 SEARCH CHARSET UTF-8 TEXT {4}\r\nb\xc3\xa4r\r\n",  # a SEARCH string as a literal
     [ahead("a4", "SEARCH", [Atom("CHARSET"), Atom("UTF-8"), Atom("TEXT"), lit(4)],
            [b"a4 SEARCH CHARSET UTF-8 TEXT {4}\r\n"]),
      Command("a4", "SEARCH", (Atom("CHARSET"), Atom("UTF-8"), Atom("TEXT"), lit(4, b"b\xc3\xa4r")),
              [b"a4 SEARCH CHARSET UTF-8 TEXT {4}\r\n", b"b\xc3\xa4r", b"\r\n"])]),
    (b'a5 LIST "" "*"\r\n', [Command("a5", "LIST", (Quoted(""), Quoted("*")), [b'a5 LIST "" "*"\r\n'])]),
    (b"a5 LIST \"\" %\r\n", [Command("a5", "LIST", (Quoted(""), Atom("%")), [b"a5 LIST \"\" %\r\n"])]),
    (b"a6 APPEND INBOX (\\Seen) {5}\r\nhello\r\n",
     [ahead("a6", "APPEND", [Atom("INBOX"), ParenList((Atom("\\Seen"),)), lit(5)],
            [b"a6 APPEND INBOX (\\Seen) {5}\r\n"]),
      Command("a6", "APPEND", (Atom("INBOX"), ParenList((Atom("\\Seen"),)), lit(5, b"hello")),
              [b"a6 APPEND INBOX (\\Seen) {5}\r\n", b"hello", b"\r\n"])]),
    (b"a6 APPEND INBOX {0}\r\n\r\n",
     [ahead("a6", "APPEND", [Atom("INBOX"), lit(0)], [b"a6 APPEND INBOX {0}\r\n"]),
      Command("a6", "APPEND", (Atom("INBOX"), lit(0, b"")), [b"a6 APPEND INBOX {0}\r\n", b"", b"\r\n"])]),
    # literal8 may carry NUL; UTF8 (~{n}) of RFC 6855 is an atom and a list.
    (b"a6 APPEND INBOX UTF8 (~{3+}\r\na\0b)\r\n",
     [Command("a6", "APPEND", (Atom("INBOX"), Atom("UTF8"), ParenList((lit(3, b"a\0b", sync=False, binary=True),))),
              [b"a6 APPEND INBOX UTF8 (~{3+}\r\n", b"a\0b", b")\r\n"])]),
    # Streamed: the head went upstream, then the literal as it arrives, then the rest.
    (b"a7 APPEND INBOX {22}\r\n" + HELLO + b"\r\n",
     [ahead("a7", "APPEND", [Atom("INBOX"), lit(22)], [b"a7 APPEND INBOX {22}\r\n"], fits=False),
      LiteralData(HELLO), CommandRest(b"\r\n")]),
    (b"a7 APPEND INBOX {22+}\r\n" + HELLO + b"\r\n",
     [ahead("a7", "APPEND", [Atom("INBOX"), lit(22, sync=False)], [b"a7 APPEND INBOX {22+}\r\n"], fits=False),
      LiteralData(HELLO), CommandRest(b"\r\n")]),
    # MULTIAPPEND (RFC 3502): the next message's marker ends the line after a literal.
    (b"a8 APPEND INBOX {22+}\r\n" + HELLO + b" (\\Seen) {22}\r\n" + HELLO + b" {2+}\r\nhi\r\n",
     [ahead("a8", "APPEND", [Atom("INBOX"), lit(22, sync=False)], [b"a8 APPEND INBOX {22+}\r\n"], fits=False),
      LiteralData(HELLO),
      ahead("a8", "APPEND", [Atom("INBOX"), lit(22, sync=False), ParenList((Atom("\\Seen"),)), lit(22)],
            [b" (\\Seen) {22}\r\n"], continued=True, fits=False),
      LiteralData(HELLO), CommandRest(b" {2+}\r\nhi\r\n")]),
    (b"a9 IDLE\r\nDONE\r\n", [Command("a9", "IDLE", (), [b"a9 IDLE\r\n"]), IdleDone()]),
    (b"a9 IDLE\r\ndone\n", [Command("a9", "IDLE", (), [b"a9 IDLE\r\n"]), IdleDone()]),
    # Dovecot answers any other line with BAD and ends IDLE: forwarded, not parsed.
    (b"a9 IDLE\r\nb1 NOOP\r\n", [Command("a9", "IDLE", (), [b"a9 IDLE\r\n"]), IdleOther(b"b1 NOOP\r\n")]),
    (b"a9 IDLE\r\nDONE \r\n", [Command("a9", "IDLE", (), [b"a9 IDLE\r\n"]), IdleOther(b"DONE \r\n")]),
    (b"b] x\r\n", [Command("b]", "X", (), [b"b] x\r\n"])]),
]


@pytest.mark.parametrize("wire, events", COMMANDS)
def test_commands_every_split(wire, events):
    """Then a NOOP parses cleanly after each, with the end of input right after it."""
    assert every_split(wire + b"n1 NOOP\r\n", **SMALL) == events + [NOOP, CLOSED]


def test_literal_values_in_a_command_are_text_by_astring():
    [command, _] = read_all([b"a1 LOGIN {5+}\r\nalice \"s\\\"1\"\r\n"])
    assert [astring(arg) for arg in command.args] == ["alice", 's"1']
    assert astring(Atom("INBOX")) == "INBOX"
    assert astring(Literal(3, True, False, b"\xc3\xa4\xff")) == "\u00e4\udcff"
    assert astring(Literal(3, True, False)) is None  # streamed: no value
    assert astring(ParenList((Atom("a"),))) is None


def test_the_bytes_of_a_streamed_command_are_all_handed_out_in_order():
    wire = b"a8 APPEND INBOX {22+}\r\n" + HELLO + b" (\\Seen) {3+}\r\nabc {22}\r\n" + HELLO + b"\r\n"
    for chunks in splits(wire):
        out = []
        for event in read_all(chunks, **SMALL):
            if isinstance(event, LiteralAhead):
                out += event.head
            elif isinstance(event, (LiteralData, CommandRest)):
                out.append(event.data if isinstance(event, LiteralData) else event.raw)
        assert b"".join(out) == wire


# --- refusals -----------------------------------------------------------------------------------

REFUSE = lambda event: "refuse"  # noqa: E731


def test_a_refused_sync_literal_ends_its_command():
    """The client gets NO instead of "+" and sends no more of it."""
    events = every_split(b"a1 APPEND INBOX {30}\r\nn1 NOOP\r\n", REFUSE, **SMALL)
    assert events == [ahead("a1", "APPEND", [Atom("INBOX"), lit(30)], [b"a1 APPEND INBOX {30}\r\n"], fits=False),
                      NOOP, CLOSED]


def test_a_sync_literal_over_the_limit_is_the_sessions_to_refuse():
    """It is not on the wire yet: NO [TOOBIG] instead of "+", and the session goes on."""
    events = every_split(b"a1 APPEND INBOX {101}\r\nn1 NOOP\r\n", REFUSE, max_literal_size=100, **SMALL)
    assert events == [ahead("a1", "APPEND", [Atom("INBOX"), lit(101)], [b"a1 APPEND INBOX {101}\r\n"], fits=False),
                      NOOP, CLOSED]


def test_a_refused_non_sync_literal_is_discarded_by_count_never_parsed():
    """Its bytes look like commands; they are skipped, then the rest of the command,
    whatever literals it has, and the next command is read."""
    body = b"x1 DELETE INBOX\r\nx2 LOGOUT\r\n"
    wire = (b"a1 APPEND INBOX {%d+}\r\n" % len(body) + body
            + b" {3+}\r\nab) {28+}\r\n" + body + b" {5}\r\nn1 NOOP\r\n")
    events = every_split(wire, REFUSE, **SMALL)
    assert events == [ahead("a1", "APPEND", [Atom("INBOX"), lit(28, sync=False)], [wire[:23]], fits=False),
                      NOOP, CLOSED]
    assert every_split(wire.replace(b" {5}", b" ) {5}"), REFUSE, **SMALL) == events  # bad there: answered already


def test_refusing_after_a_streamed_literal():
    wire = b"a8 APPEND INBOX {22+}\r\n" + HELLO + b" {30+}\r\n" + b"z" * 30 + b"\r\nn1 NOOP\r\n"
    decide = lambda event: "refuse" if event.continued else "stream"  # noqa: E731
    events = every_split(wire, decide, **SMALL)
    second = ahead("a8", "APPEND", [Atom("INBOX"), lit(22, sync=False), lit(30, sync=False)], [b" {30+}\r\n"],
                   continued=True, fits=False)
    assert events[1:] == [LiteralData(HELLO), second, NOOP, CLOSED]


# --- bad commands -------------------------------------------------------------------------------

LIMITS = {"max_line_length": 40, "max_literals": 3, "max_depth": 4, **SMALL}
LONG = b"a1 LOGIN " + b"x" * 29 + b"\r\n"  # 40 bytes: the longest line there may be

# (what the client sent, the reply it gets); the next command is read cleanly after it
BAD = [
    (b"a1 LOGIN {x}\r\n", BadCommand("a1", "Invalid literal")),
    (b"a1 LOGIN {5}x\r\n", BadCommand("a1", "Invalid literal")),
    (b"a1 LOGIN {99999999999}\r\n", BadCommand("a1", "Invalid literal")),
    (b"a1 LOGIN ~{x}\r\n", BadCommand("a1", "Invalid literal")),
    (b"a1 SEARCH (((((ALL)))))\r\n", BadCommand("a1", "Too deeply nested")),
    (b"a1 SEARCH ((((ALL)) ((((ALL\r\n", BadCommand("a1", "Too deeply nested")),
    (b"a1 X {1}\r\na {1}\r\nb {1}\r\nc {1}\r\n", BadCommand("a1", "Too many literals")),
    (b"a1 LOGIN a\0b c\r\n", BadCommand("a1", "NUL in command")),
    (b"a1 LOGIN {3+}\r\na\0b c\r\n", BadCommand("a1", "NUL outside a literal8")),
    (b"a1 LOGIN {3+}\r\na\0b {1}\r\n", BadCommand("a1", "NUL outside a literal8")),  # answered instead of "+"
    (b"a1 NOOP\rx\r\n", BadCommand("a1", "Control character in command")),
    (b"a1 NOOP\tx\r\n", BadCommand("a1", "Control character in command")),
    (b"\r\n", BadCommand(None, "Empty command line")),
    (b"a1\r\n", BadCommand("a1", "Missing command")),
    (b"a1 \r\n", BadCommand("a1", "Missing command")),
    (b"a1 (NOOP)\r\n", BadCommand("a1", "Missing command")),
    (b"a1 {4}\r\n", BadCommand("a1", "Missing command")),
    (b"+1 NOOP\r\n", BadCommand(None, "Invalid tag")),
    (b"* NOOP\r\n", BadCommand(None, "Invalid tag")),
    (b"a\"1 NOOP\r\n", BadCommand(None, "Invalid tag")),
    (b" a1 NOOP\r\n", BadCommand(None, "Invalid tag")),
    (b"a1 FETCH 1 (FLAGS))\r\n", BadCommand("a1", "Unexpected )")),
    (b"a1 FETCH 1 (FLAGS\r\n", BadCommand("a1", "Missing )")),
    (b"a1 FETCH 1 ({2+}\r\nab\r\n", BadCommand("a1", "Missing )")),
    (b"a1 FETCH 1(FLAGS)\r\n", BadCommand("a1", "Missing space between arguments")),
    (b'a1 LOGIN "abc\r\n', BadCommand("a1", "Invalid quoted string")),
    (b'a1 LOGIN "a\\bc"\r\n', BadCommand("a1", "Invalid quoted string")),
    (b'a1 LOGIN "x {5}"x\r\n', BadCommand("a1", "Missing space between arguments")),
    (LONG[:-2] + b"x\r\n", BadCommand("a1", "Line too long")),  # one byte over
    (b"a1 " + b"x" * 200 + b"\n", BadCommand("a1", "Line too long")),
    (b"x" * 200 + b" NOOP\r\n", BadCommand(None, "Line too long")),  # no tag before the limit
    (b"a1 LOGIN {3+}\r\nabc " + b"y" * 23 + b"\r\n", BadCommand("a1", "Line too long")),  # 41 bytes of text
    (b"a1 LOGIN {3}\r\nabc " + b"y" * 24 + b"\r\n", BadCommand("a1", "Line too long")),
]


@pytest.mark.parametrize("wire, reply", BAD)
def test_bad_commands_every_split(wire, reply):
    assert every_split(wire + b"n1 NOOP\r\n", **LIMITS)[-3:] == [reply, NOOP, CLOSED]
    assert every_split(b"n1 NOOP\r\n" + wire, **LIMITS)[-2:] == [reply, CLOSED]


def test_the_bounds_themselves_are_allowed():
    assert read_all([LONG], **LIMITS)[-2].verb == "LOGIN"
    assert read_all([b"a1 SEARCH ((((ALL))))\r\n"], **LIMITS)[-2].verb == "SEARCH"
    assert read_all([b"a1 X {1}\r\na {1}\r\nb {1}\r\nc\r\n"], **LIMITS)[-2].verb == "X"
    # 40 bytes of text across the lines of one command, its literal not counted.
    assert read_all([b"a1 LOGIN {3+}\r\nabc " + b"y" * 22 + b"\r\n"], **LIMITS)[-2].verb == "LOGIN"


@pytest.mark.parametrize("size", [1, 7, 39, 40, 41, 100])
def test_an_overlong_line_in_many_reads_is_answered_once(size):
    line = b"a1 NOOP " + b"y" * 300
    stream = line + b"\r\nn1 NOOP\r\n" + line + b"\nn1 NOOP\r\n"
    reads = [stream[i : i + size] for i in range(0, len(stream), size)]
    too_long = BadCommand("a1", "Line too long")
    assert read_all(reads, **LIMITS) == [too_long, NOOP, too_long, NOOP, CLOSED]


def test_the_part_of_an_overlong_line_already_read_is_not_kept():
    machine = ImapServerMachine(**LIMITS)
    machine.receive_data(b"a1 " + b"x" * 40)
    assert machine.next_event() is NEED_DATA
    assert machine.take_pending() == b""
    # At the limit it may still be a command: kept until its line end tells.
    machine.receive_data(b"\r\n" + LONG[:-1])
    assert machine.next_event() == BadCommand("a1", "Line too long")
    assert machine.next_event() is NEED_DATA
    assert machine.take_pending() == LONG[:-1]


def test_inline_literal_bytes_per_command_are_bounded():
    """Past `max_inline_bytes` a small non-sync literal pauses like a big one."""
    wire = b"a1 X {6+}\r\nabcdef {6+}\r\nghijkl\r\n"
    events = every_split(wire, max_inline_bytes=10, **SMALL)
    assert events == [ahead("a1", "X", [lit(6, b"abcdef", sync=False), lit(6, sync=False)],
                            [b"a1 X {6+}\r\n", b"abcdef", b" {6+}\r\n"], fits=False),
                      LiteralData(b"ghijkl"), CommandRest(b"\r\n"), CLOSED]
    assert every_split(wire, max_inline_bytes=12, **SMALL)[0].verb == "X"  # a Command


# --- fatal: the client's bytes cannot be placed ----------------------------------------------------

FATAL = [
    # A non-sync literal over the limit: its bytes are on the wire, refusing is impossible.
    (b"a1 APPEND INBOX {101+}\r\n", BadCommand("a1", "[TOOBIG] Literal too big", True)),
    (b"a1 APPEND INBOX (x {101+}\r\n", BadCommand("a1", "[TOOBIG] Literal too big", True)),
    # A bad line that ends like a non-sync marker: the client may be sending its bytes.
    (b"a1 LOGIN \"x {5+}\r\n", BadCommand("a1", "Invalid quoted string", True)),
    (b"a1 X {1}\r\na {1}\r\nb {1}\r\nc {1+}\r\n", BadCommand("a1", "Too many literals", True)),
    (b"a1 " + b"x" * 200 + b" {5+}\r\n", BadCommand("a1", "Line too long", True)),
    (b"a1 " + b"x" * 200 + b" {5+}\n", BadCommand("a1", "Line too long", True)),
    # Part of the command went upstream: a BAD from the proxy cannot end it there.
    (b"a1 APPEND INBOX {22+}\r\n" + HELLO + b")\r\n", BadCommand("a1", "Unexpected )", True)),
    (b"a1 APPEND INBOX {22+}\r\n" + HELLO + b" {3+}\r\na\0b\r\n", BadCommand("a1", "NUL outside a literal8", True)),
    (b"a1 APPEND INBOX {22+}\r\n" + HELLO + b" " + b"y" * 50 + b"\r\n", BadCommand("a1", "Line too long", True)),
]


@pytest.mark.parametrize("wire, reply", FATAL)
def test_fatal_bad_commands_end_the_reading(wire, reply):
    events = every_split(wire + b"n1 NOOP\r\n", max_literal_size=100, **LIMITS)
    assert events[-2:] == [reply, CLOSED]
    assert NOOP not in events


def test_the_pre_login_non_sync_literal_cap():
    """LITERAL- before login: 4096 bytes at most, a bigger one closes (as Dovecot does)."""
    for size, fatal in ((4096, False), (4097, True)):
        wire = b"a1 LOGIN {%d+}\r\n" % size + b"a" * size + b" x\r\n" + NOOP.raw[0]
        events = read_all([wire], **PRE_LOGIN_LIMITS)
        if fatal:
            assert events == [BadCommand("a1", "[TOOBIG] Literal too big", True), CLOSED]
        else:
            assert events[1:] == [NOOP, CLOSED]
            assert events[0].args == (lit(size, b"a" * size, sync=False), Atom("x"))


def test_limits_change_from_the_next_command():
    machine = ImapServerMachine(**PRE_LOGIN_LIMITS)
    machine.receive_data(b"a1 X {9000}\r\n")
    assert machine.next_event().fits_inline is False
    machine.refuse_literal()
    machine.set_limits(max_line_length=65536, max_inline_literal=65536, max_nonsync_literal=None)
    machine.receive_data(b"a2 X {9000}\r\n")
    assert machine.next_event().fits_inline is True
    machine.accept_literal()
    machine.receive_data(b"v" * 9000 + b" {10000+}\r\n" + b"w" * 10000 + b"\r\n")
    command = machine.next_event()
    assert command.args == (lit(9000, b"v" * 9000), lit(10000, b"w" * 10000, sync=False))


# --- the machine's own rules ------------------------------------------------------------------------


def test_a_paused_machine_repeats_its_question_until_answered():
    machine = ImapServerMachine(**SMALL)
    machine.receive_data(b"a1 APPEND INBOX {22}\r\n")
    question = machine.next_event()
    assert isinstance(question, LiteralAhead)
    machine.receive_data(HELLO + b"\r\n")
    assert machine.next_event() == question
    with pytest.raises(ValueError):
        machine.accept_literal()  # too big to read whole
    with pytest.raises(RuntimeError):
        machine.start_idle()
    machine.accept_literal(stream=True)
    assert machine.next_event() == LiteralData(HELLO)
    with pytest.raises(RuntimeError):
        machine.refuse_literal()  # nothing is waiting
    assert machine.next_event() == CommandRest(b"\r\n")
    assert machine.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "chunks, events",
    [
        ([], [CLOSED]),
        ([b"a1 NOOP"], [CLOSED]),  # a command cut off by the end of input is dropped
        ([b"a1 LOGIN {5}\r\nali"], [ahead("a1", "LOGIN", [lit(5)], [b"a1 LOGIN {5}\r\n"]), CLOSED]),
        ([b"a1 LOGIN {5+}\r\nalice"], [CLOSED]),
        ([b"a1 APPEND INBOX {22+}\r\n", HELLO[:10]],
         [ahead("a1", "APPEND", [Atom("INBOX"), lit(22, sync=False)], [b"a1 APPEND INBOX {22+}\r\n"], fits=False),
          LiteralData(HELLO[:10]), CLOSED]),
        ([b"a1 " + b"x" * 100], [CLOSED]),
        ([b"a1 IDLE\r\nDON"], [Command("a1", "IDLE", (), [b"a1 IDLE\r\n"]), CLOSED]),
    ],
)
def test_the_end_of_input(chunks, events):
    assert outline(read_all(chunks, **LIMITS)) == events


def test_closed_stays_closed():
    machine = ImapServerMachine()
    machine.receive_data(b"n1 NOOP\r\na2")
    machine.receive_data(b"")
    machine.receive_data(b" NOOP\r\n")  # after the end: ignored
    assert [machine.next_event() for _ in range(3)] == [NOOP, CLOSED, CLOSED]


def test_take_pending_drops_what_was_received_and_not_read():
    """What a client pipelined after STARTTLS, in plaintext, however the reads fell."""
    head = b"a1 STARTTLS\r\n"
    stream = head + b"a2 LOGIN alice {6+}\r\nsecret\r\na3 NO"
    for cut in range(len(head), len(stream) + 1):
        machine = ImapServerMachine()
        machine.receive_data(stream[:cut])
        assert machine.next_event() == Command("a1", "STARTTLS", (), [head])
        if cut < len(stream):
            machine.receive_data(stream[cut:])
        assert machine.take_pending() == stream[len(head) :]
        assert machine.next_event() is NEED_DATA
        machine.receive_data(b"n1 NOOP\r\n")
        assert machine.next_event() == NOOP


def test_idle_and_sasl_lines_are_bounded_too():
    for verb in (b"IDLE", b"AUTHENTICATE PLAIN"):
        wire = b"a1 " + verb + b"\r\n" + b"z" * 100 + b"\r\nn1 NOOP\r\n"
        events = every_split(wire, **LIMITS)
        assert events[1:] == [BadCommand(None, "Line too long"), NOOP, CLOSED]


# --- memory while a literal streams -------------------------------------------------------------


def test_a_50_mb_append_streams_in_the_reads_it_arrived_in():
    """Every read is handed on as it is, never joined or copied: memory stays at the
    read, whether the session takes each event at once or lets reads pile up."""
    read = b"m" * 65536
    count = 50 * 1024 * 1024 // len(read)
    tracemalloc.start()
    try:
        machine = ImapServerMachine()
        machine.receive_data(b"a1 APPEND INBOX {%d+}\r\n" % (count * len(read)))
        assert machine.next_event().fits_inline is False
        machine.accept_literal(stream=True)
        for index in range(count):
            machine.receive_data(read)
            if index % 100 == 0:  # a few piled up reads as well
                continue
            while (event := machine.next_event()) is not NEED_DATA:
                assert event.data is read
        machine.receive_data(b"\r\n")
        events = []
        while (event := machine.next_event()) is not NEED_DATA:
            events.append(event)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(event.data is read for event in events[:-1])
    assert events[-1] == CommandRest(b"\r\n")
    assert peak < 512 * 1024, peak


def test_a_refused_literal_is_discarded_without_being_kept():
    read = b"q" * 65536
    tracemalloc.start()
    try:
        machine = ImapServerMachine()
        machine.receive_data(b"a1 APPEND INBOX {%d+}\r\n" % (200 * len(read)))
        machine.next_event()
        machine.refuse_literal()
        for _ in range(200):
            machine.receive_data(read)
            assert machine.next_event() is NEED_DATA
        machine.receive_data(b"\r\nn1 NOOP\r\n")
        assert machine.next_event() == NOOP
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak


# --- properties -----------------------------------------------------------------------------------

ATOMS = st.one_of(
    st.sampled_from(["NIL", "1:*", "\\Deleted", "+FLAGS.SILENT", "BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>",
                     "BODY[]", "[Gmail]/Sent", "~x", "%", "UTF8", "]"]),
    st.text("abcXYZ019:*.,-_+\\%]<>", min_size=1, max_size=6),
).map(Atom)
QUOTED = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=8).map(Quoted)
LITERALS = st.builds(lambda value, sync, binary: Literal(len(value), sync, binary, value),
                     st.binary(max_size=12).filter(lambda v: b"\0" not in v) | st.sampled_from([b"a\0b"]),
                     st.booleans(), st.booleans()).filter(lambda lit: lit.binary or b"\0" not in lit.value)
NODES = st.recursive(ATOMS | QUOTED | LITERALS, lambda inner: st.lists(inner, max_size=4).map(
    lambda items: ParenList(tuple(items))), max_leaves=10)


def wire(node) -> bytes:
    """A node as a client writes it."""
    if isinstance(node, Atom):
        return node.text.encode()
    if isinstance(node, Quoted):
        return b'"' + node.text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if isinstance(node, Literal):
        marker = b"%s{%d%s}" % (b"~" if node.binary else b"", node.size, b"" if node.sync else b"+")
        return marker + b"\r\n" + node.value
    return b"(" + b" ".join(map(wire, node.items)) + b")"


@given(st.lists(NODES, max_size=5), st.sampled_from(["SEARCH", "uid store", "APPEND"]), st.integers(1, 30))
@settings(max_examples=300, deadline=None)
def test_a_command_built_from_nodes_reads_back_as_them(args, verb, cut):
    line = b" ".join([b"t1 " + verb.encode(), *map(wire, args)]) + b"\r\n"
    events = read_all([line[:cut], line[cut:]])
    assert events[-2:] == [Command("t1", verb.upper(), tuple(args), events[-2].raw), CLOSED]
    assert b"".join(events[-2].raw) == line
    assert all(isinstance(event, LiteralAhead) for event in events[:-2])


def decide_by_verb(event: LiteralAhead) -> str:
    return "refuse" if event.verb == "REFUSE" else inline_or_stream(event)


ARGUMENTS = st.lists(st.sampled_from([
    b" INBOX", b' "a b"', b" (x (y))", b" (", b")", b" {3}\r\nabc", b" {3+}\r\nabc", b" {12+}\r\nx1 NOOP\r\n.....",
    b" {12}\r\nbody of mail", b" ~{3+}\r\na\0b", b" {2+}\r\na\0", b" BODY[HEADER.FIELDS (A B)]", b" [x", b' "x {3+}',
    b" {x}", b"\0", b"\r", b" " + b"y" * 70,
]), max_size=6).map(b"".join)
COMMAND_LINES = st.builds(lambda tag, verb, args, end: tag + verb + args + end,
                          st.sampled_from([b"a1 ", b"b2 ", b"c3 ", b"", b"+ ", b"x" * 70 + b" "]),
                          st.sampled_from([b"NOOP", b"append", b"REFUSE", b"UID fetch", b"IDLE",
                                           b"AUTHENTICATE PLAIN", b""]),
                          ARGUMENTS, st.sampled_from([b"\r\n", b"\n"]))
FOLLOWERS = st.sampled_from([b"DONE\r\n", b"AGFsaWNl\r\n", b"*\r\n", b"x" * 70 + b"\r\n"])
EXCHANGES = st.sampled_from([
    b"i1 IDLE\r\nDONE\r\n", b"i1 IDLE\r\ni2 NOOP\r\n", b"i1 IDLE\r\n" + b"x" * 70 + b"\r\n",
    b"s1 AUTHENTICATE PLAIN\r\nAGFsaWNl\r\n",
    b"m1 APPEND INBOX {12+}\r\nabcdefghijkl (\\Seen) {10}\r\n0123456789\r\n",
    b"r1 REFUSE x {9+}\r\nr2 NOOP\r\n {1}\r\n",
])
CONVERSATIONS = st.builds(lambda parts, tail: b"".join(parts) + tail,
                          st.lists(COMMAND_LINES | FOLLOWERS | EXCHANGES, max_size=8),
                          st.sampled_from([b"", b"a9 NO", b"a9 APPEND x {20+}\r\nabc"]))
CUTS = st.lists(st.integers(0, 600), max_size=10)


@given(CONVERSATIONS, CUTS)
@example(b"a1 APPEND {12+}\r\nx1 NOOP\r\n.....\r\n", [20])
@example(b"a1 IDLE\r\nDONE\r\n", [9, 10])
@example(b"a1 IDLE\r\n" + b"x" * 70 + b"\r\n", [])  # a line too long for IDLE, read whole
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_events_do_not_depend_on_the_reads(stream, cuts):
    """A conversation read in one go and in any reads gives the same events (a streamed
    literal's pieces joined), in the same order."""
    limits = {"max_line_length": 64, "max_literals": 4, "max_depth": 3, "max_literal_size": 15, **SMALL}
    expected = outline(read_all([stream], decide_by_verb, **limits))
    assert outline(read_all(chunked(stream, cuts), decide_by_verb, **limits)) == expected
    assert outline(read_all([stream[i : i + 1] for i in range(len(stream))], decide_by_verb, **limits)) == expected


DOCUMENTED = (Command, LiteralAhead, LiteralData, CommandRest, BadCommand, IdleDone, IdleOther, SaslResponse)


@given(CONVERSATIONS | st.binary(max_size=300), CUTS, st.sampled_from(["inline", "stream", "refuse", "mixed"]),
       st.integers(1, 80), st.integers(0, 40))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_give_only_the_documented_events(stream, cuts, mode, line_length, literal_size):
    def decide(event):
        if mode == "mixed":
            return ("inline", "stream", "refuse")[event.literal.size % 3] if event.fits_inline else "stream"
        return "stream" if mode == "inline" and not event.fits_inline else mode

    limits = {"max_line_length": line_length, "max_literal_size": literal_size, "max_literals": 3, "max_depth": 2,
              **SMALL}
    events = read_all(chunked(stream, cuts), decide, **limits)
    assert events[-1] is CLOSED and CLOSED not in events[:-1]
    for event in events[:-1]:
        assert isinstance(event, DOCUMENTED), event
        if isinstance(event, Command):
            assert event.verb == event.verb.upper() and event.raw and sum(map(len, event.raw)) <= line_length + 40
            # Its bytes, read again, are the same command.
            again = [e for e in read_all([b"".join(event.raw)], **limits) if not isinstance(e, LiteralAhead)]
            assert again == [event, CLOSED]
        elif isinstance(event, BadCommand) and event.fatal:
            assert event is events[-2]  # nothing is read after a fatal one
