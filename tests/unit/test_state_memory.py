"""MemoryState with an injected clock: fixed-window counters, expiry, set/add/get/delete."""

from __future__ import annotations

import asyncio

import pytest

from mailproxy.config import StateSettings
from mailproxy.state import MemoryState, SharedState, make_state
from tests.support.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> MemoryState:
    return MemoryState(clock=clock)


def run(coro):
    return asyncio.run(coro)


def test_incr_counts_within_a_fixed_window(state, clock):
    assert run(state.incr("k", ttl=10)) == 1
    assert run(state.incr("k", ttl=10)) == 2
    assert run(state.incr("k", ttl=10, amount=5)) == 7
    clock.now += 9.9
    # Later increments do not extend the window (ttl is ignored once the counter exists).
    assert run(state.incr("k", ttl=100)) == 8
    assert run(state.get("k")) == "8"
    clock.now += 0.1  # exactly at the expiry: gone
    assert run(state.get("k")) is None
    assert run(state.incr("k", ttl=10)) == 1
    clock.now += 9.999
    assert run(state.get("k")) == "1"


def test_counters_are_independent(state, clock):
    run(state.incr("a", ttl=5))
    run(state.incr("a", ttl=5))
    run(state.incr("b", ttl=50))
    clock.now += 5
    assert run(state.get("a")) is None
    assert run(state.get("b")) == "1"


def test_set_get_expire(state, clock):
    assert run(state.get("missing")) is None
    run(state.set("greylist:x", "seen", ttl=60))
    assert run(state.get("greylist:x")) == "seen"
    clock.now += 59.5
    assert run(state.get("greylist:x")) == "seen"
    clock.now += 0.5
    assert run(state.get("greylist:x")) is None
    assert len(state) == 0  # dropped when found expired


def test_set_replaces_value_and_expiry(state, clock):
    run(state.set("k", "1", ttl=5))
    clock.now += 3
    run(state.set("k", "2", ttl=5))  # now expires at +8
    clock.now += 3  # +6: past the first expiry, whose heap entry is now stale
    run(state.set("other", "x", ttl=100))  # a store runs the sweep
    assert run(state.get("k")) == "2"
    clock.now += 2  # +8
    assert run(state.get("k")) is None


def test_delete(state, clock):
    run(state.set("k", "v", ttl=10))
    run(state.incr("n", ttl=10))
    run(state.delete("k"))
    run(state.delete("n"))
    run(state.delete("never-there"))
    assert run(state.get("k")) is None
    assert run(state.get("n")) is None
    assert run(state.incr("n", ttl=10)) == 1  # a fresh counter after delete


def test_stale_expiry_of_a_deleted_key_does_not_remove_its_successor(state, clock):
    run(state.set("k", "old", ttl=1))
    run(state.delete("k"))
    run(state.set("k", "new", ttl=100))
    clock.now += 2
    run(state.set("trigger", "x", ttl=100))  # sweeps the stale (t+1, "k") entry
    assert run(state.get("k")) == "new"


def test_sweep_drops_expired_keys_without_reading_them(state, clock):
    for i in range(10):
        run(state.set(f"k{i}", "v", ttl=1))
    assert len(state) == 10
    clock.now += 1
    run(state.set("fresh", "v", ttl=10))
    assert len(state) == 1


def test_sweep_is_bounded(state, clock):
    for i in range(40):
        run(state.set(f"k{i}", "v", ttl=1))
    clock.now += 1
    run(state.set("a", "v", ttl=10))  # at most 16 expired entries per store
    assert len(state) == 40 - 16 + 1
    run(state.set("b", "v", ttl=10))
    assert len(state) == 40 - 32 + 2


async def _set_again(state, clock):
    await state.set("triplet", "passed", ttl=3600)  # a greylist triplet at every message


async def _add_and_delete(state, clock):
    await state.add("inflight", "1", ttl=60)  # a marker held while a session runs
    await state.delete("inflight")


async def _short_then_long(state, clock):
    await state.set("key", "1", ttl=5)
    await state.set("key", "1", ttl=3600)


@pytest.mark.parametrize("write", [_set_again, _add_and_delete, _short_then_long])
def test_writes_to_one_key_cost_no_memory_per_write(state, clock, write):
    # A key written again and again for weeks must not leave something behind at each
    # write until an early expiry comes due.
    import tracemalloc

    async def writes(count: int) -> None:
        for _ in range(count):
            clock.now += 0.01
            await write(state, clock)

    run(writes(1))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(writes(20000))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, grown  # one heap entry per write was about 2 MB
    assert len(state) <= 1


def test_a_key_set_again_for_longer_expires_at_its_later_time_unread(state, clock):
    run(state.set("k", "v", ttl=1))
    run(state.set("k", "v", ttl=10))
    clock.now += 2
    run(state.set("trigger", "x", ttl=100))  # the first expiry is due: k lives on
    assert len(state) == 2
    clock.now += 9
    run(state.set("trigger", "x", ttl=100))  # its later expiry: swept without a read
    assert len(state) == 1
    assert run(state.get("k")) is None


def test_a_key_set_again_for_shorter_is_swept_at_its_earlier_time(state, clock):
    run(state.set("k", "v", ttl=100))
    run(state.set("k", "v", ttl=1))
    clock.now += 2
    run(state.set("trigger", "x", ttl=100))
    assert len(state) == 1


def test_close_and_interface(state):
    assert isinstance(state, SharedState)
    assert run(state.close()) is None


def test_add_sets_only_a_missing_or_expired_key(state, clock):
    assert run(state.add("k", "first", ttl=10)) is True
    assert run(state.add("k", "second", ttl=100)) is False
    assert run(state.get("k")) == "first"
    clock.now += 10  # expired: as good as missing
    assert run(state.add("k", "third", ttl=10)) is True
    assert run(state.get("k")) == "third"


def test_make_state():
    assert isinstance(make_state(StateSettings()), MemoryState)
    with pytest.raises(ValueError, match="^unknown state backend 'mongo'$"):
        make_state(type("S", (), {"backend": "mongo"})())


class Recording(MemoryState):
    """A memory state whose subclass watches every increment and read."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    async def incr(self, key, ttl, amount=1):
        self.seen.append(f"incr {key}")
        return await super().incr(key, ttl, amount)

    async def get(self, key):
        self.seen.append(f"get {key}")
        return await super().get(key)


def test_a_subclass_that_overrides_incr_or_get_sees_the_counts_of_one_step():
    state = Recording()
    assert run(state.incr_and_get(["a", "b"], ttl=60, reads=["a"])) == ([1, 1], ["1"])
    assert state.seen == ["incr a", "incr b", "get a"]
