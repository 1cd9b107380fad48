"""A throwaway CA and server certificate per test run (trustme), and a client context."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

HOSTNAMES = ("localhost", "127.0.0.1", "mailproxy.localdomain")


def make_ca_and_cert(directory: str | Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, cert.pem (leaf + chain) and key.pem into `directory`; return their paths."""
    directory = Path(directory)
    ca = trustme.CA()
    cert = ca.issue_cert(*HOSTNAMES)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    return ca_path, cert_path, key_path


def client_context(ca_path: str | Path) -> ssl.SSLContext:
    """A client context that verifies server certificates against that CA only."""
    return ssl.create_default_context(cafile=str(ca_path))
