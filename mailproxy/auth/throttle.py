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

    async def reserve(self, address: str, username: str) -> bool:
        """Count this attempt as a failure before the password is checked; False if
        that goes over the limit. Checking first and counting after would let an
        attacker with many parallel sessions try far more than the limit."""
        over = False
        for key in self._keys(address, username):
            count = await self._state.incr(key, self._settings.failure_window)
            over = over or count > self._settings.max_failures
        return not over

    async def release(self, address: str, username: str) -> None:
        """The attempt did not fail (valid, or could not be checked): take it back."""
        for key in self._keys(address, username):
            await self._state.incr(key, self._settings.failure_window, amount=-1)
