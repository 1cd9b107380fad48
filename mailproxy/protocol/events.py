"""The two signals every sans-IO machine in this package gives besides its own events:
it needs more bytes (`NEED_DATA`), or the peer's input has ended (`CLOSED`)."""

from __future__ import annotations


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")
