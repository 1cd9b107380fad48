"""A clock a test sets by hand, for code that takes its time source as an argument
(shared state, caches, the plugins' windows, the hooks' watchdog)."""

from __future__ import annotations


class Clock:
    """`now` in seconds, moved by assigning to it or with `later()`."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def later(self, seconds: float) -> None:
        self.now += seconds
