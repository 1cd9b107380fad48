"""Header fields in RFC 5322's obsolete syntax ("Subject : hi") are read as fields
wherever the parser reads header fields, and nothing else of a message changes: its
parser (plugins/_feedparser.py, a copy of the email package's) reads every other
message exactly as the email package does."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser as EmailPackageParser

from hypothesis import example, given, settings, strategies as st

from mailproxy_plugins._feedparser import BytesParser
from mailproxy_plugins._mime import Limits, MessageContents
from tests.unit.test_plugin_mime_parse import _ENDS, _LINES, _seen

LIMITS = Limits(parts=100, text_bytes=10**6, archive_bytes=10**6, archive_members=100)


def view(message: bytes) -> tuple:
    """What the headers plugin's rules read of a message."""
    contents = MessageContents(message, LIMITS)
    return (contents.content_types, contents.file_names, contents.texts, sorted(contents.limits_hit),
            [contents.header(name) for name in ("Subject", "From", "X-Mailer", "Content-Disposition")])


# --- a generated message, written once with plain fields and once with obsolete ones ------

# Lines of a body, some written like a field in the obsolete syntax: they stay as they are.
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


def _leaf(fields, body):
    return ("leaf", fields, body)


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
        lines = list(fields)
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
def test_a_message_reads_the_same_written_with_plain_or_obsolete_fields(node) -> None:
    assert view(_Writer(obsolete=True).node(node)) == view(_Writer(obsolete=False).node(node))


# --- the email package's reading of everything else ---------------------------------------

_PLAIN_LINES = _LINES.filter(lambda line: not _obsolete(line))


def _obsolete(line: bytes) -> bool:
    name, colon, _ = line.partition(b":")
    return bool(colon) and name != name.rstrip(b" \t") and all(0x21 <= c <= 0x7e for c in name.rstrip(b" \t"))


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(_PLAIN_LINES, _ENDS), max_size=12))
def test_a_message_without_such_fields_is_read_as_the_email_package_reads_it(lines) -> None:
    data = b"".join(line + end for line, end in lines)
    ours = BytesParser(policy=policy.compat32).parsebytes(data)
    assert _seen(ours) == _seen(EmailPackageParser(policy=policy.compat32).parsebytes(data))


def test_the_copy_reads_in_the_chunks_the_email_package_reads_in():
    # A CRLF cut between two of the 8192-character chunks fed to the parser.
    data = b"Subject: x\r\n" + b"X-Pad: " + b"p" * (8192 - 20) + b"\r\n" + b"To: y\r\n\r\nbody\r\n"
    assert data[8191:8193] == b"\r\n"
    ours = BytesParser(policy=policy.compat32).parsebytes(data)
    assert _seen(ours) == _seen(EmailPackageParser(policy=policy.compat32).parsebytes(data))


# --- direct cases ------------------------------------------------------------------------


def parsed(data: bytes, headersonly: bool = False):
    return BytesParser(policy=policy.compat32).parsebytes(data, headersonly=headersonly)


def test_such_a_field_is_read_as_a_field_named_without_the_spaces():
    message = parsed(b"Subject : a\r\n\tfolded : kept\r\nX-Tab\t \t: c\r\nTo: d\r\n\r\nBody : kept\r\n")
    assert message.items() == [("Subject", "a\r\n\tfolded : kept"), ("X-Tab", "c"), ("To", "d")]
    assert message.get_payload() == "Body : kept\r\n"
    assert message.defects == []


def test_from_written_so_is_a_from_field_wherever_it_stands():
    for data in (b"From : <a@b>\r\nSubject: hi\r\n\r\nx\r\n", b"Subject: hi\r\nFrom : <a@b>\r\nTo: c\r\n\r\nx\r\n",
                 b"Subject: hi\r\nFrom : <a@b>\r\n\r\nx\r\n", b"Subject: hi\r\nFrom : <a@b>"):
        message = parsed(data)
        assert (message["From"], message["Subject"], message.get_unixfrom()) == ("<a@b>", "hi", None)
    assert parsed(b"From someone Mon Jan 1\r\nSubject: hi\r\n\r\n").get_unixfrom() == "From someone Mon Jan 1"


def test_only_spaces_and_tabs_right_before_the_colon_make_such_a_field():
    message = parsed(b"Subject: a\r\nSubj ect: b\r\nTo: c\r\n\r\n")
    assert message.items() == [("Subject", "a")]
    assert message.get_payload() == "Subj ect: b\r\nTo: c\r\n\r\n"


def test_a_headers_only_read_reads_them_too():
    message = parsed(b"Subject : a\r\nContent-Type : text/plain; name=x.exe\r\n\r\nbody\r\n", headersonly=True)
    assert message.items() == [("Subject", "a"), ("Content-Type", "text/plain; name=x.exe")]
