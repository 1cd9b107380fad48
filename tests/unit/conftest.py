"""Fixtures for the unit tests: no proxy process; files in tmp_path, and real DNS and
Redis servers on loopback for the plugins and state backends that need them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.support.redis import RedisServer


@pytest.fixture(scope="session")
def _unit_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_pair(tmp_path: Path, _unit_ca: trustme.CA) -> tuple[Path, Path]:
    """A throwaway server certificate (chain) and key, as cert.pem / key.pem in tmp_path."""
    cert = _unit_ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on loopback, for one test module."""
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def backend(request, redis_server):
    """Each test once per shared-state backend."""
    return request.param
