"""An IMAP upstream that stops answering after the login: the client hears so within the
upstream's reply_timeout, not after its own idle timeout."""

from __future__ import annotations

import time

import pytest

from tests.support.dovecot import Dovecot
from tests.support.latency_relay import LatencyRelay
from tests.support.mailstore_clients import ImapRaw
from tests.support.scripted_imap import ScriptedImap
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

REPLY_TIMEOUT = 1.5
USERS = {"alice@example.test": "alice-secret"}


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


# --- against Dovecot: what the upstream does not owe yet is no silence --------------------

@pytest.fixture
def dovecot():
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32") as server:
        server.seed("alice@example.test", [b"From: a@example.test\r\nSubject: s\r\n\r\nbody\r\n"])
        yield server


def proxy_before_dovecot(make_proxy, certs, address: str):
    _, cert, key = certs
    return make_proxy(
        address,
        upstreams={"store": {
            "address": address, "source_address": "127.0.0.5", "connect_timeout": 3.0,
            "reply_timeout": REPLY_TIMEOUT,
        }},
        listeners=[{
            "name": "imap", "protocol": "imap", "tls": "starttls", "upstream": "store",
            "cert_file": str(cert), "key_file": str(key), "idle_timeout": 60.0,
        }],
    )


def logged_in(proxy, certs) -> ImapRaw:
    client = ImapRaw("127.0.0.1", proxy.port("imap"))
    client.line()
    client.starttls(client_context(certs[0]))
    assert client.command(b"a1 LOGIN alice@example.test alice-secret")[-1].startswith(b"a1 OK")
    return client


@pytest.mark.parametrize("marker", [b"", b"+"], ids=["sync", "nonsync"])
def test_an_upload_slower_than_reply_timeout_is_stored(make_proxy, dovecot, certs, marker):
    proxy = proxy_before_dovecot(make_proxy, certs, f"127.0.0.2:{dovecot.imap_port}")
    body = b"From: x@example.test\r\nSubject: slow\r\n\r\n" + (b"x" * 998 + b"\r\n") * 100
    chunks = [body[at:at + 20000] for at in range(0, len(body), 20000)]
    with logged_in(proxy, certs) as client:
        client.send(b"a2 APPEND INBOX {%d%s}\r\n" % (len(body), marker))
        if not marker:
            assert client.line().startswith(b"+ ")
        started = time.monotonic()
        for chunk in chunks:  # the client keeps sending, for longer than reply_timeout
            client.send(chunk)
            time.sleep(2 * REPLY_TIMEOUT / len(chunks))
        client.send(b"\r\n")
        uploading = time.monotonic() - started
        assert client.until_tagged(b"a2")[-1].startswith(b"a2 OK")
    assert uploading > REPLY_TIMEOUT
    assert proxy.metric("mailproxy_upstream_failures_total") == 0
    # The upstream's round trip counts from the command's last byte, not its first.
    assert proxy.metric("mailproxy_upstream_duration_seconds_sum", command="APPEND") < uploading / 2


def test_done_after_an_idle_longer_than_reply_timeout_is_answered(make_proxy, dovecot, certs):
    # Through a relay that delays every answer: DONE's OK arrives a moment later, as from
    # an upstream that is not on this host.
    with LatencyRelay(f"127.0.0.2:{dovecot.imap_port}", delay=0.1) as relay:
        proxy = proxy_before_dovecot(make_proxy, certs, relay.address)
        with logged_in(proxy, certs) as client:
            assert client.command(b"a2 SELECT INBOX")[-1].startswith(b"a2 OK")
            client.send(b"a3 IDLE\r\n")
            assert client.line().startswith(b"+ ")
            time.sleep(2 * REPLY_TIMEOUT)  # Dovecot says nothing meanwhile: no new mail
            client.send(b"DONE\r\n")
            assert client.until_tagged(b"a3")[-1].startswith(b"a3 OK")
    assert proxy.metric("mailproxy_upstream_failures_total") == 0
