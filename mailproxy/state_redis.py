"""Shared state in Redis: one set of counters and values for every worker process and
every proxy instance pointed at the same server.

Each operation is one atomic step at the server (a command, or a MULTI/EXEC
transaction), so processes racing on one key never lose an update. Each has
`timeout` seconds, connecting included; an operation that fails for any reason raises
`StateUnavailable`, is counted in `mailproxy_state_errors_total`, and is not retried:
a retried increment might count twice. The first failure after a success, and the
first success after a failure, are logged, not every failed operation.

The client is made on first use, inside the process and event loop that use it: the
application is built before the worker processes are forked, and they must not share
connections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from typing import Any, Awaitable, Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import metrics
from .state import SharedState, StateUnavailable

BACKEND = "redis"
log = logging.getLogger("mailproxy.state")


def _queue_count(pipe, key: str, expiry_ms: int, amount: int) -> None:
    """Queue on a transaction's pipeline adding `amount` to counter `key` (two replies):
    it is created at 0 with its expiry if it is missing, then added to; an existing
    counter keeps its expiry."""
    pipe.set(key, 0, px=expiry_ms, nx=True)
    pipe.incrby(key, amount)


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def display_url(url: str) -> str:
    """`url` fit for a log line: no credentials, no query (which may hold a password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class RedisState(SharedState):
    def __init__(self, url: str, key_prefix: str = "mailproxy:", timeout: float = 1.0) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.timeout = timeout
        self._client: Redis | None = None
        self._available = True  # as last seen; only its changes are logged

    def _redis(self) -> Redis:
        if self._client is None:
            self._client = Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    async def _run(self, operation: str, call: Callable[[Redis], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                result = await call(self._redis())
        except (RedisError, OSError) as exc:  # OSError: TimeoutError and socket errors
            metrics.child(metrics.state_errors, BACKEND, operation).inc()
            reason = str(exc) or type(exc).__name__
            if self._available:
                self._available = False
                log.warning("state backend redis at %s unavailable (%s: %s); each caller's fail mode "
                            "applies until it answers again", display_url(self.url), operation, reason)
            raise StateUnavailable(f"redis {operation}: {reason}") from None
        if not self._available:
            self._available = True
            log.warning("state backend redis at %s answers again", display_url(self.url))
        return result

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        key = self.key_prefix + key

        async def create_then_add(redis: Redis) -> int:
            async with redis.pipeline(transaction=True) as pipe:
                _queue_count(pipe, key, _milliseconds(ttl), amount)
                _created, value = await pipe.execute()
            return int(value)

        return await self._run("incr", create_then_add)

    async def incr_and_get(
        self, counters: Sequence[str], ttl: float, reads: Sequence[str]
    ) -> tuple[list[int], list[str | None]]:
        prefix, expiry = self.key_prefix, _milliseconds(ttl)

        async def in_one_transaction(redis: Redis) -> tuple[list[int], list[str | None]]:
            # Each counter as `incr` makes it, and the reads after them: one round trip.
            async with redis.pipeline(transaction=True) as pipe:
                for key in counters:
                    _queue_count(pipe, prefix + key, expiry, 1)
                for key in reads:
                    pipe.get(prefix + key)
                replies = await pipe.execute()
            added = 2 * len(counters)
            return [int(value) for value in replies[1:added:2]], replies[added:]

        return await self._run("incr_and_get", in_one_transaction)

    async def get(self, key: str) -> str | None:
        return await self._run("get", lambda redis: redis.get(self.key_prefix + key))

    async def set(self, key: str, value: str, ttl: float) -> None:
        await self._run("set", lambda redis: redis.set(self.key_prefix + key, value, px=_milliseconds(ttl)))

    async def add(self, key: str, value: str, ttl: float) -> bool:
        stored = await self._run(
            "add", lambda redis: redis.set(self.key_prefix + key, value, px=_milliseconds(ttl), nx=True)
        )
        return bool(stored)

    async def delete(self, key: str) -> None:
        await self._run("delete", lambda redis: redis.delete(self.key_prefix + key))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass  # closing connections to a server that is gone
