"""SASL decoding, password hashes, the users file and its backend."""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time

import argon2
import bcrypt
import pytest

from mailproxy.auth.file import (
    FileBackend,
    hash_password,
    hash_settings,
    parse_users,
    stand_in_hash,
    typical_hash,
    verify_password,
)
from mailproxy.auth.sasl import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USER_CHALLENGE,
    MECHANISMS,
    SaslError,
    decode_response,
    parse_plain,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- sasl --------------------------------------------------------------------------------


def test_login_challenges_and_mechanisms():
    assert MECHANISMS == ("PLAIN", "LOGIN")
    assert decode_response(LOGIN_USER_CHALLENGE) == "Username:"
    assert decode_response(LOGIN_PASSWORD_CHALLENGE) == "Password:"


@pytest.mark.parametrize(
    "blob, text",
    [
        ("=", ""),
        (b64(b"alice"), "alice"),
        (b64("jürgen".encode()), "jürgen"),
        (b64(b"\0alice\0secret"), "\0alice\0secret"),
        ("", ""),
    ],
)
def test_decode_response(blob, text):
    assert decode_response(blob) == text


@pytest.mark.parametrize("blob", ["!!!!", "YWxpY2U", "YW xp", b64(b"\xff\xfe"), "Zm9v\n", "é"])
def test_decode_response_rejects(blob):
    with pytest.raises(SaslError) as info:
        decode_response(blob)
    assert str(info.value) == "Invalid base64 data"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "response, credentials",
    [
        ("\0alice\0secret", ("alice", "secret")),
        ("alice\0alice\0secret", ("alice", "secret")),
        ("\0alice\0", ("alice", "")),
        ("\0alice\0pass word:with:colons", ("alice", "pass word:with:colons")),
    ],
)
def test_parse_plain(response, credentials):
    assert parse_plain(response) == credentials


@pytest.mark.parametrize(
    "response, message",
    [
        ("bob\0alice\0secret", "Authorization identity must match the login"),
        ("\0\0secret", "Malformed PLAIN response"),
        ("alice\0secret", "Malformed PLAIN response"),
        ("\0alice\0sec\0ret", "Malformed PLAIN response"),
        ("", "Malformed PLAIN response"),
    ],
)
def test_parse_plain_errors(response, message):
    with pytest.raises(SaslError) as info:
        parse_plain(response)
    assert str(info.value) == message


# --- hashes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def argon2_hash() -> str:
    return hash_password("correct horse")


@pytest.fixture(scope="module")
def bcrypt_hash() -> str:
    return bcrypt.hashpw(b"battery staple", bcrypt.gensalt(rounds=4)).decode()


def test_hash_password_is_argon2id(argon2_hash):
    assert argon2_hash.startswith("$argon2id$v=19$")
    assert hash_password("correct horse") != argon2_hash  # salted


def test_verify_argon2(argon2_hash):
    assert verify_password(argon2_hash, "correct horse") is True
    assert verify_password(argon2_hash, "correct horsE") is False
    assert verify_password(argon2_hash, "") is False


@pytest.mark.parametrize("prefix", ["$2b$", "$2a$", "$2y$"])
def test_verify_bcrypt(bcrypt_hash, prefix):
    stored = prefix + bcrypt_hash[4:]
    assert verify_password(stored, "battery staple") is True
    assert verify_password(stored, "battery stapler") is False


@pytest.mark.parametrize(
    "stored",
    [
        "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
        "plaintext",
        "",
        "$1$salt$hash",
        "$2b$04$short",
        "$argon2id$",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$AAAA",
        "$argon2id$v=19$m=1,t=3,p=4$c2FsdHNhbHRzYWx0$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo",
    ],
)
def test_unusable_hashes_never_match_and_never_raise(stored):
    assert verify_password(stored, "anything") is False


def test_corrupted_argon2_hash_is_false(argon2_hash):
    assert verify_password(argon2_hash[:-5], "correct horse") is False


# --- users file --------------------------------------------------------------------------


def test_parse_users(argon2_hash, bcrypt_hash):
    text = (
        "# accounts\n"
        "\n"
        f"Alice@Example.Test:{argon2_hash}\n"
        f"   bob:{bcrypt_hash}   \n"
        "  # indented comment\n"
    )
    assert parse_users(text, "users") == {"alice@example.test": argon2_hash, "bob": bcrypt_hash}


@pytest.mark.parametrize(
    "bad_line",
    ["alice", "alice:secret", ":$argon2id$v=19$x", "alice:{SHA}abc", "alice $argon2id$v=19$x"],
)
def test_parse_users_error_names_file_and_line(argon2_hash, bad_line):
    text = f"# header\nok:{argon2_hash}\n{bad_line}\n"
    with pytest.raises(ValueError) as info:
        parse_users(text, "/etc/mailproxy/users")
    assert str(info.value) == (
        "/etc/mailproxy/users:3: expected 'username:$argon2id$...' or a bcrypt hash"
    )


