"""RedisState against a real redis-server: keys under the prefix, expiries as Redis
holds them, atomic operations between processes, and the fail mode: every failure
(nothing listening, no answer in time, a refused command, a server gone mid-use) is
StateUnavailable, counted, and logged once per outage."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from mailproxy.config import StateSettings
from mailproxy.state import StateUnavailable, make_state
from mailproxy.state_redis import RedisState, display_url
from tests.support.redis import RedisServer

OPERATIONS = {
    "incr": lambda state: state.incr("n", ttl=60),
    "get": lambda state: state.get("k"),
    "set": lambda state: state.set("k", "v", ttl=60),
    "add": lambda state: state.add("k", "v", ttl=60),
    "delete": lambda state: state.delete("k"),
    "incr_and_get": lambda state: state.incr_and_get(["n"], ttl=60, reads=["k"]),
}


@pytest.fixture(scope="module")
def server():
    with RedisServer() as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


def errors(operation: str) -> float:
    labels = {"backend": "redis", "operation": operation}
    return REGISTRY.get_sample_value("mailproxy_state_errors_total", labels) or 0.0


def run(steps, *states: RedisState):
    """Run `steps` in one event loop, closing the states after it."""

    async def main():
        try:
            return await steps()
        finally:
            for state in states:
                await state.close()

    return asyncio.run(main())


def test_keys_live_under_the_prefix_with_their_expiry(server, prefix):
    state = RedisState(server.url, key_prefix=prefix, timeout=5.0)

    async def steps():
        await state.set("value", "v", ttl=60)
        await state.add("added", "a", ttl=30)
        await state.incr("counter", ttl=90)

    run(steps, state)
    raw = server.client()
    assert sorted(raw.keys(f"{prefix}*")) == [f"{prefix}added", f"{prefix}counter", f"{prefix}value"]
    assert raw.get(f"{prefix}counter") == "1"
    for key, ttl in (("value", 60), ("added", 30), ("counter", 90)):
        assert ttl * 1000 - 10_000 < raw.pttl(f"{prefix}{key}") <= ttl * 1000, key


def test_prefixes_keep_states_apart(server, prefix):
    one = RedisState(server.url, key_prefix=prefix + "one:", timeout=5.0)
    other = RedisState(server.url, key_prefix=prefix + "other:", timeout=5.0)

    async def steps():
        await one.set("k", "mine", ttl=60)
        assert await other.get("k") is None
        assert await other.incr("k", ttl=60) == 1
        assert await one.get("k") == "mine"

    run(steps, one, other)


def test_an_increment_keeps_the_expiry_the_counter_was_created_with(server, prefix):
    state = RedisState(server.url, key_prefix=prefix, timeout=5.0)
    raw = server.client()

    async def steps():
        await state.incr("n", ttl=300)
        raw.pexpire(f"{prefix}n", 5000)  # as if most of the window had passed
        assert await state.incr("n", ttl=300) == 2
        assert 0 < raw.pttl(f"{prefix}n") <= 5000

    run(steps, state)


def test_operations_are_atomic_between_processes(server, prefix):
    """Two clients (two worker processes) racing on one counter and one set-if-absent:
    every increment counts once, exactly one add wins."""
    workers = [RedisState(server.url, key_prefix=prefix, timeout=5.0) for _ in range(2)]

    async def steps():
        counts = await asyncio.gather(*(w.incr("n", ttl=60) for w in workers for _ in range(100)))
        added = await asyncio.gather(*(w.add("k", str(i), ttl=60) for i, w in enumerate(workers * 25)))
        return counts, added

    counts, added = run(steps, *workers)
    assert sorted(counts) == list(range(1, 201))
    assert added.count(True) == 1
    assert server.client().pttl(f"{prefix}n") > 0


def test_counts_and_reads_of_one_step_live_under_the_prefix_with_their_expiry(server, prefix):
    state = RedisState(server.url, key_prefix=prefix, timeout=5.0)
    raw = server.client()
    raw.set(f"{prefix}before", "7")

    async def steps():
        assert await state.incr_and_get(["a", "b"], ttl=90, reads=["before", "missing"]) == ([1, 1], ["7", None])
        raw.pexpire(f"{prefix}a", 5000)  # as if most of the window had passed
        assert await state.incr_and_get(["a"], ttl=90, reads=["a", "b"]) == ([2], ["2", "1"])

    run(steps, state)
    assert sorted(raw.keys(f"{prefix}*")) == [f"{prefix}a", f"{prefix}b", f"{prefix}before"]
    assert 0 < raw.pttl(f"{prefix}a") <= 5000  # kept the expiry it had
    assert 80_000 < raw.pttl(f"{prefix}b") <= 90_000


def test_one_steps_counts_are_atomic_between_processes(server, prefix):
    """Counts made together are counted together: no other client's step comes between
    them, so two counters always made together always agree."""
    workers = [RedisState(server.url, key_prefix=prefix, timeout=5.0) for _ in range(2)]

    async def steps():
        return await asyncio.gather(*(w.incr_and_get(["x", "y"], ttl=60, reads=["y"])
                                      for w in workers for _ in range(100)))

    results = run(steps, *workers)
    assert sorted(x for (x, _), _ in results) == list(range(1, 201))
    assert all(x == y and [str(y)] == read for (x, y), read in results)


def test_nothing_listening_is_unavailable_for_every_operation(caplog):
    nowhere = RedisServer()  # a free port, not started
    state = RedisState(nowhere.url, timeout=5.0)
    before = {operation: errors(operation) for operation in OPERATIONS}

    async def steps():
        for operation, call in OPERATIONS.items():
            with pytest.raises(StateUnavailable, match=f"^redis {operation}: "):
                await call(state)

    with caplog.at_level(logging.WARNING, logger="mailproxy.state"):
        run(steps, state)
    assert {operation: errors(operation) - before[operation] for operation in OPERATIONS} == {
        operation: 1.0 for operation in OPERATIONS
    }
    # One line for the outage, not one per operation.
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"state backend redis at {nowhere.url} unavailable (incr: ")


def test_a_server_that_does_not_answer_times_out():
    silent = socket.socket()  # accepts connections (the backlog) and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    state = RedisState(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    before = errors("get")

    async def steps():
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await state.get("k")
        return time.monotonic() - started

    try:
        elapsed = run(steps, state)
    finally:
        silent.close()
    assert errors("get") == before + 1
    assert elapsed < 5  # the timeout (0.3 s), not the socket's default wait


def test_a_refused_command_is_unavailable(server, prefix):
    state = RedisState(server.url, key_prefix=prefix, timeout=5.0)
    before = errors("incr")

    async def steps():
        await state.set("k", "not a number", ttl=60)
        with pytest.raises(StateUnavailable, match="^redis incr: "):
            await state.incr("k", ttl=60)

    run(steps, state)
    assert errors("incr") == before + 1


def test_a_server_gone_mid_use_and_back(caplog, prefix):
    server = RedisServer().start()
    state = RedisState(server.url, key_prefix=prefix, timeout=5.0)
    before = errors("incr")

    async def steps():
        assert await state.incr("n", ttl=60) == 1  # a pooled connection now exists
        server.stop()
        for _ in range(3):
            with pytest.raises(StateUnavailable):
                await state.incr("n", ttl=60)
        server.start()  # same port, empty
        assert await state.incr("n", ttl=60) == 1
        server.stop()
        await state.close()  # closing towards a server that is gone raises nothing

    try:
        with caplog.at_level(logging.WARNING, logger="mailproxy.state"):
            run(steps, state)
    finally:
        server.stop()
    assert errors("incr") == before + 3
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        f"state backend redis at {server.url} unavailable",
        f"state backend redis at {server.url} answers again",
    ]


def test_make_state_builds_the_redis_backend_from_its_settings():
    settings = StateSettings(backend="redis", url="redis://192.0.2.1:6380/2", key_prefix="mx1:", timeout=0.25)
    state = make_state(settings)
    assert isinstance(state, RedisState)
    assert (state.url, state.key_prefix, state.timeout) == ("redis://192.0.2.1:6380/2", "mx1:", 0.25)


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:secret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("rediss://mailproxy:secret@redis.example:6380/1", "rediss://redis.example:6380/1"),
    ("unix:///run/redis/redis.sock?db=0&password=secret", "unix:///run/redis/redis.sock"),
])
def test_urls_are_logged_without_credentials(url, shown):
    assert display_url(url) == shown
