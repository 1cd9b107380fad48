"""Normalising a message as it arrives (WireNormaliser, WireReceiver): wire-byte tables
split at every position, and properties against a one-shot reference, no sockets."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailproxy.protocol.smtp_message import END_OF_DATA, WireNormaliser, WireReceiver, unstuff, wire_body
from tests.support.chunks import splits


def reference_lines(body: bytes) -> list[bytes]:
    """The message's lines, spelled out one by one: every line end (CRLF, bare CR, bare
    LF) ends a line, an unterminated last line counts, and the client's stuffing (the
    first dot of a line that starts with one) is removed."""
    lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[1:] if line.startswith(b".") else line for line in lines]


def reference_wire(body: bytes) -> bytes:
    """Each line stuffed again, with CRLF."""
    return b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in reference_lines(body))


def reference_content(body: bytes) -> bytes:
    """What the upstream stores (and plugins read)."""
    return b"".join(line + b"\r\n" for line in reference_lines(body))


def reference_framing(stream: bytes) -> tuple[bytes, bytes]:
    """(message as sent, what follows it): the first <CR><LF>.<CR><LF>, counting the
    CRLF that ended the DATA command line."""
    at = (b"\r\n" + stream).find(END_OF_DATA)
    return stream[:at], stream[at + 3 :]


def normalise(chunks) -> bytes:
    normaliser = WireNormaliser()
    pieces = [piece for chunk in chunks for piece in normaliser.feed(chunk)]
    return b"".join(pieces + normaliser.finish())


def receive(chunks, limit: int = 1 << 20) -> tuple[bytes, bytes, int, bool]:
    """Feed a WireReceiver until it sees the end; bytes never fed count as leftover.
    The content it unstuffed on the way must be the one-shot `unstuff` of its message."""
    receiver = WireReceiver(limit, content=True)
    for index, chunk in enumerate(chunks):
        if receiver.feed(chunk):
            assert receiver.content == unstuff(receiver.body), shown(chunks)
            rest = b"".join(chunks[index + 1 :])
            return receiver.body, receiver.leftover + rest, receiver.size, receiver.overflow
    raise AssertionError(f"end of data not found in {shown(chunks)}")


def shown(chunks) -> str:
    """The chunks for a failure message, short even for a big message."""
    return repr(chunks) if sum(map(len, chunks)) < 500 else f"{len(chunks)} chunks, {b''.join(chunks)[:200]!r}..."


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


def assert_safe(wire: bytes) -> None:
    """CRLF only, every line that starts with a dot starts with two (so none is a lone
    dot), and the one end marker the proxy adds is the only one the upstream sees."""
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    assert wire == b"" or wire.endswith(b"\r\n")
    for line in wire.split(b"\r\n"):
        assert not line.startswith(b".") or line.startswith(b".."), line
    upstream_sees = b"\r\n" + wire + b".\r\n"  # DATA's CRLF, the message, the marker's rest
    assert upstream_sees.find(END_OF_DATA) == len(upstream_sees) - len(END_OF_DATA)


# --- the normaliser, wire bytes ------------------------------------------------------------

# (what the client sent as the message, what goes to the upstream)
NORMALISED = [
    (b"", b""),
    (b"a\r\n", b"a\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n"),
    (b"a\rb\r", b"a\r\nb\r\n"),
    (b"a\r\rb\r\n", b"a\r\n\r\nb\r\n"),
    (b"a\n\r", b"a\r\n\r\n"),  # LF then CR: two line ends
    (b"a\r\r\n", b"a\r\n\r\n"),
    (b"ab\nab\nab\n", b"ab\r\nab\r\nab\r\n"),
    (b"..a\r..a\r", b"..a\r\n..a\r\n"),
    (b"..a\r\n", b"..a\r\n"),
    (b".a\r\n", b"a\r\n"),  # a single leading dot is the client's stuffing
    (b".\r\n", b"\r\n"),
    (b".\n", b"\r\n"),
    (b".\r", b"\r\n"),
    (b"...\r\n", b"...\r\n"),
    (b"x\n.\nMAIL FROM:<a@b>\r\n", b"x\r\n\r\nMAIL FROM:<a@b>\r\n"),
    (b"x\r.\rMAIL FROM:<a@b>\r\n", b"x\r\n\r\nMAIL FROM:<a@b>\r\n"),
    (b"x\r\n.\nQUIT\r\n", b"x\r\n\r\nQUIT\r\n"),
    (b"x\n.\r\nQUIT\r\n", b"x\r\n\r\nQUIT\r\n"),
    (b"x\r.\r\nQUIT\r\n", b"x\r\n\r\nQUIT\r\n"),
    (b"x\r\n..\nQUIT\r\n", b"x\r\n..\r\nQUIT\r\n"),
    (b"x\r..\r.y\n..z\r\n", b"x\r\n..\r\ny\r\n..z\r\n"),
    (b"a.b\r\n.\r.\n", b"a.b\r\n\r\n\r\n"),  # dots inside a line are content
    # an unterminated last line is terminated
    (b"a", b"a\r\n"),
    (b".", b"\r\n"),
    (b"..", b"..\r\n"),
    (b"a\r\n.", b"a\r\n\r\n"),
]


@pytest.mark.parametrize("body, wire", NORMALISED)
def test_normaliser_every_split(body, wire):
    assert wire_body(body) == wire == reference_wire(body)
    for chunks in splits(body):
        assert normalise(chunks) == wire, chunks


# Those a client can send as they are: ending in CRLF, without the end marker inside.
SENDABLE = [(b, w) for b, w in NORMALISED if b.endswith(b"\r\n") and reference_framing(b + b".\r\n")[0] == b]


@pytest.mark.parametrize("body, wire", SENDABLE)
def test_receiver_every_split(body, wire):
    """The same messages followed by the end marker and a pipelined command."""
    stream = body + b".\r\nQUIT\r\n"
    for chunks in splits(stream):
        assert receive(chunks) == (wire, b"QUIT\r\n", len(wire), False), chunks


# The end marker, or something close to it, split anywhere (stream, message as forwarded,
# what follows).
FRAMED = [
    (b".\r\nNOOP\r\n", b"", b"NOOP\r\n"),
    (b"a\r\n.\r\n", b"a\r\n", b""),
    (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\n\r\n", b""),  # ".<CR><CR><LF>" is not the end
    (b"a\r\n.\n\r\n.\r\n", b"a\r\n\r\n\r\n", b""),  # nor ".<LF>": a lone dot line, unstuffed
    (b"a\r\n.\n.\r\nb\r\n.\r\n", b"a\r\n\r\n\r\nb\r\n", b""),  # nor <LF>.<CR><LF>
    (b"a\n.\r\n.\r\n", b"a\r\n\r\n", b""),  # nor <LF>.<CR><LF>
    (b"a\r\n..\r\n.\r\n", b"a\r\n..\r\n", b""),
    (b"a\r\n.a\r\n.\r\nRSET\r\n", b"a\r\na\r\n", b"RSET\r\n"),
    (b"\r\n.\r\n", b"\r\n", b""),
    (b"\r.\r\n.\r\n", b"\r\n\r\n", b""),
    (b"x\r\n.\r\n.\r\n", b"x\r\n", b".\r\n"),
    (b"a\r\r\n.\r\n", b"a\r\n\r\n", b""),
]


@pytest.mark.parametrize("stream, wire, leftover", FRAMED)
def test_end_marker_every_split(stream, wire, leftover):
    for chunks in splits(stream):
        assert receive(chunks) == (wire, leftover, len(wire), False), chunks


def test_a_clean_piece_is_not_copied():
    piece = b"Subject: hi\r\n\r\nline\r\n..dotted\r\n"
    assert WireNormaliser().feed(piece)[0] is piece
    assert wire_body(piece) is piece


def test_dirty_pieces_are_normalised_as_they_arrive():
    normaliser = WireNormaliser()
    assert normaliser.feed(b"ab\nab\n") == [b"ab\r\nab\r\n"]
    assert normaliser.feed(b"..a\r") == [b"..a"]  # the CR may be half of a CRLF
    assert normaliser.feed(b"\n.") == [b"\r\n"]  # the dot may be stuffing
    assert normaliser.feed(b".b\r\n") == [b"..", b"b\r\n"]
    assert normaliser.finish() == []


def test_content_is_unstuffed_as_it_arrives():
    stream = b"..a\r..b\r\n.c\nd\r\n.\r\n"
    for chunks in splits(stream):
        receiver = WireReceiver(1000, content=True)
        assert any(receiver.feed(chunk) for chunk in chunks)
        assert receiver.body == b"..a\r\n..b\r\nc\r\nd\r\n"
        assert receiver.content == b".a\r\n.b\r\nc\r\nd\r\n"


def test_content_without_dots_is_the_body_itself():
    receiver = WireReceiver(1000, content=True)
    assert receiver.feed(b"a\nb\r\n.\r\n")
    assert receiver.content is receiver.body
    plain = WireReceiver(1000)
    assert plain.feed(b"a\r\n.\r\n")
    with pytest.raises(RuntimeError, match="^content was not kept$"):
        plain.content


# --- the size limit counts what is forwarded -----------------------------------------------


@pytest.mark.parametrize("limit, overflow", [(12, False), (13, False), (11, True), (10, True)])
def test_limit_counts_the_forwarded_bytes(limit, overflow):
    # Sent as 10 bytes, forwarded as 12: each bare LF becomes CRLF.
    stream = b"ab\nab\nab\r\n.\r\n"
    forwarded = b"ab\r\nab\r\nab\r\n"
    for chunks in splits(stream):
        body, leftover, size, over = receive(chunks, limit)
        assert (over, leftover) == (overflow, b""), chunks
        assert body == (b"" if overflow else forwarded), chunks
        if not overflow:
            assert size == 12


def test_dropped_stuffing_is_not_counted():
    # Sent as 15 bytes, forwarded as 12.
    stream = b".ab\r\n.ab\r\n.ab\r\n.\r\n"
    for chunks in splits(stream):
        assert receive(chunks, limit=12) == (b"ab\r\nab\r\nab\r\n", b"", 12, False), chunks


def test_overflow_still_finds_the_end_and_the_next_command():
    stream = b"ab\n" * 100 + b"\r\n.\r\nQUIT\r\n"
    for cut in range(0, len(stream), 7):
        body, leftover, size, overflow = receive([stream[:cut], stream[cut:]], limit=100)
        assert (body, leftover, overflow) == (b"", b"QUIT\r\n", True)
        assert size > 100


def test_memory_stays_within_twice_the_forwarded_message():
    """1.3 MB of short lines with bare LF (the case that once took 10x): the receiver
    holds the message once as it arrives, then joins it once."""
    sent = b"ab\n" * 333_334 + b"\r\n"
    stream = sent + b".\r\n"
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    del stream
    forwarded = 333_334 * 4 + 2
    tracemalloc.start()
    try:
        body, _, size, overflow = receive(chunks, limit=10 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not overflow and size == len(body) == forwarded
    assert peak < 2 * forwarded + 512 * 1024, peak


def test_a_trickled_message_is_not_kept_a_byte_per_object():
    sent = b"ab\n" * 20_000
    tracemalloc.start()
    try:
        receiver = WireReceiver(1 << 20)
        for i in range(len(sent)):
            receiver.feed(sent[i : i + 1])
        _, peak = tracemalloc.get_traced_memory()
        assert receiver.feed(b"\r\n.\r\n")
    finally:
        tracemalloc.stop()
    assert receiver.body == b"ab\r\n" * 20_000 + b"\r\n"
    assert peak < 4 * len(receiver.body), peak


# --- properties ----------------------------------------------------------------------------

# Bytes rich in the ones that matter, and arbitrary bytes.
TRICKY = st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".."]), max_size=60).map(b"".join)
MESSAGES = st.one_of(TRICKY, st.binary(max_size=300))


@given(MESSAGES, st.lists(st.integers(0, 300), max_size=10))
@example(b"a\r", [1])
@example(b"\r\n..", [3])
@example(b"\r.\r", [1, 2])
@settings(max_examples=600, deadline=None)
def test_normaliser_matches_the_reference_whatever_the_chunking(body, cuts):
    expected = reference_wire(body)
    assert normalise(chunked(body, cuts)) == expected
    assert wire_body(body) == expected
    assert_safe(expected)
    # What plugins read is the message as the upstream will store it.
    assert unstuff(expected) == reference_content(body)


@given(MESSAGES, st.binary(max_size=20), st.lists(st.integers(0, 400), max_size=10), st.integers(0, 400))
@example(b"ab\nab\n", b"QUIT\r\n", [3], 11)
@example(b".\r", b"", [1, 2], 100)
@example(b"a\r\n.", b"", [3, 4, 5], 100)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_receiver_forwards_the_reference_and_bounds_its_size(content, after, cuts, limit):
    stream = content + END_OF_DATA + after
    sent, expected_leftover = reference_framing(stream)
    expected = reference_wire(sent)
    body, leftover, size, overflow = receive(chunked(stream, cuts), limit)
    assert leftover == expected_leftover
    # The limit is checked against what would be forwarded, not against what was sent.
    assert overflow is (len(expected) > limit)
    if overflow:
        assert body == b"" and size > limit
    else:
        assert body == expected and size == len(expected)
        assert_safe(body)
        assert unstuff(body) == reference_content(sent)
