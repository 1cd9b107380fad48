"""Header fields in RFC 5322's obsolete syntax ("Subject : hi") are written as fields
wherever they stand, and the message's structure (its delimiter lines) stays as it was."""

from __future__ import annotations

import tracemalloc

from hypothesis import example, given, settings, strategies as st

from mailproxy_plugins._mime import Limits, survey
from mailproxy_plugins._obsolete_fields import read_as_fields

LIMITS = Limits(parts=100, text_bytes=10**6, archive_bytes=10**6, archive_members=100)


def boundaries_of(message: bytes) -> set[bytes]:
    found: set[bytes] = set()
    survey(message, LIMITS, found)
    return found


def rewritten(message: bytes) -> bytes:
    data, end = read_as_fields(message, len(message), boundaries_of(message))
    assert end == len(data)  # the parser reads all of what it read before
    return data


# --- a generated message, written once with plain fields and once with obsolete ones ------

# Lines of a body, none written like a field in the obsolete syntax (those are, wherever
# they stand: see below).
_BODY_LINES = st.sampled_from([b"Hello.", b"Note: kept", b"-- ", b"--", b"Total 3 :", b"From here", b""])
_FIELDS = st.sampled_from([
    (b"Subject", b"buy now"), (b"From", b"<a@example.test>"), (b"X-Mailer", b"Bulk Mailer"),
    (b"Content-Disposition", b'attachment; filename="invoice.exe"'), (b"X-Folded", b"one\r\n two : kept"),
])
_SPACES = st.sampled_from([b" ", b"\t", b" \t ", b"  "])


@st.composite
def _fields(draw) -> list[tuple[bytes, bytes, bytes]]:
    """(name, value, the spaces an obsolete field puts before its colon)."""
    return draw(st.lists(st.tuples(_FIELDS, _SPACES).map(lambda pair: (*pair[0], pair[1])), max_size=3))


def _leaf(draw_fields, body):
    return ("leaf", draw_fields, body)


_NODES = st.recursive(
    st.builds(_leaf, _fields(), st.lists(_BODY_LINES, max_size=4)),
    lambda inner: st.one_of(
        st.builds(lambda fields, parts, digest: ("multipart", fields, parts, digest),
                  _fields(), st.lists(inner, min_size=1, max_size=3), st.booleans()),
        st.builds(lambda fields, message: ("message", fields, message), _fields(), inner),
    ),
    max_leaves=8,
)


class _Writer:
    """Writes a generated message, its fields plain or obsolete; each multipart gets a
    boundary of its own."""

    def __init__(self, obsolete: bool) -> None:
        self.obsolete = obsolete
        self.boundaries = 0

    def block(self, fields, content_type: bytes | None) -> bytes:
        lines = [(name, value, spaces) for name, value, spaces in fields]
        if content_type is not None:
            lines.append((b"Content-Type", content_type, b" "))
        return b"".join(name + (spaces if self.obsolete else b"") + b": " + value + b"\r\n"
                        for name, value, spaces in lines) + b"\r\n"

    def node(self, node, in_digest: bool = False) -> bytes:
        kind, fields = node[0], node[1]
        if kind == "leaf":
            return self.block(fields, None) + b"".join(line + b"\r\n" for line in node[2])
        if kind == "message":
            head = self.block(fields, None if in_digest else b"message/rfc822")
            return head + self.node(node[2])
        boundary = b"B%d" % self.boundaries
        self.boundaries += 1
        parts, digest = node[2], node[3]
        head = self.block(fields, b"multipart/%s; boundary=%s" % (b"digest" if digest else b"mixed", boundary))
        body = b"preamble\r\n"
        for part in parts:
            if digest and part[0] != "message":
                part = ("message", [], part)  # a digest's parts are messages
            body += b"--" + boundary + b"\r\n" + self.node(part, in_digest=digest)
        return head + body + b"--" + boundary + b"--\r\nepilogue\r\n"


@settings(max_examples=600, deadline=None)
@given(_NODES)
@example(("multipart", [], [("message", [(b"Subject", b"x", b" ")], ("leaf", [(b"Subject", b"y", b" ")], []))],
          False))
@example(("multipart", [], [("message", [], ("leaf", [(b"Subject", b"y", b" ")], [b"Note: kept"]))], True))
def test_every_field_of_every_header_block_is_written_plain(node) -> None:
    plain = _Writer(obsolete=False).node(node)
    assert rewritten(_Writer(obsolete=True).node(node)) == plain
    assert read_as_fields(plain, len(plain), set())[0] is plain  # nothing to rewrite: no copy


# --- direct cases ------------------------------------------------------------------------


def test_every_line_written_so_is_written_as_a_field_but_folded_ones():
    assert rewritten(b"Subject : a\r\n\tfolded : kept\r\nX-Tab\t \t: c\r\n\r\nBody : too\r\n") == (
        b"Subject: a\r\n\tfolded : kept\r\nX-Tab: c\r\n\r\nBody: too\r\n")


def test_every_line_end_the_parser_knows_ends_a_line():
    assert rewritten(b"X: a\rSubject : b\nTo : c\r\n\nBody : d\r") == b"X: a\rSubject: b\nTo: c\r\n\nBody: d\r"


def test_no_delimiter_line_appears_or_goes():
    # "--B : x" is a delimiter line of boundary "B : x"; "--a : b" would become one of
    # "a: b", were it written "--a: b": a field of another name instead.
    message = (b'Content-Type: multipart/mixed; boundary="B : x"\r\nX-Other: boundary="a: b"\r\n\r\n'
               b"--B : x\r\nX-A : 1\r\n--a : b\r\n--c\t: d--\r\n\r\n--B : x--\r\n")
    assert rewritten(message) == (b'Content-Type: multipart/mixed; boundary="B : x"\r\nX-Other: boundary="a: b"\r\n\r\n'
                                  b"--B : x\r\nX-A: 1\r\nX---a: b\r\nX---c: d--\r\n\r\n--B : x--\r\n")


def test_what_the_parser_does_not_read_is_left_as_it_is():
    message = b"Subject : a\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nX : b\r\n\r\n--B\r\nY : c\r\n"
    stop = message.index(b"--B\r\nY")  # as the survey cuts a message at a limit
    data, end = read_as_fields(message, stop, {b"B"})
    assert data == b"Subject: a\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nX: b\r\n\r\n--B\r\nY : c\r\n"
    assert data[:end] == message[:stop].replace(b" :", b":")
    assert read_as_fields(message, None, {b"B"}) == (message.replace(b" :", b":"), len(message) - 3)


def test_a_message_of_many_such_lines_costs_no_object_per_line():
    body = b"a :b\r\n" * 500_000
    message = b"Subject : x\r\n\r\n" + body
    tracemalloc.start()
    try:
        data, _ = read_as_fields(message, len(message), set())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == b"Subject: x\r\n\r\n" + body.replace(b" :", b":")
    assert peak < 3 * len(message)  # the copy, and the buffer it is built in


def test_the_first_line_is_a_line_like_any_other():
    assert rewritten(b"X : a\r\n\r\n") == b"X: a\r\n\r\n"
    assert rewritten(b"--a : b\r\n\r\n") == b"X---a: b\r\n\r\n"
    assert rewritten(b"\nX : a\r\n") == b"\nX: a\r\n"  # after an empty first line
