"""_mime.parse takes a message that is neither a multipart nor a message/* apart in a
shorter way than its parser (plugins/_feedparser.py, the email package's but for fields
in the obsolete syntax); it must give the message the parser gives."""

from __future__ import annotations

from email import policy
from email.message import Message
from typing import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from plugins._feedparser import BytesParser
from plugins._mime import _plain_header_block, parse


def _or_error(read: Callable[[], object]) -> object:
    """What `read` gives, or the type of what it raises (compat32's get_payload raises
    TypeError for some payloads with non-ASCII bytes)."""
    try:
        return read()
    except Exception as exc:
        return type(exc)


def _seen(message: Message) -> object:
    """Everything of a parsed message that the headers plugin, or anyone, can read."""
    multipart = message.is_multipart()
    return (
        type(message),
        message.get_unixfrom(),
        message.items(),
        [(type(defect), str(defect)) for defect in message.defects],
        message.get_content_type(),
        message.preamble,
        message.epilogue,
        [_seen(part) for part in message.get_payload()] if multipart else _or_error(message.get_payload),
        None if multipart else _or_error(lambda: message.get_payload(decode=True)),
    )


def _both(data: bytes) -> tuple[object, object]:
    parser = BytesParser(policy=policy.compat32)
    return _seen(parser.parsebytes(data)), _seen(parse(parser, data))


_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r"])
_LINES = st.sampled_from([
    b"Subject: hi", b"From: a@b", b"From someone Mon", b" continued", b"\tcont", b"", b"",
    b"not a header", b"Content-Type: multipart/mixed; boundary=x", b"Content-Type: message/rfc822",
    b"Content-Type: text/html; charset=utf-8", b"Content-Type: message/delivery-status", b"--x", b"--x--",
    b"body line", b"X-Y:", b":bad", b"\xff\xfe: x", b"Content-Transfer-Encoding: base64", b"aGVsbG8=",
    b"MIME-Version: 1.0", b"Content-Type: multipart/alternative", b"Content-Type: TEXT/plain",
    b"Content-Transfer-Encoding: quoted-printable", b"caf=C3=A9 \xc3\xa9",
    b"Content-Type: text/plain; charset*=us-ascii''x", b"\xff",
    # Header fields as the parser tells them from other lines, and their values.
    b"Subject:x", b"Subject:\t x \t", b"X-A: a:b", b"Subj ect: x", b"Subject : x", b"\x00: x", b"From x",
    b"From ", b" ", b"\t", b"X:\xff\xfe", b"A\x7f: x", b"~: x", b"!#$%&'*+-/=?^_`{|}~0: v", b"X-Empty:",
    b"X-Long: " + b"y" * 100, b"\tfolded: with a colon",
])


@settings(max_examples=5000, deadline=None)
@given(st.lists(st.tuples(_LINES, _ENDS), max_size=12), st.one_of(st.just(b""), _LINES))
@example([(b"Subject: hi", b"\r\n"), (b"", b"\r\n"), (b"body", b"\r\n")], b"")
@example([(b"Subject: hi", b"\r"), (b"", b"\n"), (b"body", b"\r\n")], b"")
@example([(b"", b"\r\n"), (b"Subject: hi", b"\r\n")], b"")
@example([(b"Subject: hi", b"\r\n"), (b"not a header", b"\r\n"), (b"", b"\r\n"), (b"b", b"\n")], b"")
@example([(b"Content-Type: message/rfc822", b"\n"), (b"", b"\n"), (b"Subject: in", b"\n")], b"")
# A line that is no header field ends the header block with a non-ASCII byte, under an
# RFC 2231 charset: reading the headers-only payload raises there.
@example([(b"Content-Type: text/plain; charset*=us-ascii''x", b"\r\n"), (b"\xff", b"\r\n"), (b"", b"\r\n"),
          (b"body", b"\r\n")], b"")
def test_the_same_message_as_the_email_package(lines: list[tuple[bytes, bytes]], last: bytes) -> None:
    data = b"".join(line + end for line, end in lines) + last
    whole, shortened = _both(data)
    assert shortened == whole


def test_a_plain_message_keeps_its_body_byte_for_byte() -> None:
    body = b"line one\r\nca\xc3\xa9 \xff\r\n\r\n\r\nlast"
    message = parse(BytesParser(policy=policy.compat32), b"Subject: x\r\nContent-Type: text/plain\r\n\r\n" + body)
    assert message.get_payload(decode=True) == body
    assert message["Subject"] == "x"


def test_a_plain_header_block_is_read_without_the_parser() -> None:
    block = b"Received: from a\r\n\tby b;\r\n\tdate\r\nSubject:  hi \r\nX-Empty:\nTo: <b@c>\r\r\n"
    message = _plain_header_block(block)
    assert message is not None
    assert message.items() == [
        ("Received", "from a\r\n\tby b;\r\n\tdate"), ("Subject", "hi "), ("X-Empty", ""), ("To", "<b@c>")]
    assert message.get_payload() == "" and message.defects == []
    assert _seen(message) == _seen(BytesParser(policy=policy.compat32).parsebytes(block, headersonly=True))


@pytest.mark.parametrize("block", [
    b" folded first: x\r\nSubject: y\r\n\r\n",  # a defect the parser records
    b"Subject : y\r\n\r\n",  # a field in the obsolete syntax
    b"From someone Mon\r\nSubject: y\r\n\r\n",  # the envelope's From line
    b"Subject: y\r\nFrom someone\r\n\r\n",
    b"Subject: y\r\nnot a field\r\n\r\n",  # the parser starts the payload there
    b"Subject: y\r\n: no name\r\n\r\n",
    b"\r\nSubject: y\r\n\r\n",  # no field before the empty line
])
def test_anything_else_is_left_to_the_parser(block: bytes) -> None:
    assert _plain_header_block(block) is None


class NoParser:
    def parsebytes(self, *args, **kwargs):
        raise AssertionError("the parser was asked")


def test_a_plain_message_is_taken_apart_without_the_parser() -> None:
    message = parse(NoParser(), b"Subject: x\r\nTo: y\r\n\r\nbody\r\n")
    assert message.items() == [("Subject", "x"), ("To", "y")]
    assert message.get_payload() == "body\r\n"
