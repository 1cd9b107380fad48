"""Edges of ImapServerMachine: the default bounds at their exact values, literals that just
fit, reads received before the machine looks at them, the session's calls at the wrong
time, and the events as values nobody can change. No sockets."""

from __future__ import annotations

import tracemalloc
from dataclasses import FrozenInstanceError

import pytest

from mailproxy.protocol.imap import (
    CLOSED,
    NEED_DATA,
    PRE_LOGIN_LIMITS,
    BadCommand,
    Command,
    CommandRest,
    IdleOther,
    ImapLimits,
    ImapServerMachine,
    LiteralAhead,
    LiteralData,
    SaslResponse,
)
from mailproxy.protocol.imap_syntax import Atom, Literal
from tests.support.chunks import drive

KiB, MiB = 1024, 1024 * 1024


def events(chunks, **limits) -> list:
    """Every event up to CLOSED; a literal is read whole when it fits, else streamed."""
    machine = ImapServerMachine(**limits)

    def decide(event) -> None:
        if isinstance(event, LiteralAhead):
            machine.accept_literal(stream=not event.fits_inline)

    return drive(machine, chunks, decide)


def noop_of_length(length: int) -> bytes:
    """`a NOOP xx…x`, exactly `length` bytes with its CRLF."""
    head = b"a NOOP "
    return head + b"x" * (length - len(head) - 2) + b"\r\n"


# --- the default bounds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "longest"), [({}, 64 * KiB), (PRE_LOGIN_LIMITS, 8 * KiB)], ids=["after-login", "pre-login"]
)
def test_a_line_of_exactly_the_default_bound_is_read_and_one_byte_more_is_too_long(limits, longest):
    [command, end] = events([noop_of_length(longest)], **limits)
    assert isinstance(command, Command) and command.raw == [noop_of_length(longest)]
    assert end is CLOSED
    assert events([noop_of_length(longest + 1)], **limits) == [BadCommand("a", "Line too long"), CLOSED]


def test_a_literal_of_exactly_eight_kib_is_read_whole_before_login_and_one_byte_more_is_not():
    for size, fits in ((8 * KiB, True), (8 * KiB + 1, False)):
        machine = ImapServerMachine(**PRE_LOGIN_LIMITS)
        machine.receive_data(b"a LOGIN {%d}\r\n" % size)
        assert machine.next_event().fits_inline is fits


def test_a_non_sync_literal_of_up_to_fifty_mib_can_wait_for_the_session_and_a_larger_one_is_fatal():
    machine = ImapServerMachine()
    machine.receive_data(b"a APPEND box {%d+}\r\n" % (50 * MiB))
    event = machine.next_event()
    assert isinstance(event, LiteralAhead) and event.literal.size == 50 * MiB and not event.fits_inline

    machine = ImapServerMachine()
    machine.receive_data(b"a APPEND box {%d+}\r\n" % (50 * MiB + 1))
    assert machine.next_event() == BadCommand("a", "[TOOBIG] Literal too big", True)
    assert machine.next_event() is CLOSED


def test_a_command_may_hold_256_literals_by_default_and_not_257():
    def command_with(count: int) -> bytes:
        return b"a X" + b" {1+}\r\nx" * count + b"\r\n"

    [command, _] = events([command_with(256)])
    assert isinstance(command, Command) and len(command.args) == 256
    # fatal: the line ends in a non-sync marker, whose byte is on its way
    assert events([command_with(257)]) == [BadCommand("a", "Too many literals", True), CLOSED]


def test_parentheses_may_nest_32_deep_by_default_and_not_33():
    def nested(depth: int) -> bytes:
        return b"a SEARCH " + b"(" * depth + b"ALL" + b")" * depth + b"\r\n"

    [command, _] = events([nested(32)])
    assert isinstance(command, Command) and command.verb == "SEARCH"
    [bad, _] = events([nested(33)])
    assert isinstance(bad, BadCommand) and bad.tag == "a"


# --- literals that just fit ---------------------------------------------------------------


def test_a_literal_of_exactly_the_inline_bound_is_read_whole_and_one_byte_more_is_not():
    limits = {"max_inline_literal": 8, "max_inline_bytes": 64}
    for size, fits in ((8, True), (9, False)):
        machine = ImapServerMachine(**limits)
        machine.receive_data(b"a LOGIN {%d}\r\n" % size)
        assert machine.next_event().fits_inline is fits


