"""Shared state with expiry: counters and values that throttles, rate limits and
greylisting keep.

Everything that must hold across worker processes or proxy instances goes through this
interface. `MemoryState` keeps it per process (the default, and right for one worker);
a networked backend (Redis) implements the same four coroutines.
"""

from __future__ import annotations

import abc
import heapq
import time


class SharedState(abc.ABC):
    @abc.abstractmethod
    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        """Add to a counter and return the new value. The expiry is set when the counter
        is created and not extended by later increments (a fixed window)."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def set(self, key: str, value: str, ttl: float) -> None: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    async def close(self) -> None:
        return None


class MemoryState(SharedState):
    """Per-process state. Expired keys are dropped lazily and by a bounded sweep."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[float, str | int]] = {}
        self._expiries: list[tuple[float, str]] = []  # heap, may hold stale entries

    def _live(self, key: str) -> str | int | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._values[key]
            return None
        return entry[1]

    def _store(self, key: str, value: str | int, ttl: float) -> None:
        expires = self._clock() + ttl
        self._values[key] = (expires, value)
        heapq.heappush(self._expiries, (expires, key))
        self._sweep()

    def _sweep(self, budget: int = 16) -> None:
        now = self._clock()
        while budget and self._expiries and self._expiries[0][0] <= now:
            _, key = heapq.heappop(self._expiries)
            entry = self._values.get(key)
            if entry is not None and entry[0] <= now:
                del self._values[key]
            budget -= 1

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        current = self._live(key)
        if current is None:
            self._store(key, amount, ttl)
            return amount
        value = int(current) + amount
        self._values[key] = (self._values[key][0], value)
        return value

    async def get(self, key: str) -> str | None:
        value = self._live(key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str, ttl: float) -> None:
        self._store(key, value, ttl)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    def __len__(self) -> int:
        return len(self._values)


def make_state(settings) -> SharedState:
    if settings.backend == "memory":
        return MemoryState()
    raise ValueError(f"unknown state backend {settings.backend!r}")
