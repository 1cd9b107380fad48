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
