"""The AUTH throttle when a check outlives its window: the attempt is given back after
its count expired, and the next attempt from that network is not delayed for it."""

from __future__ import annotations

import asyncio

from mailproxy.auth.throttle import AuthThrottle
from mailproxy.config import AuthSettings
from mailproxy.state import MemoryState


def test_an_attempt_given_back_after_its_window_costs_the_next_one_nothing():
    now = [0.0]
    throttle = AuthThrottle(AuthSettings(backends=[], max_failures=3, failure_window=60),
                            MemoryState(clock=lambda: now[0]))

    async def scenario():
        slow = await throttle.reserve("192.0.2.1")
        now[0] = 61.0  # the password check outlived the window
        await throttle.release(slow)  # the password was right
        return await throttle.reserve("192.0.2.1")

    following = asyncio.run(scenario())
    assert (following.delay, following.allowed) == (0.0, True)


def test_an_attempt_given_back_after_its_window_gives_no_extra_attempt():
    now = [0.0]
    throttle = AuthThrottle(AuthSettings(backends=[], max_failures=3, failure_window=60),
                            MemoryState(clock=lambda: now[0]))

    async def scenario():
        slow = await throttle.reserve("192.0.2.1")
        now[0] = 61.0
        await throttle.release(slow)
        return [(await throttle.reserve("192.0.2.1")).allowed for _ in range(4)]

    assert asyncio.run(scenario()) == [True, True, True, False]
