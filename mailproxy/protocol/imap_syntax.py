"""The arguments of an IMAP command as a client sends them (RFC 3501 §9), with no I/O:
the nodes they are made of, and `CommandReader`, which tokenises a command one line at a
time and keeps its place across the literals between the lines.

A command is `tag SP verb *(SP argument)`, and an argument is an atom, a quoted string, a
literal or a parenthesised list of arguments. Two traps, as Dovecot's parser knows them:
an atom containing `[` runs to the next `]`, spaces and parentheses included (the
`section` of `BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>`); and a literal marker
(`{n}`, `{n+}` of RFC 7888, `~{n}` / `~{n+}`: literal8 of RFC 3516) ends its line, the
literal's bytes following the line end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Atom:
    """NIL, numbers, sequence sets, flags (`\\Deleted`, `+FLAGS.SILENT`), fetch items
    with their sections: any bare word, as sent."""

    text: str


@dataclass(frozen=True, slots=True)
class Quoted:
    """A quoted string, unescaped."""

    text: str


@dataclass(frozen=True, slots=True)
class Literal:
    size: int
    sync: bool  # {n}: the client waits for a continuation; {n+} (LITERAL+/-): it does not
    binary: bool  # literal8 (~{n}): the only place a NUL may be
    value: bytes | None = None  # read only when small enough (never for a streamed one)


@dataclass(frozen=True, slots=True)
class ParenList:
    items: tuple[Node, ...]


Node = Atom | Quoted | Literal | ParenList


def text_of(raw: bytes) -> str:
    """Bytes of a command as text; undecodable bytes are kept as surrogates."""
    return raw.decode("utf-8", "surrogateescape")


def astring(node: Node) -> str | None:
    """The text of an atom, a quoted string or a literal that was read: a mailbox name
    or a credential means the same whichever form the client chose. None otherwise."""
    if isinstance(node, (Atom, Quoted)):
        return node.text
    if isinstance(node, Literal) and node.value is not None:
        return text_of(node.value)
    return None


class ImapSyntaxError(Exception):
    """A command that is not IMAP; the text is for the BAD reply."""


# A tag is 1*<ASTRING-CHAR except "+">: printable ASCII but for the atom-specials.
_TAG = re.compile(rb'[^\x00-\x20(){%*"\\+\x7f-\xff]+')
# Control characters are allowed nowhere in a command line (NUL only inside literal8).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Atom text up to a byte that ends it, or up to a `[` (RFC 3501 excludes `%`, `*` and `]`
# from atoms, but list patterns, sequence sets and astrings carry them, so they are kept).
_ATOM_RUN = re.compile(rb'[^ (){"\[\x00-\x1f\x7f]*')
_QUOTED = re.compile(rb'"((?:[^"\\\x00-\x1f\x7f]|\\["\\])*)"')
_ESCAPE = re.compile(rb'\\(["\\])')
_MARKER = re.compile(rb"(~?)\{(\d{1,10})(\+?)\}")
_LARGEST_LITERAL = 2**32 - 1  # RFC 3501 `number`


def tag_of(line: bytes) -> str | None:
    """The tag of a (maybe partial) command line, if it begins with a tag and a space."""
    match = _TAG.match(line)
    return match.group().decode() if match and line[match.end() : match.end() + 1] == b" " else None


class CommandReader:
    """One command, fed line by line: `feed` returns the literal marker that ends a line
    (the machine then reads or streams the literal's bytes and calls `add_literal`), and
    `finish` gives the verb and the arguments once the last line came. Raises
    ImapSyntaxError; `tag` is known as soon as the first line's tag was read."""

    def __init__(self, max_depth: int) -> None:
        self.tag: str | None = None
        self._max_depth = max_depth
        self._lists: list[list[Node]] = [[]]  # the top level, then each open "("
        self._after_word = False  # a word just ended: only a space or ")" may follow

    def feed(self, line: bytes) -> Literal | None:
        """One line, without its line end."""
        first = self.tag is None
        if first:
            line = self._split_tag(line)
        control = _CONTROL.search(line)
        if control:
            raise ImapSyntaxError("NUL in command" if control.group() == b"\0" else "Control character in command")
        marker = self._words(line)
        if first and not (self._lists[0] and isinstance(self._lists[0][0], Atom)):
            raise ImapSyntaxError("Missing command")
        return marker

    def add_literal(self, literal: Literal) -> None:
        self._add(literal)

    def finish(self) -> tuple[str, tuple[Node, ...]]:
        """The verb and the arguments, once the command's last line was fed."""
        if len(self._lists) > 1:
            raise ImapSyntaxError("Missing )")
        return _named(self._lists[0])

    def so_far(self, pending: Literal) -> tuple[str, tuple[Node, ...]]:
        """The verb and the arguments up to a literal not yet read (last), the lists still
        open shown with what they hold so far."""
        inner: list[Node] = [pending]
        for items in reversed(self._lists):
            inner = [*items, *inner]
            if items is not self._lists[0]:
                inner = [ParenList(tuple(inner))]
        return _named(inner)

    def _split_tag(self, line: bytes) -> bytes:
        if not line:
            raise ImapSyntaxError("Empty command line")
        match = _TAG.match(line)
        if match is None or line[match.end() : match.end() + 1] not in (b"", b" "):
            raise ImapSyntaxError("Invalid tag")
        self.tag = match.group().decode()
        return line[match.end() + 1 :]

    def _words(self, line: bytes) -> Literal | None:
        last_bracket = line.rfind(b"]")
        at = 0
        while at < len(line):
            byte = line[at : at + 1]
            if byte == b" ":
                self._after_word = False
                at += 1
            elif byte == b")":
                self._close()
                at += 1
            elif self._after_word:
                raise ImapSyntaxError("Missing space between arguments")
            elif byte == b"(":
                self._open()
                at += 1
            elif line.startswith((b"{", b"~{"), at):
                return _marker(line, at)
            else:
                node, at = _quoted(line, at) if byte == b'"' else _atom(line, at, last_bracket)
                self._add(node)
        return None

    def _add(self, node: Node) -> None:
        self._lists[-1].append(node)
        self._after_word = True

    def _open(self) -> None:
        if len(self._lists) > self._max_depth:
            raise ImapSyntaxError("Too deeply nested")
        self._lists.append([])

    def _close(self) -> None:
        if len(self._lists) == 1:
            raise ImapSyntaxError("Unexpected )")
        items = self._lists.pop()
        self._add(ParenList(tuple(items)))


def _named(words: list[Node]) -> tuple[str, tuple[Node, ...]]:
    """The verb, upper case, and its arguments; `UID` and the command it applies to are
    one verb (`UID STORE`), so that a policy on STORE cannot miss it."""
    verb, *args = words
    name = verb.text.upper()
    if name == "UID" and args and isinstance(args[0], Atom):
        name = f"UID {args.pop(0).text.upper()}"
    return name, tuple(args)


def _marker(line: bytes, at: int) -> Literal:
    match = _MARKER.match(line, at)
    if match is None or match.end() != len(line) or int(match[2]) > _LARGEST_LITERAL:
        raise ImapSyntaxError("Invalid literal")
    return Literal(int(match[2]), sync=not match[3], binary=bool(match[1]))


def _quoted(line: bytes, at: int) -> tuple[Quoted, int]:
    match = _QUOTED.match(line, at)
    if match is None:
        raise ImapSyntaxError("Invalid quoted string")
    return Quoted(text_of(_ESCAPE.sub(rb"\1", match[1]))), match.end()


def _atom(line: bytes, start: int, last_bracket: int) -> tuple[Atom, int]:
    """An atom from `start`; a `[` in it runs to the next `]` on the line, if there is one
    (`last_bracket` tells without a search per atom)."""
    at = start
    while True:
        at = _ATOM_RUN.match(line, at).end()
        if line[at : at + 1] != b"[":
            break
        at = line.index(b"]", at) + 1 if at < last_bracket else at + 1
    if at == start:
        raise ImapSyntaxError("Invalid character in command")
    return Atom(text_of(line[start:at])), at