def write_users(path, text: str, bump: float) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + bump))


def authenticate(backend: FileBackend, username: str, password: str):
    return asyncio.run(backend.authenticate(username=username, password=password))


def test_file_backend_checks_and_reloads(tmp_path, argon2_hash, bcrypt_hash):
    users = tmp_path / "users"
    write_users(users, f"alice:{argon2_hash}\n", bump=0)
    backend = FileBackend(users)
    assert authenticate(backend, "alice", "correct horse") is True
    assert authenticate(backend, "ALICE", "correct horse") is True  # usernames ignore case
    assert authenticate(backend, "alice", "wrong") is False
    assert authenticate(backend, "bob", "battery staple") is None  # not ours to judge

    write_users(users, f"bob:{bcrypt_hash}\n", bump=10)
    assert authenticate(backend, "bob", "battery staple") is True
    assert authenticate(backend, "alice", "correct horse") is None

    # A broken edit keeps the last good copy.
    write_users(users, "bob:plaintext\n", bump=20)
    assert authenticate(backend, "bob", "battery staple") is True

    # A removed file too.
    users.unlink()
    assert authenticate(backend, "bob", "battery staple") is True

    write_users(users, f"carol:{argon2_hash}\n", bump=30)
    assert authenticate(backend, "carol", "correct horse") is True
    assert authenticate(backend, "bob", "battery staple") is None


def test_file_backend_does_not_reread_an_unchanged_file(tmp_path, argon2_hash):
    users = tmp_path / "users"
    write_users(users, f"alice:{argon2_hash}\n", bump=0)
    backend = FileBackend(users)
    mtime = users.stat().st_mtime
    users.write_text("garbage that would not parse\n")
    os.utime(users, (mtime, mtime))  # same mtime: not reread
    assert authenticate(backend, "alice", "correct horse") is True


def test_file_backend_start_with_a_broken_file_fails(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    with pytest.raises(ValueError, match=f"^{users}:1: expected"):
        FileBackend(users)


# --- unknown users -----------------------------------------------------------------------


def test_typical_hash_is_one_of_the_most_common_scheme_and_cost(argon2_hash, bcrypt_hash):
    other_bcrypt = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()
    assert typical_hash([argon2_hash, bcrypt_hash, other_bcrypt]) == bcrypt_hash
    assert typical_hash([argon2_hash]) == argon2_hash
    assert typical_hash([]) is None
    assert hash_settings(argon2_hash) == "$argon2id$v=19$m=65536,t=3,p=4"
    assert hash_settings(bcrypt_hash) == "$2b$04$"


def test_stand_in_hash_has_the_scheme_and_cost_it_imitates(bcrypt_hash):
    like = argon2.PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1, salt_len=8).hash("x")
    stand_in = stand_in_hash(like)
    assert argon2.extract_parameters(stand_in) == argon2.extract_parameters(like)
    assert verify_password(stand_in, "x") is False
    assert hash_settings(stand_in_hash(bcrypt_hash)) == "$2b$04$"
    default = argon2.extract_parameters(hash_password("x"))
    assert argon2.extract_parameters(stand_in_hash(None)) == default
    assert argon2.extract_parameters(stand_in_hash("$2b$99$damaged")) == default
    assert argon2.extract_parameters(stand_in_hash("$argon2id$v=19$damaged")) == default


def median_check_seconds(backend: FileBackend, username: str, calls: int = 5) -> float:
    async def timed() -> list[float]:
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            await backend.authenticate(username=username, password="not the password")
            seconds.append(time.perf_counter() - start)
        return seconds

    return statistics.median(asyncio.run(timed()))


@pytest.mark.parametrize(
    "make_hash",
    [
        argon2.PasswordHasher(time_cost=2, memory_cost=16384, parallelism=1).hash,
        lambda password: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode(),
    ],
    ids=["argon2id", "bcrypt"],
)
def test_unknown_user_costs_as_much_as_a_wrong_password(tmp_path, make_hash):
    users = tmp_path / "users"
    write_users(users, f"alice:{make_hash('secret')}\nbob:{make_hash('other')}\n", bump=0)
    backend = FileBackend(users)
    assert authenticate(backend, "mallory", "secret") is None  # still not ours to judge
    known = median_check_seconds(backend, "alice")
    unknown = median_check_seconds(backend, "mallory")
    # The same work either way; the factor only absorbs a busy machine's noise. Without
    # the stand-in hash an unknown user answers in well under a tenth of the time.
    assert known / 3 < unknown < known * 3, (known, unknown)
