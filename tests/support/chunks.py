"""Ways to cut a byte stream into reads, for parsers that must not care where it is cut."""

from __future__ import annotations


def splits(stream: bytes):
    """The stream whole, byte by byte, cut once anywhere, and (short ones) cut twice."""
    yield [stream]
    yield [stream[i : i + 1] for i in range(len(stream))]
    for i in range(len(stream) + 1):
        yield [stream[:i], stream[i:]]
    if len(stream) <= 24:
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                yield [stream[:i], stream[i:j], stream[j:]]


def chunked(stream: bytes, cuts) -> list[bytes]:
    """The stream cut at the given offsets (those past its end ignored)."""
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


def in_reads(stream: bytes, size: int) -> list[bytes]:
    """The stream in reads of `size` bytes."""
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def drive(machine, chunks, after=None, slack: int = 4) -> list:
    """Every event of a sans-IO machine up to CLOSED, driven as a session drives it: a
    read on NEED_DATA (the end of input once the reads are spent), and `after(event)`
    for each event. A bug must not spin: no more events than twice the bytes, plus
    `slack`."""
    from mailproxy.protocol.events import CLOSED, NEED_DATA

    reads = iter([chunk for chunk in chunks if chunk])  # b"" would be the end of input
    most = 2 * sum(map(len, chunks)) + slack
    events: list = []
    ended = False
    while True:
        event = machine.next_event()
        if event is NEED_DATA:
            assert not ended, "NEED_DATA after the end of input"
            chunk = next(reads, b"")
            ended = not chunk
            machine.receive_data(chunk)
            continue
        events.append(event)
        assert len(events) <= most, events[-5:]
        if event is CLOSED:
            return events
        if after is not None:
            after(event)
