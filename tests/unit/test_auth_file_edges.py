"""The file auth backend at its edges: a users file with nobody in it yet, one dated at
the epoch, the hash an unknown user is checked against (made once, and again when the
file changes scheme), and the backend as the `authenticate` hook it is registered for."""

from __future__ import annotations

import asyncio
import os

import bcrypt
import pytest

import mailproxy.auth.file as file_backend
from mailproxy.auth.file import FileBackend, hash_password, hash_settings
from mailproxy.plugins import new_plugin_manager


def authenticate(backend: FileBackend, username: str, password: str):
    return asyncio.run(backend.authenticate(username=username, password=password))


@pytest.fixture(scope="module")
def bcrypt_hash() -> str:
    return bcrypt.hashpw(b"battery staple", bcrypt.gensalt(rounds=4)).decode()


def test_a_users_file_with_only_comments_starts_and_knows_nobody(tmp_path):
    users = tmp_path / "users"
    users.write_text("# no users yet\n\n")
    backend = FileBackend(users)
    assert authenticate(backend, "alice", "secret") is None


@pytest.mark.parametrize("mtime", [0, 1])  # reproducible builds date files 0; Nix's store, 1
def test_a_users_file_dated_at_the_start_of_the_epoch_is_read(tmp_path, bcrypt_hash, mtime):
    users = tmp_path / "users"
    users.write_text(f"bob:{bcrypt_hash}\n")
    os.utime(users, (mtime, mtime))
    assert authenticate(FileBackend(users), "bob", "battery staple") is True


def test_an_unknown_user_costs_what_the_files_current_scheme_costs(tmp_path, bcrypt_hash, monkeypatch):
    checked = []
    verify = file_backend.verify_password

    def recording(stored: str, password: str) -> bool:
        checked.append(hash_settings(stored))
        return verify(stored, password)

    monkeypatch.setattr(file_backend, "verify_password", recording)
    users = tmp_path / "users"
    users.write_text(f"bob:{bcrypt_hash}\n")
    backend = FileBackend(users)
    assert authenticate(backend, "nobody", "guess") is None
    assert checked[-1] == "$2b$04$"

    users.write_text(f"alice:{hash_password('correct horse')}\n")
    stat = users.stat()
    os.utime(users, (stat.st_atime, stat.st_mtime + 10))
    assert authenticate(backend, "nobody", "guess") is None
    assert checked[-1] == "$argon2id$v=19$m=65536,t=3,p=4"


def test_the_stand_in_hash_is_made_once_per_scheme_not_once_per_attempt(tmp_path, bcrypt_hash, monkeypatch):
    made = []
    stand_in_hash = file_backend.stand_in_hash
    monkeypatch.setattr(file_backend, "stand_in_hash", lambda like: made.append(like) or stand_in_hash(like))
    users = tmp_path / "users"
    users.write_text(f"bob:{bcrypt_hash}\n")
    backend = FileBackend(users)
    for _ in range(3):
        assert authenticate(backend, "nobody", "guess") is None
    assert made == [bcrypt_hash]


def test_the_backend_answers_the_authenticate_hook(tmp_path, bcrypt_hash):
    users = tmp_path / "users"
    users.write_text(f"bob:{bcrypt_hash}\n")
    manager = new_plugin_manager()
    manager.register(FileBackend(users), name="auth:file")
    assert len(manager.hook.authenticate.get_hookimpls()) == 1
