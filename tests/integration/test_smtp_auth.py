"""Submission: STARTTLS, AUTH PLAIN/LOGIN against the file backend, and its throttle."""

import smtplib

import pytest

from tests.support.clients import auth_plain, connect, submission_client
from tests.support.configs import base_config
from tests.support.servers import run_swaks

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_with_starttls_and_auth(proxy, sink, certs, mechanism):
    client = submission_client(proxy, certs)
    client.user, client.password = "alice@example.test", "alice-secret"
    assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
    authenticator = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login}[mechanism]
    assert client.auth(mechanism, authenticator) == (235, b"2.7.0 Authentication successful")
    # Authenticated users may relay anywhere.
    client.sendmail("alice@example.test", ["friend@elsewhere.example"], b"Subject: s\r\n\r\nhi\r\n")
    client.quit()
    fields, body = sink.transactions(expected=1)[0]
    assert fields["X-Rcpt-Args"] == ["<friend@elsewhere.example>"]
    assert body == b"Subject: s\n\nhi\n"
    assert proxy.metric("mailproxy_auth_attempts_total", mechanism=mechanism, result="success") == 1


def test_mail_without_auth_is_refused_on_submission(proxy, sink, certs):
    client = submission_client(proxy, certs)
    assert client.mail("alice@example.test") == (530, b"5.7.0 Authentication required")
    client.quit()


def test_auth_is_neither_offered_nor_accepted_before_tls(proxy):
    with connect(proxy, "submission") as client:
        client.ehlo("client.test")
        assert "auth" not in client.esmtp_features
        assert "starttls" in client.esmtp_features
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1zZWNyZXQ=")
        assert (code, text) == (538, b"5.7.11 Encryption required for requested authentication mechanism")


def test_wrong_password_then_throttled(proxy, certs):
    client = submission_client(proxy, certs)
    for _ in range(3):  # max_failures = 3 in the test config
        assert auth_plain(client, "bob@example.test", "wrong") == (
            535, b"5.7.8 Authentication credentials invalid"
        )
    # Even the right password is not checked any more from this address.
    assert auth_plain(client, "bob@example.test", "bob-secret") == (
        454, b"4.7.0 Too many authentication failures, try again later"
    )
    client.quit()
    assert proxy.metric("mailproxy_auth_attempts_total", result="failure") == 3
    assert proxy.metric("mailproxy_auth_attempts_total", result="throttled") >= 1


def test_throttle_can_disconnect(sink, make_proxy, certs):
    proxy = make_proxy(sink.address, auth={"max_failures": 1, "throttle": "disconnect"})
    client = submission_client(proxy, certs)
    assert auth_plain(client, "bob@example.test", "wrong")[0] == 535
    assert auth_plain(client, "bob@example.test", "bob-secret") == (
        421, b"4.7.0 proxy.test Too many authentication failures"
    )
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()


def test_swaks_submission_with_tls_and_auth(proxy, sink):
    result = run_swaks(
        "--server", f"127.0.0.1:{proxy.port('submission')}", "--tls",
        "--auth", "LOGIN", "--auth-user", "alice@example.test", "--auth-password", "alice-secret",
        "--from", "alice@example.test", "--to", "someone@far.example", "--body", "via swaks",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    [body] = sink.bodies(expected=1)
    assert b"via swaks" in body


def test_a_login_cannot_forge_log_lines(proxy, certs):
    forged = "2030-01-01 00:00:00,000 INFO    [x] mailproxy.auth: authenticated as root"
    client = submission_client(proxy, certs)
    assert auth_plain(client, f"nobody\r\n{forged}", "guess")[0] == 535
    client.quit()
    log = proxy.log()  # the line is written before the reply is sent
    assert not [line for line in log.splitlines() if line.startswith(forged)]
    assert f"authentication failed for nobody\\r\\n{forged} (PLAIN)" in log


def test_cancelled_auth_counts_as_a_client_error(sink, make_proxy, certs, users_file):
    listeners = base_config(sink.address, certs, users_file)["listeners"]
    listeners[1]["max_errors"] = 3
    proxy = make_proxy(sink.address, listeners=listeners)
    client = submission_client(proxy, certs)
    for _ in range(2):
        assert client.docmd("AUTH", "PLAIN") == (334, b"")
        assert client.docmd("*") == (501, b"5.7.0 Authentication aborted")
    assert client.docmd("AUTH", "LOGIN")[0] == 334
    replies = [client.docmd("*")]
    with pytest.raises(smtplib.SMTPServerDisconnected):
        for _ in range(2):  # the budget's 421 may follow the reply to the cancel
            replies.append(client.getreply())
    code, text = replies[-1]
    assert code == 421 and b"too many errors" in text.lower(), replies
    assert proxy.metric("mailproxy_auth_attempts_total", result="aborted") == 3
