"""Edges of reading an IMAP command's arguments (imap_syntax), through the machine that
uses it: the largest literal a client may announce, a `[` with no `]` after it, and the
parsed arguments as values nobody can change. No sockets."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from mailproxy.protocol.imap import (
    CLOSED,
    Atom,
    BadCommand,
    Command,
    ImapServerMachine,
    Literal,
    LiteralAhead,
    ParenList,
    Quoted,
)
from tests.support.chunks import drive, splits

LARGEST = 2**32 - 1  # RFC 3501 `number`: an unsigned 32-bit integer


def events(chunks) -> list:
    """Every event up to CLOSED; each literal is read whole when it fits, else refused."""
    machine = ImapServerMachine()

    def decide(event) -> None:
        if isinstance(event, LiteralAhead) and event.fits_inline:
            machine.accept_literal()
        elif isinstance(event, LiteralAhead):
            machine.refuse_literal()

    return drive(machine, chunks, decide)


def command_args(line: bytes) -> tuple:
    """The arguments of one command, the same however its bytes were cut into reads."""
    [command, closed] = events([line])
    assert isinstance(command, Command) and closed is CLOSED, command
    for chunks in splits(line):
        assert events(chunks) == [command, CLOSED], chunks
    return command.args


@pytest.mark.parametrize("marker, sync, binary", [(b"{%d}", True, False), (b"~{%d}", True, True)])
def test_the_largest_literal_a_client_may_announce_is_the_largest_32_bit_number(marker, sync, binary):
    """A size of 2**32 - 1 is a literal (the session then refuses it as too big); one
    more is not IMAP, answered BAD, and the next command is read."""
    wire = (b"a1 APPEND INBOX " + marker % LARGEST + b"\r\n"
            + b"a2 APPEND INBOX " + marker % (LARGEST + 1) + b"\r\n"
            + b"n1 NOOP\r\n")
    [question, bad, noop, closed] = events([wire])
    assert question.literal == Literal(LARGEST, sync, binary)
    assert not question.fits_inline
    assert bad == BadCommand("a2", "Invalid literal")
    assert (noop.verb, closed) == ("NOOP", CLOSED)


@pytest.mark.parametrize(
    "line, args",
    [
        (b"a1 SELECT a[ b\r\n", (Atom("a["), Atom("b"))),
        (b"a1 FETCH 1 (x[)\r\n", (Atom("1"), ParenList((Atom("x["),)))),
        # A "]" before the "[" does not close it.
        (b"a1 LIST a] b[ c\r\n", (Atom("a]"), Atom("b["), Atom("c"))),
    ],
)
def test_a_bracket_never_closed_on_its_line_is_an_ordinary_atom_character(line, args):
    """Only a `[` with a `]` later on the line runs past spaces and parentheses (a
    section); without one the atom ends at the next space or parenthesis as any does."""
    assert command_args(line) == args


def test_the_parsed_arguments_are_values_nobody_can_change():
    """Every policy hook gets the same nodes, and the session keeps them for the
    command's completion: no plugin may change what the others see. Being immutable
    they hash, so a plugin may keep them in a set or as keys."""
    wire = b'a1 APPEND INBOX (\\Seen) "x y" {3+}\r\nabc\r\n'
    args = command_args(wire)
    assert args == (Atom("INBOX"), ParenList((Atom("\\Seen"),)), Quoted("x y"), Literal(3, False, False, b"abc"))
    atom, flags, quoted, literal = args
    for node, name, value in ((atom, "text", "Trash"), (flags, "items", ()), (quoted, "text", ""),
                              (literal, "value", b"xyz")):
        with pytest.raises(FrozenInstanceError):
            setattr(node, name, value)
    assert {*args, *command_args(wire)} == set(args) and len(set(args)) == 4  # equal nodes hash equal
