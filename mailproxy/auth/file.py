"""The `file` credential backend: `username:hash` lines, argon2id or bcrypt hashes.

The file is re-read when it changes, so accounts can be edited without a restart.
Hashing is slow by design; it runs in a thread so other sessions keep moving. A login
that is not in the file is checked against a stand-in hash of the file's usual scheme
and cost, so that its answer takes as long as a wrong password's and the time does not
tell which users exist.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
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


def hash_settings(stored: str) -> str:
    """What fixes the cost of checking against a hash: its scheme and parameters."""
    if stored.startswith("$argon2"):
        return stored.rsplit("$", 2)[0]  # $argon2id$v=19$m=65536,t=3,p=4
    return stored[:7]  # $2b$12$


def typical_hash(hashes: list[str]) -> str | None:
    """One of `hashes` with the most common scheme and cost (None for none)."""
    if not hashes:
        return None
    settings, _ = Counter(map(hash_settings, hashes)).most_common(1)[0]
    return next(stored for stored in hashes if hash_settings(stored) == settings)


def stand_in_hash(like: str | None) -> str:
    """A hash of a random secret with the scheme and cost of `like`: checking any
    password against it takes as long as against `like`, and never succeeds. The
    default argon2id settings when there is no `like`, or it cannot be read."""
    secret = secrets.token_urlsafe(24)
    try:
        if like is not None and like.startswith("$argon2"):
            hasher = argon2.PasswordHasher.from_parameters(argon2.extract_parameters(like))
            return hasher.hash(secret)
        if like is not None:
            rounds = int(like.split("$")[2])
            return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds)).decode()
    except (ValueError, IndexError):  # a damaged hash: InvalidHashError is a ValueError
        pass
    return _hasher.hash(secret)


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
        self._typical: str | None = None  # a hash of the file's most common scheme and cost
        self._stand_in: tuple[str | None, str] | None = None  # (settings it imitates, hash)
        self._reload()
        self._stand_in_hash()  # made now, so the first unknown login is not slower

    def _reload(self) -> None:
        mtime = self._path.stat().st_mtime
        if mtime != self._mtime:
            self._users = parse_users(self._path.read_text(encoding="utf-8"), str(self._path))
            self._typical = typical_hash(list(self._users.values()))
            self._mtime = mtime

    def _stand_in_hash(self) -> str:
        """The stand-in for the current file's usual hash, made again if that changed."""
        settings = None if self._typical is None else hash_settings(self._typical)
        if self._stand_in is None or self._stand_in[0] != settings:
            self._stand_in = (settings, stand_in_hash(self._typical))
        return self._stand_in[1]

    def _check_unknown(self, password: str) -> None:
        """Spend the time that checking a known user's password costs."""
        verify_password(self._stand_in_hash(), password)

    @hookimpl
    async def authenticate(self, username: str, password: str) -> bool | None:
        try:
            self._reload()
        except (OSError, ValueError) as exc:  # keep the last good copy
            log.error("users file: %s", exc)
        stored = self._users.get(username.lower())
        if stored is None:
            await asyncio.to_thread(self._check_unknown, password)
            return None  # not ours to judge: a later backend may know the user
        return await asyncio.to_thread(verify_password, stored, password)