def test_a_first_literal_of_exactly_the_per_command_inline_bytes_is_read_whole_and_one_byte_more_is_not():
    limits = {"max_inline_literal": 64, "max_inline_bytes": 8}
    for size, fits in ((8, True), (9, False)):
        machine = ImapServerMachine(**limits)
        machine.receive_data(b"a LOGIN {%d}\r\n" % size)
        assert machine.next_event().fits_inline is fits


# --- the reads ----------------------------------------------------------------------------


def test_reads_received_before_the_machine_looks_come_out_in_order():
    machine = ImapServerMachine()
    machine.receive_data(b"a1 NOOP\r\n")
    assert machine.next_event().tag == "a1"
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"a2 NOOP\r\n")
    machine.receive_data(b"a3 NOOP\r\n")
    assert [machine.next_event().tag, machine.next_event().tag] == ["a2", "a3"]


def test_a_line_that_reaches_the_bound_without_its_end_is_skipped_at_once_not_held():
    machine = ImapServerMachine(max_line_length=16)
    machine.receive_data(b"a NOOP " + b"x" * 9)  # 16 bytes and no line end: too long already
    assert machine.next_event() is NEED_DATA
    assert machine.take_pending() == b""


def test_a_bare_line_end_under_a_one_byte_bound_is_read_as_an_empty_line_not_skipped():
    [bad, end] = events([b"\n"], max_line_length=1)
    assert isinstance(bad, BadCommand) and bad.text != "Line too long"
    assert end is CLOSED


def test_bytes_taken_in_the_middle_of_a_literal_leave_the_rest_of_the_literal_to_the_next_read():
    machine = ImapServerMachine()
    machine.receive_data(b"a LOGIN {5}\r\n")
    assert isinstance(machine.next_event(), LiteralAhead)
    machine.accept_literal()
    machine.receive_data(b"ab")
    assert machine.next_event() is NEED_DATA
    assert machine.take_pending() == b""
    machine.receive_data(b"cde pw\r\n")
    command = machine.next_event()
    assert command.args[0].value == b"abcde" and command.args[1] == Atom("pw")


def test_skipping_an_overlong_line_in_many_small_reads_keeps_little_of_it():
    machine = ImapServerMachine(max_line_length=16)
    machine.receive_data(b"a NOOP " + b"x" * 16)
    tracemalloc.start()
    try:
        for _ in range(20_000):  # 60 KB more of the line
            assert machine.next_event() is NEED_DATA
            machine.receive_data(b"xyz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * KiB
    machine.receive_data(b"\r\n")
    assert machine.next_event() == BadCommand("a", "Line too long")


# --- the session's calls ------------------------------------------------------------------


def test_idle_or_sasl_cannot_start_while_a_command_waits_for_the_rest_of_its_line():
    machine = ImapServerMachine()
    machine.receive_data(b"a LOGIN {2+}\r\nme")
    assert machine.next_event() is NEED_DATA  # the literal was read; its line goes on
    with pytest.raises(RuntimeError):
        machine.start_idle()
    with pytest.raises(RuntimeError):
        machine.expect_sasl()


def test_sasl_cannot_be_expected_during_idle():
    machine = ImapServerMachine()
    machine.receive_data(b"a IDLE\r\n")
    assert machine.next_event().verb == "IDLE"
    machine.start_idle()
    with pytest.raises(RuntimeError):
        machine.expect_sasl()


# --- the events as values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (ImapLimits(), "max_line_length"),
        (Command("a", "NOOP", (), [b"a NOOP\r\n"]), "tag"),
        (LiteralAhead("a", "LOGIN", (), Literal(1, True, False), [], False, True), "fits_inline"),
        (LiteralData(b"x"), "data"),
        (CommandRest(b"\r\n"), "raw"),
        (BadCommand("a", "Bad"), "fatal"),
        (IdleOther(b"x\r\n"), "raw"),
        (SaslResponse(b"x"), "line"),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
)
def test_the_bounds_and_events_cannot_be_changed_and_can_be_hashed(value, name):
    with pytest.raises(FrozenInstanceError):
        setattr(value, name, getattr(value, name))
    if not isinstance(value, (Command, LiteralAhead)):  # these hold lists
        hash(value)



