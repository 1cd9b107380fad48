"""An IMAP upstream that stops answering after the login: the client hears so within the
upstream's reply_timeout, not after its own idle timeout."""

from __future__ import annotations

import time

import pytest

from tests.support.mailstore_clients import ImapRaw
from tests.support.scripted_imap import ScriptedImap

pytestmark = pytest.mark.integration

REPLY_TIMEOUT = 1.5


@pytest.fixture
def stalling_store():
    # SELECT is answered; FETCH never is.
    with ScriptedImap({b"SELECT": b"* 1 EXISTS\r\n{tag} OK [READ-WRITE] Select completed.\r\n"}) as store:
        yield store


def proxy_before(make_proxy, store):
    return make_proxy(
        store.address,
        upstreams={"store": {
            "address": store.address, "client_identity": "none", "connect_timeout": 3.0,
            "reply_timeout": REPLY_TIMEOUT,
        }},
        listeners=[{
            "name": "imap", "protocol": "imap", "upstream": "store", "allow_plaintext_auth": True,
            "idle_timeout": 60.0,
        }],
    )


def test_an_upstream_that_never_answers_a_command_ends_the_session(make_proxy, stalling_store):
    proxy = proxy_before(make_proxy, stalling_store)
    with ImapRaw("127.0.0.1", proxy.port("imap")) as client:
        client.line()
        assert client.command(b"a1 LOGIN alice@example.test alice-secret")[-1].startswith(b"a1 OK")
        assert client.command(b"a2 SELECT INBOX")[-1].startswith(b"a2 OK")
        asked = time.monotonic()
        client.send(b"a3 FETCH 1 (FLAGS)\r\n")
        rest = client.until_closed()
        waited = time.monotonic() - asked
    assert rest == b"* BYE [UNAVAILABLE] Upstream failure, closing connection.\r\n"
    assert REPLY_TIMEOUT <= waited < 30  # the upstream's timeout, far below the client's 60 s
    assert stalling_store.closed.wait(10)
    assert proxy.metric("mailproxy_upstream_failures_total", upstream="store", stage="timeout") == 1


def test_a_quiet_upstream_owing_nothing_is_no_failure(make_proxy, stalling_store):
    proxy = proxy_before(make_proxy, stalling_store)
    with ImapRaw("127.0.0.1", proxy.port("imap")) as client:
        client.line()
        client.command(b"a1 LOGIN alice@example.test alice-secret")
        assert client.command(b"a2 SELECT INBOX")[-1].startswith(b"a2 OK")
        time.sleep(REPLY_TIMEOUT * 2)  # nothing owed: silence is fine
        assert client.command(b"a3 SELECT INBOX")[-1].startswith(b"a3 OK")
    assert proxy.metric("mailproxy_upstream_failures_total", upstream="store") == 0
