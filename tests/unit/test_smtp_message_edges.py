"""mailproxy.protocol.smtp_message: empty reads in a message after `354`. An empty read
stores nothing, so it never counts towards the size limit. Where it comes, even between
the bytes of the end marker, changes neither the message, nor what follows it, nor the
read that ends it. No sockets."""

from __future__ import annotations

import pytest

from mailproxy.protocol.smtp_message import END_OF_DATA, DataReceiver, WireReceiver
from tests.unit.test_smtp_data_stream import reference_framing, reference_wire


def with_empty_reads(stream: bytes) -> list[list[bytes]]:
    """The stream with an empty read at each position (then cut there), and in 1-byte
    reads with an empty read before each one and after the last."""
    ways = [[stream[:i], b"", stream[i:]] for i in range(len(stream) + 1)]
    ways.append([piece for i in range(len(stream)) for piece in (b"", stream[i : i + 1])] + [b""])
    return ways


def feed_until_done(receiver: DataReceiver, reads: list[bytes]) -> tuple[int, bytes]:
    """Feed the reads until one ends the message: (its index, the bytes after it in the
    stream, counting the ones never fed)."""
    for index, read in enumerate(reads):
        if receiver.feed(read):
            return index, receiver.leftover + b"".join(reads[index + 1 :])
        assert not receiver.done
    raise AssertionError(f"end of data not found in {reads!r}")


def ending_read(reads: list[bytes], last: int) -> int:
    """The index of the read that carries byte `last` of the stream."""
    seen = 0
    for index, read in enumerate(reads):
        seen += len(read)
        if seen > last:
            return index
    raise AssertionError("the stream is shorter")


@pytest.mark.parametrize("reads", with_empty_reads(b".\r\nQUIT\r\n"))
def test_an_empty_read_stores_nothing_so_an_empty_message_is_within_even_a_limit_below_zero(reads):
    # Under a limit of -1 storing anything, even an empty piece, puts the message over it.
    receiver = DataReceiver(limit=-1)
    index, after = feed_until_done(receiver, reads)
    assert index == ending_read(reads, 2)  # the marker is the first three bytes
    assert (receiver.body, after, receiver.size, receiver.overflow) == (b"", b"QUIT\r\n", 0, False)


# A message with a stuffed dot line, a lone dot after a bare LF, a dot after a bare CR
# and a CR before a CRLF, followed by a pipelined command.
STREAM = b".a\r\n..\r\nb\n.\r\r\n.\r\nQUIT\r\n"


@pytest.mark.parametrize("reads", with_empty_reads(STREAM))
def test_an_empty_read_anywhere_changes_neither_the_message_nor_the_read_that_ends_it(reads):
    sent, after = reference_framing(STREAM)
    assert (sent, after) == (b".a\r\n..\r\nb\n.\r\r\n", b"QUIT\r\n")
    marker_end = len(sent) + len(END_OF_DATA) - 3  # the marker's last byte
    forwarded = reference_wire(sent)
    assert forwarded == b"a\r\n..\r\nb\r\n\r\n\r\n"

    received = DataReceiver(limit=len(sent))
    assert feed_until_done(received, reads) == (ending_read(reads, marker_end), after)
    assert (received.body, received.size, received.overflow) == (sent, len(sent), False)

    normalised = WireReceiver(limit=len(forwarded), content=True)
    assert feed_until_done(normalised, reads) == (ending_read(reads, marker_end), after)
    assert (normalised.body, normalised.size, normalised.overflow) == (forwarded, len(forwarded), False)
    assert normalised.content == b"a\r\n.\r\nb\r\n\r\n\r\n"
