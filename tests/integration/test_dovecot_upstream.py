"""A real SMTP upstream that checks what smtp-sink cannot: Dovecot's submission service
authenticates, takes XCLIENT from trusted networks, and offers STARTTLS. It relays to an
smtp-sink, whose dump shows what was delivered and by whom."""

import smtplib

import pytest

from tests.support.clients import auth_plain, submission_client
from tests.support.dovecot import Dovecot
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

DOVECOT_USERS = {"alice@example.test": "alice-secret", "relay@example.test": "relay-secret"}


def dovecot_listener(certs):
    _, cert, key = certs
    return {
        "name": "submission", "mode": "submission", "tls": "starttls",
        "cert_file": str(cert), "key_file": str(key), "upstream": "sink",
    }


def test_upstream_backend_authenticates_the_paired_session_and_xclient_passes_the_address(
    sink, make_proxy, certs
):
    with Dovecot(DOVECOT_USERS, submission_relay=sink.address) as dovecot:
        proxy = make_proxy(
            sink.address,
            auth={"backends": ["upstream"]},
            upstreams={"sink": {"address": f"127.0.0.1:{dovecot.submission_port}"}},
            listeners=[dovecot_listener(certs)],
        )
        client = smtplib.SMTP("127.0.0.1", proxy.port("submission"), timeout=10, source_address=("127.0.0.5", 0))
        client.ehlo("real-client.test")
        client.starttls(context=client_context(certs[0]))
        client.ehlo("real-client.test")
        assert auth_plain(client, "alice@example.test", "wrong")[0] == 535
        assert auth_plain(client, "alice@example.test", "alice-secret")[0] == 235
        client.sendmail("alice@example.test", ["bob@far.example"], b"Subject: via dovecot\r\n\r\nok\r\n")
        client.quit()
        fields, body = sink.transactions(expected=1)[0]
    # Dovecot relayed it as alice, and its Received header names the real client.
    assert fields["X-Mail-Args"] == ["<alice@example.test> AUTH=alice@example.test"]
    assert body.startswith(b"Received: from real-client.test ([127.0.0.5])")
    assert body.endswith(b"Subject: via dovecot\n\nok\n")


def test_service_credential_over_verified_upstream_starttls(sink, make_proxy, certs):
    ca, cert, key = certs
    # Not a trusted network: Dovecot insists on TLS before the proxy's plaintext AUTH.
    with Dovecot(DOVECOT_USERS, submission_relay=sink.address, tls=(cert, key), trusted_networks="") as dovecot:
        proxy = make_proxy(
            sink.address,
            upstreams={"sink": {
                "address": f"127.0.0.1:{dovecot.submission_port}", "tls": "starttls", "ca_file": str(ca),
                "username": "relay@example.test", "password": "relay-secret",
            }},
            listeners=[dovecot_listener(certs)],
        )
        client = submission_client(proxy, certs, "bob@example.test", "bob-secret")  # file backend
        client.sendmail("bob@example.test", ["carol@far.example"], b"Subject: service\r\n\r\nok\r\n")
        client.quit()
        fields, body = sink.transactions(expected=1)[0]
    assert fields["X-Mail-Args"] == ["<bob@example.test> AUTH=relay@example.test"]
    assert b"with ESMTPSA" in body  # Dovecot saw the proxy's session encrypted and authenticated


def test_upstream_that_requires_auth_refusal_is_relayed(sink, make_proxy, certs):
    with Dovecot(DOVECOT_USERS, submission_relay=sink.address) as dovecot:
        proxy = make_proxy(
            sink.address,
            upstreams={"sink": {"address": f"127.0.0.1:{dovecot.submission_port}"}},
            listeners=[dovecot_listener(certs)],
        )
        # Authenticated at the proxy (file backend), but the upstream knows nothing of it:
        # its own refusal reaches the client unchanged.
        client = submission_client(proxy, certs, "bob@example.test", "bob-secret")
        assert client.mail("bob@example.test") == (530, b"5.7.0 Authentication required.")
        client.quit()


def test_source_address_is_where_the_upstream_sees_the_proxy_come_from(sink, make_proxy, certs):
    # Dovecot trusts only 127.0.0.6 with XCLIENT: the real client's address reaches the
    # Received header only if the proxy's connection comes from there.
    with Dovecot(DOVECOT_USERS, submission_relay=sink.address, trusted_networks="127.0.0.6/32") as dovecot:
        proxy = make_proxy(
            sink.address,
            auth={"backends": ["upstream"]},
            upstreams={"sink": {
                "address": f"127.0.0.1:{dovecot.submission_port}", "source_address": "127.0.0.6",
            }},
            listeners=[dovecot_listener(certs)],
        )
        client = smtplib.SMTP("127.0.0.1", proxy.port("submission"), timeout=10, source_address=("127.0.0.7", 0))
        client.ehlo("real-client.test")
        client.starttls(context=client_context(certs[0]))
        client.ehlo("real-client.test")
        assert auth_plain(client, "alice@example.test", "alice-secret")[0] == 235
        client.sendmail("alice@example.test", ["bob@far.example"], b"Subject: from .6\r\n\r\nok\r\n")
        client.quit()
        _, body = sink.transactions(expected=1)[0]
    assert body.startswith(b"Received: from real-client.test ([127.0.0.7])")
