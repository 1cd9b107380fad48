"""Fixtures for the unit tests: no sockets, only files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme


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
