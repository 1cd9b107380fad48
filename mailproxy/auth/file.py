"""The `file` credential backend: `username:hash` lines, argon2id or bcrypt hashes.

The file is re-read when it changes, so accounts can be edited without a restart.
Hashing is slow by design; it runs in a thread so other sessions keep moving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import argon2
import bcrypt

from ..plugins import hookimpl

log = logging.getLogger("mailproxy.auth.file")
_hasher = argon2.PasswordHasher()


def hash_password(password: str) -> str:
    """A new argon2id hash, the format this backend writes."""
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    if stored.startswith("$argon2"):
        try:
            return _hasher.verify(stored, password)
        except argon2.exceptions.VerifyMismatchError:
            return False
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError) as exc:
            # A damaged stored hash ("Decoding failed", "Output is too short", ...) matches
            # no password; raising here would turn every attempt into a backend failure.
            log.error("unusable argon2 hash in the users file: %s", exc)
            return False
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode())
        except ValueError:
            return False
    return False


def parse_users(text: str, source: str) -> dict[str, str]:
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        username, sep, stored = line.partition(":")
        if not sep or not username or not stored.startswith(("$argon2", "$2a$", "$2b$", "$2y$")):
            raise ValueError(f"{source}:{number}: expected 'username:$argon2id$...' or a bcrypt hash")
        users[username.lower()] = stored
    return users


class FileBackend:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime = -1.0
        self._users: dict[str, str] = {}
        self._reload()

    def _reload(self) -> None:
        mtime = self._path.stat().st_mtime
        if mtime != self._mtime:
            self._users = parse_users(self._path.read_text(encoding="utf-8"), str(self._path))
            self._mtime = mtime

    @hookimpl
    async def authenticate(self, username: str, password: str) -> bool | None:
        try:
            self._reload()
        except (OSError, ValueError) as exc:  # keep the last good copy
            log.error("users file: %s", exc)
        stored = self._users.get(username.lower())
        if stored is None:
            return None
        return await asyncio.to_thread(verify_password, stored, password)
