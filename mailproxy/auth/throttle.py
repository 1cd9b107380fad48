"""Counting failed AUTH attempts per client address and per account.

Counters live in the shared state, so every worker process (and every proxy instance
with a shared backend) sees the same totals.
"""

from __future__ import annotations

from ..config import AuthSettings
from ..state import SharedState


class AuthThrottle:
    def __init__(self, settings: AuthSettings, state: SharedState) -> None:
        self._settings = settings
        self._state = state

    @staticmethod
    def _keys(address: str, username: str | None) -> list[str]:
        keys = [f"authfail:addr:{address}"]
        if username:
            keys.append(f"authfail:user:{username.lower()}")
        return keys

    async def blocked(self, address: str, username: str | None = None) -> bool:
        for key in self._keys(address, username):
            count = await self._state.get(key)
            if count is not None and int(count) >= self._settings.max_failures:
                return True
        return False

    async def failed(self, address: str, username: str | None) -> None:
        for key in self._keys(address, username):
            await self._state.incr(key, self._settings.failure_window)
