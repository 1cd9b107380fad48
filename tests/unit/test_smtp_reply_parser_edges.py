"""mailproxy.protocol.smtp at its edges: the default bounds of the reply parser and the
boundaries of the wire helpers, exactly at the limit and one past it."""

from __future__ import annotations

import pytest

from mailproxy.protocol.smtp import ProtocolError, ReplyParser, make_reply
from mailproxy.protocol.smtp_message import WireReceiver


def parse_all(data: bytes, parser: ReplyParser | None = None) -> list:
    parser = parser or ReplyParser()
    parser.feed(data)
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def multiline(count: int) -> bytes:
    return b"250-x\r\n" * (count - 1) + b"250 x\r\n"


def test_by_default_a_reply_may_have_256_lines_and_not_257():
    assert len(parse_all(multiline(256))[0].lines) == 256
    with pytest.raises(ProtocolError, match="too many lines"):
        parse_all(multiline(257))


def test_by_default_a_reply_line_may_be_4096_bytes_and_not_4097():
    line = b"250 " + b"x" * (4096 - 6) + b"\r\n"
    assert parse_all(line)[0].raw == line
    with pytest.raises(ProtocolError, match="too long"):
        parse_all(b"250 " + b"x" * (4097 - 6) + b"\r\n")
    # The same bound holds for a line still waiting for its end.
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * 4092)
    assert parser.next_reply() is None
    parser.feed(b"x")
    with pytest.raises(ProtocolError, match="too long"):
        parser.next_reply()


def test_a_bare_line_feed_first_in_the_buffer_is_a_malformed_line():
    with pytest.raises(ProtocolError, match=r"^malformed reply line b''$"):
        parse_all(b"\n")
    with pytest.raises(ProtocolError, match=r"^malformed reply line b''$"):
        parse_all(b"250 ok\r\n\n")


def test_pending_is_true_for_a_partial_line_and_for_an_unfinished_multiline_reply():
    parser = ReplyParser()
    assert parser.pending is False
    parser.feed(b"25")  # a partial line, nothing taken yet
    assert parser.pending is True
    parser.feed(b"0-first\r\n")
    assert parser.next_reply() is None
    assert parser.pending is True  # the first line of a reply whose end has not come
    parser.feed(b"250 last\r\n")
    assert parser.next_reply().lines == (b"first", b"last")
    assert parser.pending is False


def test_an_oversized_message_counts_the_bytes_received_after_the_limit():
    receiver = WireReceiver(limit=5)
    assert receiver.feed(b"abcdefgh") is False  # over the limit in the middle of a line
    assert receiver.feed(b"\r\n.\r\n") is True
    assert receiver.overflow is True
    assert receiver.size == len(b"abcdefgh\r\n")  # no line end of the proxy's own added
    assert receiver.body == b""


@pytest.mark.parametrize(("code", "positive"), [(199, False), (200, True), (399, True), (400, False), (599, False)])
def test_positive_means_2xx_or_3xx(code, positive):
    assert make_reply(code, "x").positive is positive
