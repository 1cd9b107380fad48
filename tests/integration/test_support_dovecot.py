"""The Dovecot harness itself: submission relaying to smtp-sink, IMAP, POP3, XCLIENT."""

import base64
import imaplib
import poplib
import smtplib

import pytest

from tests.support.dovecot import Dovecot
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

USERS = {"alice@example.test": "alice-pw"}
MESSAGE = b"Subject: via dovecot\r\nFrom: alice@example.test\r\n\r\nhello\r\n"


@pytest.fixture
def dovecot(sink, certs):
    _, cert, key = certs
    with Dovecot(USERS, submission_relay=sink.address, tls=(cert, key)) as server:
        yield server


@pytest.fixture
def tls_context(certs):
    return client_context(certs[0])


def test_submission_starttls_login_relays_to_the_sink(dovecot, sink, tls_context):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.starttls(context=tls_context)
        client.login("alice@example.test", "alice-pw")
        client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    [body] = sink.bodies(expected=1)
    # Dovecot prepends its own Received header; the message follows unchanged.
    assert body.startswith(b"Received: from ")
    assert body.endswith(MESSAGE.replace(b"\r\n", b"\n"))


def test_submissions_port_speaks_implicit_tls(dovecot, sink, tls_context):
    with smtplib.SMTP_SSL("127.0.0.1", dovecot.submissions_port, timeout=10,
                          context=tls_context) as client:
        client.login("alice@example.test", "alice-pw")
        client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    assert len(sink.bodies(expected=1)) == 1


def test_submission_bad_password_is_535(dovecot, tls_context):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.starttls(context=tls_context)
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice@example.test", "wrong")
    assert (failed.value.smtp_code, failed.value.smtp_error) == (535, b"5.7.8 Authentication failed.")


def test_submission_without_auth_is_530(dovecot, sink, tls_context):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.starttls(context=tls_context)
        client.ehlo()
        assert client.mail("alice@example.test") == (530, b"5.7.0 Authentication required.")
    assert sink.messages() == []


def test_no_plaintext_auth_before_starttls_from_an_untrusted_address(dovecot):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10,
                      source_address=("127.0.0.3", 0)) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].strip() == ""  # "250-AUTH " with no mechanisms
        assert "xclient" not in client.esmtp_features
        credentials = base64.b64encode(b"\0alice@example.test\0alice-pw").decode()
        code, reply = client.docmd("AUTH", f"PLAIN {credentials}")
        assert (code, reply) == (523, b"5.7.10 Plaintext authentication disabled.")


def test_xclient_from_a_trusted_network_sets_the_client_address(dovecot, sink):
    with smtplib.SMTP("127.0.0.1", dovecot.submission_port, timeout=10) as client:
        client.ehlo("proxy.test")
        assert client.esmtp_features["xclient"] == "ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"
        code, reply = client.docmd("XCLIENT", "ADDR=192.0.2.7 LOGIN=alice@example.test")
        assert code == 220  # a new greeting, as Postfix does
        client.ehlo("real-client.test")
        # LOGIN= does not authenticate the session.
        assert client.mail("alice@example.test")[0] == 530
        # No STARTTLS needed: a client from the trusted networks counts as secured.
        client.login("alice@example.test", "alice-pw")
        client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    [body] = sink.bodies(expected=1)
    assert body.startswith(b"Received: from real-client.test ([192.0.2.7])\n\tby dovecot.test with ESMTPA\n")
    assert "rip=192.0.2.7" in dovecot.log()


def test_imap_login(dovecot, tls_context):
    with imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10) as client:
        client.starttls(tls_context)
        assert client.login("alice@example.test", "alice-pw")[0] == "OK"
        assert client.select("INBOX") == ("OK", [b"0"])
        client.logout()


def test_pop3_login(dovecot, tls_context):
    client = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=10)
    try:
        client.stls(tls_context)
        client.user("alice@example.test")
        assert client.pass_("alice-pw").startswith(b"+OK")
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()


@pytest.mark.parametrize("trusted_networks, allowed", [("", False), ("127.0.0.1/32", True)])
def test_plaintext_login_without_tls_only_from_trusted_networks(trusted_networks, allowed):
    # On 127.0.0.2, so that a client from 127.0.0.1 is not at Dovecot's own address,
    # which would count as secured whatever the trusted networks.
    with Dovecot(USERS, listen="127.0.0.2", trusted_networks=trusted_networks) as server:
        assert (server.submission_port, server.submissions_port) == (None, None)
        with imaplib.IMAP4("127.0.0.2", server.imap_port, timeout=10) as client:
            assert "STARTTLS" not in client.capabilities
            if allowed:
                assert client.login("alice@example.test", "alice-pw")[0] == "OK"
            else:
                assert "LOGINDISABLED" in client.capabilities
                with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
                    client.login("alice@example.test", "alice-pw")
            client.logout()
        directory = server.dir
    assert not directory.exists()
    assert server.process.poll() is not None


def test_a_failing_dovecot_raises_with_its_log():
    server = Dovecot(USERS, tls=("/nonexistent/cert.pem", "/nonexistent/key.pem"))
    with pytest.raises(RuntimeError, match="Can't open file /nonexistent/cert.pem"):
        server.start()
    assert server.dir is None  # the temp dir is gone too
