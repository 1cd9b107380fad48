"""Shared state with expiry: counters and values that throttles, rate limits and
greylisting keep.

Everything that must hold across worker processes or proxy instances goes through this
interface. `MemoryState` keeps it per process (the default, and right for one worker);
`RedisState` (state_redis.py) keeps it in one Redis server for every process.

A networked backend can fail: its operations then raise `StateUnavailable`, and each
caller decides what that means for it. Counters that protect (the AUTH throttle, rate
limits) go on per process through `FallbackState`, as if the backend were "memory";
a check that would refuse mail it cannot judge (greylisting) lets it pass.
"""

from __future__ import annotations

import abc
import heapq
import time
from typing import Sequence


class StateUnavailable(Exception):
    """The state backend did not answer (unreachable, timed out, refused the command).
    Nothing is known of whether the operation took effect."""


class SharedState(abc.ABC):
    """Every operation is atomic, also between processes sharing a networked backend."""

    # Whether operations are answered inside this process: nothing is waited for, so
    # callers do not time them.
    in_process = False

    @abc.abstractmethod
    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        """Add to a counter and return the new value. The expiry is set when the counter
        is created and not extended by later increments (a fixed window)."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def set(self, key: str, value: str, ttl: float) -> None: ...

    @abc.abstractmethod
    async def add(self, key: str, value: str, ttl: float) -> bool:
        """Set `key` only if it does not exist; whether it was set."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    async def incr_and_get(
        self, counters: Sequence[str], ttl: float, reads: Sequence[str]
    ) -> tuple[list[int], list[str | None]]:
        """Add 1 to each of `counters` (as `incr`), then read each of `reads`: the new
        values and the values read. A networked backend does it in one atomic step
        and one round trip; this default, one operation after the other."""
        values = [await self.incr(key, ttl) for key in counters]
        return values, [await self.get(key) for key in reads]

    async def close(self) -> None:
        return None


class MemoryState(SharedState):
    """Per-process state. Expired keys are dropped lazily and by a bounded sweep."""

    in_process = True
    # Whether incr and get are this class's own: a subclass's must see every count.
    _own_operations = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_operations = cls.incr is MemoryState.incr and cls.get is MemoryState.get

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[float, str | int]] = {}
        # One heap entry per key, due no later than the key's expiry; `_due` holds its
        # time, and an entry of another time is stale (skipped when it comes up). A key
        # set again for longer (a greylist triplet at every message) keeps its entry,
        # which the sweep moves on when it comes due: nothing grows per write.
        self._expiries: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    # Each operation reads the clock once, and hands the time on.

    def _live(self, key: str, now: float) -> str | int | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._values[key]
            return None
        return entry[1]

    def _store(self, key: str, value: str | int, ttl: float, now: float) -> None:
        expires = now + ttl
        self._values[key] = (expires, value)
        due = self._due.get(key)
        if due is None or due > expires:
            self._due[key] = expires
            heapq.heappush(self._expiries, (expires, key))
        self._sweep(now)

    def _sweep(self, now: float, budget: int = 16) -> None:
        while budget and self._expiries and self._expiries[0][0] <= now:
            due, key = heapq.heappop(self._expiries)
            budget -= 1
            if self._due.get(key) != due:
                continue  # stale: the key's entry is another one
            entry = self._values.get(key)
            if entry is None or entry[0] <= now:
                self._values.pop(key, None)
                del self._due[key]
            else:  # set again for longer since: look again then
                self._due[key] = entry[0]
                heapq.heappush(self._expiries, (entry[0], key))

    def _add(self, key: str, ttl: float, amount: int, now: float) -> int:
        entry = self._values.get(key)
        if entry is None or entry[0] <= now:  # none, or expired: a new counter
            self._store(key, amount, ttl, now)
            return amount
        value = int(entry[1]) + amount
        self._values[key] = (entry[0], value)
        return value

    def _read(self, key: str, now: float) -> str | None:
        value = self._live(key, now)
        return None if value is None else str(value)

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        return self._add(key, ttl, amount, self._clock())

    async def get(self, key: str) -> str | None:
        return self._read(key, self._clock())

    async def set(self, key: str, value: str, ttl: float) -> None:
        self._store(key, value, ttl, self._clock())

    async def add(self, key: str, value: str, ttl: float) -> bool:
        now = self._clock()
        if self._live(key, now) is not None:
            return False
        self._store(key, value, ttl, now)
        return True

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def incr_and_get(
        self, counters: Sequence[str], ttl: float, reads: Sequence[str]
    ) -> tuple[list[int], list[str | None]]:
        if not self._own_operations:  # a subclass's incr or get must see every count
            return await super().incr_and_get(counters, ttl, reads)
        # Without an await per operation: the rate limits count every command this way.
        now = self._clock()
        values, read = [], []  # loops: a comprehension is a function call more in Python 3.11
        for key in counters:
            values.append(self._add(key, ttl, 1, now))
        for key in reads:
            read.append(self._read(key, now))
        return values, read

    def __len__(self) -> int:
        return len(self._values)


class FallbackState(SharedState):
    """`shared` while it answers; while it does not, the same operation on `local`, a
    per-process state. A count then holds per process, as with the memory backend,
    instead of not at all (fail open) or for nobody (fail closed). Counts taken during
    an outage stay local; they do not move to `shared` when it is back."""

    def __init__(self, shared: SharedState, local: SharedState | None = None) -> None:
        self.shared = shared
        self.local = local if local is not None else MemoryState()

    async def _either(self, operation: str, *args):
        try:
            return await getattr(self.shared, operation)(*args)
        except StateUnavailable:
            return await getattr(self.local, operation)(*args)

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        return await self._either("incr", key, ttl, amount)

    async def get(self, key: str) -> str | None:
        return await self._either("get", key)

    async def set(self, key: str, value: str, ttl: float) -> None:
        await self._either("set", key, value, ttl)

    async def add(self, key: str, value: str, ttl: float) -> bool:
        return await self._either("add", key, value, ttl)

    async def delete(self, key: str) -> None:
        await self._either("delete", key)

    async def incr_and_get(
        self, counters: Sequence[str], ttl: float, reads: Sequence[str]
    ) -> tuple[list[int], list[str | None]]:
        return await self._either("incr_and_get", counters, ttl, reads)

    # close(): `shared` belongs to whoever made it, and closes it.


def with_local_fallback(state: SharedState) -> SharedState:
    """`state`, going on per process while it is unavailable (see FallbackState)."""
    return state if isinstance(state, MemoryState) else FallbackState(state)


def make_state(settings) -> SharedState:
    if settings.backend == "memory":
        return MemoryState()
    if settings.backend == "redis":
        from .state_redis import RedisState  # imports redis and the metrics

        return RedisState(settings.url, settings.key_prefix, settings.timeout)
    raise ValueError(f"unknown state backend {settings.backend!r}")
