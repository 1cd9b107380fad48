"""Whether code under test let the event loop run: count the turns another coroutine
got while it was awaited."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


async def counting_ticks(awaitable: Awaitable[Any], interval: float = 0.0) -> tuple[Any, int]:
    """`awaitable`'s result, and how often a coroutine sleeping `interval` seconds at a
    time woke up meanwhile: 0 when the awaitable never gave the loop a turn."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(interval)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        return await awaitable, ticks
    finally:
        ticker.cancel()