# --- the default inline bound after login -------------------------------------------------


def test_a_literal_of_exactly_64_kib_is_read_whole_by_default_and_one_byte_more_is_not():
    # The default that a machine built without keywords reads before the session's hook
    # (credentials, mailbox names): only the pre-login 8 KiB was pinned, not this one.
    for size, fits in ((64 * KiB, True), (64 * KiB + 1, False)):
        machine = ImapServerMachine()
        machine.receive_data(b"a LOGIN {%d}\r\n" % size)
        assert machine.next_event().fits_inline is fits


def test_a_non_sync_literal_of_exactly_64_kib_is_read_without_a_pause_by_default_and_one_byte_more_pauses():
    # A non-sync literal up to the bound comes inside the Command; one byte more makes the
    # session decide (stream or refuse) before its bytes are read.
    machine = ImapServerMachine()
    machine.receive_data(b"a X {%d+}\r\n" % (64 * KiB) + b"v" * (64 * KiB) + b"\r\n")
    command = machine.next_event()
    assert isinstance(command, Command) and command.args[0].value == b"v" * (64 * KiB)

    machine = ImapServerMachine()
    machine.receive_data(b"a X {%d+}\r\n" % (64 * KiB + 1))
    ahead = machine.next_event()
    assert isinstance(ahead, LiteralAhead) and not ahead.fits_inline


# --- which error answers a command --------------------------------------------------------


def refusing(chunks, **limits) -> list:
    """Every event up to CLOSED, every LiteralAhead refused."""
    machine = ImapServerMachine(**limits)

    def decide(event) -> None:
        if isinstance(event, LiteralAhead):
            machine.refuse_literal()

    return drive(machine, chunks, decide)


NEXT = Command("n1", "NOOP", (), [b"n1 NOOP\r\n"])


def test_a_command_owed_a_bad_for_a_nul_is_answered_with_that_first_error_not_a_later_one():
    # The NUL is what the client did wrong first; a syntax error later in the same command
    # must not replace that answer, and the next command is read as usual.
    assert events([b"a X {3+}\r\na\0b )\r\nn1 NOOP\r\n"]) == [
        BadCommand("a", "NUL outside a literal8"), NEXT, CLOSED,
    ]


def test_a_fatal_error_after_an_owed_bad_is_fatal_not_the_owed_bad():
    # A non-sync literal over the cap is on its way and cannot be placed: whatever BAD the
    # command owed, the answer must be the fatal one (BYE), or the session would answer
    # BAD and go on reading the literal's bytes as commands.
    assert events([b"a X {3+}\r\na\0b {200+}\r\nn1 NOOP\r\n"], max_literal_size=100) == [
        BadCommand("a", "[TOOBIG] Literal too big", True), CLOSED,
    ]


def test_a_fatal_error_after_a_refused_literal_is_a_fatal_bad_not_silence():
    # A refused command was answered with NO already, and its later non-fatal errors are
    # dropped; but a bad line ending in a non-sync marker still needs the fatal BAD (BYE).
    wire = b"a X {20+}\r\n" + b"y" * 20 + b" ) {5+}\r\nhello\r\nn1 NOOP\r\n"
    [ahead, bad, end] = refusing([wire], max_inline_literal=8)
    assert isinstance(ahead, LiteralAhead)
    assert (bad, end) == (BadCommand("a", "Unexpected )", True), CLOSED)
    # Not fatal: the refused command ends in silence, the next is read.
    [_, command, end] = refusing([b"a X {20+}\r\n" + b"y" * 20 + b" )\r\nn1 NOOP\r\n"], max_inline_literal=8)
    assert (command, end) == (NEXT, CLOSED)


# --- IdleDone as a value ------------------------------------------------------------------


def test_the_idle_done_event_can_be_hashed_like_the_other_events():
    # IdleDone has no field for the parametrized test above to set, so only its hash shows
    # that it is frozen: a dataclass with eq and not frozen gets __hash__ = None.
    machine = ImapServerMachine()
    machine.receive_data(b"a IDLE\r\nDONE\r\n")
    assert machine.next_event().verb == "IDLE"
    machine.start_idle()
    done = machine.next_event()
    assert done == type(done)() and hash(done) == hash(type(done)())
    assert {done, type(done)()} == {done}
