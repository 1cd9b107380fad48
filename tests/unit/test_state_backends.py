"""What every SharedState backend promises, checked on the memory backend and on a real
redis-server: counters, values, set-if-absent, expiry, and fixed-window counters whose
expiry later increments do not extend."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mailproxy.state import MemoryState, SharedState
from mailproxy.state_redis import RedisState


@pytest.fixture(params=["memory", "redis"])
def make_state(request, redis_server):
    """Makes a fresh, empty state of the backend (in the running event loop)."""
    if request.param == "memory":
        return MemoryState
    return lambda: RedisState(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex}:", timeout=5.0)


def scenario(make_state, steps) -> None:
    """Run `steps(state)` in one event loop, closing the state after it."""

    async def main() -> None:
        state: SharedState = make_state()
        try:
            await steps(state)
        finally:
            await state.close()

    asyncio.run(main())


async def gone(state: SharedState, key: str, within: float = 10.0) -> bool:
    """Whether `key` expires within a generous bound (polled, never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await state.get(key) is not None:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_counters(make_state):
    async def steps(state):
        assert await state.incr("n", ttl=60) == 1
        assert await state.incr("n", ttl=60) == 2
        assert await state.incr("n", ttl=60, amount=5) == 7
        assert await state.incr("n", ttl=60, amount=-3) == 4
        assert await state.get("n") == "4"
        assert await state.incr("other", ttl=60) == 1

    scenario(make_state, steps)


def test_values_set_add_delete(make_state):
    async def steps(state):
        assert await state.get("k") is None
        await state.set("k", "one", ttl=60)
        assert await state.get("k") == "one"
        await state.set("k", "two", ttl=60)
        assert await state.get("k") == "two"
        assert await state.add("k", "three", ttl=60) is False
        assert await state.get("k") == "two"
        await state.delete("k")
        await state.delete("never-there")
        assert await state.get("k") is None
        assert await state.add("k", "four", ttl=60) is True
        assert await state.get("k") == "four"

    scenario(make_state, steps)


def test_values_and_counters_expire(make_state):
    async def steps(state):
        await state.set("value", "v", ttl=0.2)
        assert await state.add("added", "v", ttl=0.2) is True
        await state.incr("counter", ttl=0.2)
        await state.set("kept", "v", ttl=300)
        for key in ("value", "added", "counter"):
            assert await gone(state, key), key
        assert await state.get("kept") == "v"
        assert await state.add("added", "again", ttl=60) is True
        assert await state.incr("counter", ttl=60) == 1  # a new window

    scenario(make_state, steps)


def test_increments_do_not_extend_a_counters_expiry(make_state):
    async def steps(state):
        assert await state.incr("window", ttl=0.3) == 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # Keep counting with a long ttl: the window still ends when it was set to, and
        # the next increment starts a new one at 1.
        while await state.incr("window", ttl=300) > 1:
            assert loop.time() < deadline, "the counter's expiry was extended"
            await asyncio.sleep(0.02)

    scenario(make_state, steps)


def test_set_replaces_the_expiry(make_state):
    async def steps(state):
        await state.set("k", "short", ttl=300)
        await state.set("k", "shorter", ttl=0.2)
        assert await gone(state, "k")

    scenario(make_state, steps)


def test_counts_and_reads_in_one_step(make_state):
    async def steps(state):
        await state.set("value", "v", ttl=60)
        assert await state.incr_and_get([], ttl=60, reads=[]) == ([], [])
        assert await state.incr_and_get(["a", "b"], ttl=60, reads=["value", "missing"]) == ([1, 1], ["v", None])
        # The reads come after the counts: a counter read in its own step shows them.
        assert await state.incr_and_get(["a"], ttl=60, reads=["a", "b"]) == ([2], ["2", "1"])
        assert await state.incr("b", ttl=60) == 2  # the counters are incr's counters

    scenario(make_state, steps)


def test_counts_of_one_step_expire_and_are_not_extended(make_state):
    async def steps(state):
        assert await state.incr_and_get(["window"], ttl=0.3, reads=[]) == ([1], [])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (await state.incr_and_get(["window"], ttl=300, reads=[]))[0] != [1]:
            assert loop.time() < deadline, "the counter's expiry was extended"
            await asyncio.sleep(0.02)

    scenario(make_state, steps)


class OperationsOnly(SharedState):
    """A backend with only the operations every backend must have, kept in a memory
    state: what a third-party backend inherits."""

    def __init__(self) -> None:
        self.kept = MemoryState()

    async def incr(self, key, ttl, amount=1):
        return await self.kept.incr(key, ttl, amount)

    async def get(self, key):
        return await self.kept.get(key)

    async def set(self, key, value, ttl):
        await self.kept.set(key, value, ttl)

    async def add(self, key, value, ttl):
        return await self.kept.add(key, value, ttl)

    async def delete(self, key):
        await self.kept.delete(key)


def test_a_backend_with_the_basic_operations_counts_and_reads_in_one_step_too():
    async def steps(state):
        assert await state.incr_and_get(["a", "b"], ttl=0.3, reads=["a", "c"]) == ([1, 1], ["1", None])
        assert await state.incr_and_get(["a"], ttl=60, reads=["b"]) == ([2], ["1"])
        assert await gone(state, "a")  # with the expiry of the step that made it

    scenario(OperationsOnly, steps)
