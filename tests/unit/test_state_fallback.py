"""FallbackState: the shared backend while it answers, per-process counts while it does
not; and the AUTH throttle the application builds on it, which keeps limiting guesses
(per process) and keeps letting correct passwords in while Redis is gone."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from mailproxy.app import build
from mailproxy.config import Config
from mailproxy.state import FallbackState, MemoryState, SharedState, StateUnavailable, with_local_fallback
from mailproxy.state_redis import RedisState
from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def server():
    with RedisServer() as running:
        yield running


def errors() -> float:
    samples = [
        REGISTRY.get_sample_value("mailproxy_state_errors_total", {"backend": "redis", "operation": op}) or 0.0
        for op in ("incr", "get", "set", "add", "delete")
    ]
    return sum(samples)


def test_uses_the_shared_backend_while_it_answers(server):
    prefix = f"test-{uuid.uuid4().hex}:"

    async def steps():
        shared, other_worker = (RedisState(server.url, prefix, timeout=5.0) for _ in range(2))
        fallback = FallbackState(shared)
        try:
            assert await fallback.incr("n", ttl=60) == 1
            assert await other_worker.incr("n", ttl=60) == 2
            assert await fallback.incr("n", ttl=60) == 3
            await fallback.set("k", "v", ttl=60)
            assert await other_worker.get("k") == "v"
            assert await fallback.add("k", "w", ttl=60) is False
            await fallback.delete("k")
            assert await other_worker.get("k") is None
        finally:
            await shared.close()
            await other_worker.close()
        assert len(fallback.local) == 0  # nothing went to the local state

    asyncio.run(steps())


def test_counts_locally_while_the_shared_backend_is_unavailable():
    gone = RedisState(RedisServer().url, timeout=5.0)  # nothing listens there
    fallback = FallbackState(gone)
    before = errors()

    async def steps():
        with pytest.raises(StateUnavailable):
            await gone.get("n")
        assert [await fallback.incr("n", ttl=60) for _ in range(3)] == [1, 2, 3]
        assert await fallback.get("n") == "3"
        assert await fallback.add("k", "v", ttl=60) is True
        assert await fallback.add("k", "w", ttl=60) is False
        await fallback.set("k", "x", ttl=60)
        assert await fallback.get("k") == "x"
        await fallback.delete("k")
        assert await fallback.get("k") is None
        await gone.close()

    asyncio.run(steps())
    assert errors() == before + 11  # each operation asked Redis first


def test_memory_state_needs_no_fallback():
    memory = MemoryState()
    assert with_local_fallback(memory) is memory
    assert isinstance(with_local_fallback(RedisState("redis://127.0.0.1:1/0")), FallbackState)


class AnswersInProcessButMayFail(SharedState):
    """A backend of its own kind that needs no timing yet can be unavailable."""

    in_process = True

    async def incr(self, key, ttl, amount=1):
        raise StateUnavailable("a lock that timed out")

    async def get(self, key):
        raise StateUnavailable("a lock that timed out")

    async def set(self, key, value, ttl):
        raise StateUnavailable("a lock that timed out")

    async def add(self, key, value, ttl):
        raise StateUnavailable("a lock that timed out")

    async def delete(self, key):
        raise StateUnavailable("a lock that timed out")


def test_a_backend_that_may_fail_gets_the_fallback_even_if_it_answers_in_process():
    state = AnswersInProcessButMayFail()
    assert state.in_process
    wrapped = with_local_fallback(state)
    assert isinstance(wrapped, FallbackState)
    assert asyncio.run(wrapped.incr_and_get(["n"], ttl=60, reads=["n"])) == ([1], ["1"])


def config_with_state(url: str) -> Config:
    return Config.model_validate({
        "state": {"backend": "redis", "url": url, "timeout": 5.0},
        "auth": {"backends": [], "max_failures": 3, "throttle_delay": 0.0},
        "upstreams": {"sink": {"address": "127.0.0.1:2526"}},
        "listeners": [{"name": "submission", "mode": "submission", "address": "127.0.0.1:2587",
                       "upstream": "sink"}],
    })


def test_the_auth_throttle_goes_on_per_process_while_redis_is_unavailable():
    """Neither fail-open (unlimited guessing) nor fail-closed (nobody can log in)."""
    app = build(config_with_state(RedisServer().url))  # nothing listens there
    throttle = app.listeners[0].throttle
    before = errors()

    async def steps():
        # A correct password is checked and its slot given back: nobody is locked out.
        correct = await throttle.reserve("192.0.2.1")
        assert correct.allowed and correct.delay == 0
        await throttle.release(correct)
        # Three failures, then the network is over max_failures.
        allowed = [(await throttle.reserve("192.0.2.1")).allowed for _ in range(4)]
        assert allowed == [True, True, True, False]
        assert throttle.over_limit(await throttle.network_failures("192.0.2.1"))
        assert not throttle.over_limit(await throttle.network_failures("192.0.2.2"))
        await app.state.close()

    asyncio.run(steps())
    assert errors() > before


def test_the_auth_throttle_counts_in_redis_while_it_answers(server):
    app = build(config_with_state(server.url))
    throttle = app.listeners[0].throttle

    async def steps():
        for _ in range(2):
            await throttle.reserve("192.0.2.9")
        await app.state.close()

    asyncio.run(steps())
    assert server.client().get("mailproxy:authfail:addr:192.0.2.9/32") == "2"
