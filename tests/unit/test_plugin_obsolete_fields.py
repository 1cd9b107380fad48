"""Header fields in RFC 5322's obsolete syntax ("Subject : hi") are read as fields in
every header block the parser reads (the message's own, each part's, each message
inside a message/* part), and nowhere else."""

from __future__ import annotations

import tracemalloc

from hypothesis import example, given, settings, strategies as st

from mailproxy_plugins._obsolete_fields import read_as_fields


def rewritten(message: bytes) -> bytes:
    data, end = read_as_fields(message, len(message))
    assert end == len(data)  # the parser reads all of what it read before
    return data


# --- a generated message, written once with plain fields and once with obsolete ones ------

# Lines of a body: none may be read as a field, plain or not; "-- " opens a signature.
_BODY_LINES = st.sampled_from([
    b"Hello.", b"Note : kept", b"Total\t: 3", b"-- ", b"--", b"Name : after a signature", b"--B9 : no",
    b"From : not a field here", b"",
])
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
        body = b"preamble : kept\r\n"
        for part in parts:
            if digest and part[0] != "message":
                part = ("message", [], part)  # a digest's parts are messages
            body += b"--" + boundary + b"\r\n" + self.node(part, in_digest=digest)
        return head + body + b"--" + boundary + b"--\r\nepilogue : kept\r\n"


@settings(max_examples=600, deadline=None)
@given(_NODES)
@example(("multipart", [], [("message", [(b"Subject", b"x", b" ")], ("leaf", [(b"Subject", b"y", b" ")], []))],
          False))
@example(("multipart", [], [("message", [], ("leaf", [(b"Subject", b"y", b" ")], [b"Note : kept"]))], True))
def test_every_field_of_every_header_block_and_nothing_else_is_written_plain(node) -> None:
    plain = _Writer(obsolete=False).node(node)
    assert rewritten(_Writer(obsolete=True).node(node)) == plain
    assert read_as_fields(plain, len(plain))[0] is plain  # nothing to rewrite: no copy


# --- direct cases ------------------------------------------------------------------------


def test_fields_that_stand_before_or_after_a_folded_line():
    assert rewritten(b"Subject : a\r\n\tfolded : kept\r\nX-Tab\t \t: c\r\n\r\nBody : kept\r\n") == (
        b"Subject: a\r\n\tfolded : kept\r\nX-Tab: c\r\n\r\nBody : kept\r\n")


def test_a_block_ends_at_its_first_line_that_is_no_field():
    message = b"Subject : a\r\nnot a field\r\nAfter : kept\r\n\r\n"
    assert rewritten(message) == b"Subject: a\r\nnot a field\r\nAfter : kept\r\n\r\n"


def test_every_line_end_the_parser_knows_ends_a_line():
    assert rewritten(b"X: a\rSubject : b\nTo : c\r\n\nBody : kept\r") == b"X: a\rSubject: b\nTo: c\r\n\nBody : kept\r"


def test_a_line_that_may_be_a_delimiter_is_left_as_it_is():
    # In a part's header block, "--B : x" ends the part if "B : x" is a boundary.
    message = (b'Content-Type: multipart/mixed; boundary="B : x"\r\n\r\n'
               b"--B : x\r\nX-A : 1\r\n--B : x\r\n\r\n--B : x--\r\n")
    assert rewritten(message) == (b'Content-Type: multipart/mixed; boundary="B : x"\r\n\r\n'
                                  b"--B : x\r\nX-A: 1\r\n--B : x\r\n\r\n--B : x--\r\n")


def test_only_lines_of_a_declared_boundary_start_a_part():
    message = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--C\r\nX : no part\r\n"
               b"--B\r\nX : a part\r\n\r\n--B \t\r\nY : a part too\r\n\r\n--B--\r\nZ : epilogue\r\n")
    assert rewritten(message) == (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--C\r\nX : no part\r\n"
                                  b"--B\r\nX: a part\r\n\r\n--B \t\r\nY: a part too\r\n\r\n--B--\r\nZ : epilogue\r\n")


def test_what_the_parser_does_not_read_is_left_as_it_is():
    message = b"Subject : a\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nX : b\r\n\r\n--B\r\nY : c\r\n"
    stop = message.index(b"--B\r\nY")  # as the survey cuts a message at a limit
    data, end = read_as_fields(message, stop)
    assert data == b"Subject: a\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nX: b\r\n\r\n--B\r\nY : c\r\n"
    assert data[:end] == message[:stop].replace(b" :", b":")


def test_without_a_limit_only_the_messages_own_block_is_read_so():
    # The fields may be too big to read (an abusive Content-Type): none is read.
    message = b"Subject : a\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nX : b\r\n\r\n"
    assert read_as_fields(message, None) == (message.replace(b"Subject :", b"Subject:"), 0)


def test_one_such_field_in_a_large_message_costs_no_object_per_line():
    body = b"a\r\n" * 5_000_000
    message = b"Subject : x\r\n\r\n" + body
    tracemalloc.start()
    try:
        data, _ = read_as_fields(message, len(message))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == b"Subject: x\r\n\r\n" + body
    assert peak < 3 * len(message)  # the copy, and the buffer it is built in


def test_a_delimiter_line_ends_a_header_block_even_when_it_looks_like_a_field():
    # "--B:x" is the parser's delimiter line of boundary "B:x", not a field: the next
    # part's header block starts after it, and it declares a message inside.
    message = (b'Content-Type: multipart/mixed; boundary="B:x"\r\n\r\n'
               b"--B:x\r\nContent-Type: text/plain\r\n"
               b"--B:x\r\nContent-Type: message/rfc822\r\n\r\nSubject : inner\r\n\r\n--B:x--\r\n")
    assert rewritten(message) == message.replace(b"Subject :", b"Subject:")
