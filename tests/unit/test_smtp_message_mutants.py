"""mailproxy.protocol.smtp_message where a mutation pass found it unchecked: what a
receiver hands out once a message is over its limit, and the bytes forwarded at the
edges of a read. No sockets."""

from __future__ import annotations

import pytest

from mailproxy.protocol.smtp_message import WireNormaliser, WireReceiver


def test_a_streamed_message_hands_out_nothing_of_the_read_that_takes_it_over_the_limit():
    receiver = WireReceiver(limit=10, stream=True)
    assert receiver.streaming is True
    assert receiver.feed(b"abcdefgh\r") is False  # the CR waits: it may be half of a CRLF
    assert receiver.take_pieces() == [b"abcdefgh"]
    # This read completes the CRLF (10 bytes, at the limit), then goes over it: the
    # CRLF must not be handed out on its own after the message was given up.
    assert receiver.feed(b"\nxyz") is False
    assert receiver.overflow is True
    assert receiver.take_pieces() == []
    assert receiver.feed(b"more\r\n.\r\nQUIT\r\n") is True
    assert receiver.take_pieces() == []
    assert (receiver.body, receiver.leftover) == (b"", b"QUIT\r\n")


def test_a_kept_message_does_not_turn_into_a_streamed_one_when_over_the_limit():
    receiver = WireReceiver(limit=4)
    assert receiver.streaming is False
    assert receiver.feed(b"abcdefgh\r\n") is False
    assert receiver.overflow is True
    assert receiver.streaming is False
    assert receiver.feed(b".\r\n") is True
    assert receiver.streaming is False and receiver.body == b""


# --- the normaliser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "piece",
    [
        b"..dotted first\r\nthen plain\r\n",  # a stuffed dot first in the piece
        b"..\r\n",
        b"plain\r\n..dotted\r\n...more\r\n",  # stuffed dots inside it
        b"plain\r\n",
    ],
)
def test_a_piece_that_needs_no_change_is_forwarded_without_a_copy(piece):
    """Clean reads are the common case; the normaliser hands the read on as it came,
    so forwarding a large message costs no copy of it."""
    normaliser = WireNormaliser()
    [out] = normaliser.feed(piece)
    assert out is piece
    assert normaliser.finish() == []


def test_finish_leaves_the_normaliser_ready_for_a_new_message():
    normaliser = WireNormaliser()
    assert normaliser.feed(b"unterminated") == [b"unterminated"]
    assert normaliser.finish() == [b"\r\n"]
    # A new message starts at a line start: its first dot is stuffing.
    assert normaliser.feed(b".b\r\n") == [b"b\r\n"]
    assert normaliser.finish() == []
    assert normaliser.feed(b"a\r") == [b"a"]
    assert normaliser.finish() == [b"\r\n"]  # the CR waiting for a LF was a line end
    assert normaliser.feed(b"\nb\r\n") == [b"\r\nb\r\n"]  # a new bare LF, not the CR's half
    assert normaliser.finish() == []
