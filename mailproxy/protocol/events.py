"""What every sans-IO machine in this package may give besides its own events: it needs
more bytes (`NEED_DATA`), the peer's input has ended (`CLOSED`), or the peer broke the
protocol (`ProtocolViolation`)."""

from __future__ import annotations

from dataclasses import dataclass


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")


@dataclass(slots=True)
class ProtocolViolation:
    """What a peer sent breaks the protocol; a reader that gives this is done with it."""

    text: str
