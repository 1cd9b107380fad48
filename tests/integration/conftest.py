"""Fixtures for integration tests: real smtp-sink upstreams, a throwaway CA, and
`mailproxy run` as a real process configured per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailproxy.auth.file import hash_password
from tests.support.configs import base_config
from tests.support.proxy import ProxyProcess
from tests.support.servers import SmtpSink
from tests.support.tls import make_ca_and_cert

DROPINS = Path(__file__).parent / "dropins"
USERS = {"alice@example.test": "alice-secret", "bob@example.test": "bob-secret"}


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """(ca, cert, key) paths of a CA and server certificate made for this run."""
    return make_ca_and_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users"
    path.write_text("".join(f"{u}:{hash_password(p)}\n" for u, p in USERS.items()))
    return path


@pytest.fixture
def sink():
    with SmtpSink() as server:
        yield server


@pytest.fixture
def make_proxy(certs, users_file, tmp_path):
    """make_proxy(upstream_address, **section_overrides) -> a started ProxyProcess."""
    started = []

    def make(upstream: str, **overrides) -> ProxyProcess:
        directory = tmp_path / f"proxy{len(started)}"
        directory.mkdir()
        proxy = ProxyProcess(base_config(upstream, certs, users_file, **overrides), directory)
        started.append(proxy)
        return proxy.start()

    yield make
    for proxy in started:
        code = proxy.stop()
        log = proxy.log()
        assert code == 0, f"proxy exited with {code}\n{log}"
        assert log.count("Traceback") == proxy.expected_tracebacks, log


@pytest.fixture
def proxy(sink, make_proxy):
    return make_proxy(sink.address)
