"""The SMTP AUTH command's own refusals, each pinned by its exact reply and enhanced
status code: AUTH on an mx listener is no command at all (502 5.5.1), in plaintext or
in TLS; AUTH before the client's EHLO, after a HELO, or after STARTTLS until it greets
again is 503 5.5.1 "send EHLO first", and a HELO does not let a login through; a second
AUTH after a successful one is 503 5.5.1 and the first login stands; a mechanism the
proxy does not offer is 504 5.5.4; and a response that is not base64, or not a PLAIN
message, is 501 5.5.2 with the decoder's reason, counted as a failed attempt, after
which the session goes on and a good login still succeeds."""

import base64

import pytest

from tests.support.clients import auth_plain, connect, submission_client
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice@example.test", "alice-secret"
GOOD_PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
SEND_EHLO_FIRST = (503, b"5.5.1 Error: send EHLO first")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- where AUTH is no command -------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "after-starttls"])
def test_auth_on_an_mx_listener_is_not_recognized_and_the_session_goes_on(proxy, certs, tls):
    with connect(proxy, "mx") as client:
        client.ehlo("client.test")
        if tls:
            client.starttls(context=client_context(certs[0]))
            client.ehlo("client.test")
        assert "auth" not in client.esmtp_features
        assert client.docmd("AUTH", f"PLAIN {GOOD_PLAIN}") == (502, b"5.5.1 Command not recognized")
        assert client.noop()[0] == 250
    assert proxy.metric("mailproxy_auth_attempts_total") == 0


# --- AUTH needs an EHLO in the current (TLS) session ---------------------------------------


def no_greeting(client, certs):
    pass


def helo_in_tls(client, certs):
    client.ehlo("client.test")
    client.starttls(context=client_context(certs[0]))
    assert client.helo("client.test")[0] == 250


def starttls_without_a_new_ehlo(client, certs):
    client.ehlo("client.test")
    client.starttls(context=client_context(certs[0]))


@pytest.mark.parametrize("before", [no_greeting, helo_in_tls, starttls_without_a_new_ehlo])
def test_auth_without_a_current_ehlo_is_refused_with_send_ehlo_first(proxy, certs, before):
    with connect(proxy, "submission") as client:
        before(client, certs)
        assert client.docmd("AUTH", f"PLAIN {GOOD_PLAIN}") == SEND_EHLO_FIRST
        assert client.docmd("AUTH", "LOGIN") == SEND_EHLO_FIRST  # no exchange starts either
        # The credentials were never looked at: after an EHLO the session is not logged in.
        assert client.ehlo("client.test")[0] == 250
        assert client.mail(USER) == (530, b"5.7.0 Authentication required")
    assert proxy.metric("mailproxy_auth_attempts_total") == 0


# --- after a login ---------------------------------------------------------------------------


def test_a_second_auth_is_refused_and_the_first_login_stands(proxy, certs):
    client = submission_client(proxy, certs, USER, PASSWORD)
    assert auth_plain(client, "bob@example.test", "bob-secret") == (
        503, b"5.5.1 Error: already authenticated"
    )
    assert client.docmd("AUTH", "LOGIN") == (503, b"5.5.1 Error: already authenticated")
    assert client.mail(USER)[0] == 250
    client.quit()
    assert proxy.metric("mailproxy_auth_attempts_total", result="success") == 1
    assert proxy.metric("mailproxy_auth_attempts_total") == 1


# --- the mechanism and the SASL exchange ----------------------------------------------------


@pytest.mark.parametrize("argument", ["CRAM-MD5", f"XOAUTH2 {b64('token')}", "PLAINX", "LOGIN-"])
def test_an_unknown_mechanism_is_refused_with_504(proxy, certs, argument):
    client = submission_client(proxy, certs)
    assert client.docmd("AUTH", argument) == (504, b"5.5.4 Unrecognized authentication type")
    assert auth_plain(client, USER, PASSWORD)[0] == 235
    client.quit()


def initial_response(client, blob):
    return client.docmd("AUTH", f"PLAIN {blob}")


def plain_after_challenge(client, blob):
    assert client.docmd("AUTH", "PLAIN") == (334, b"")
    return client.docmd(blob)


def login_username(client, blob):
    assert client.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
    return client.docmd(blob)


def login_password(client, blob):
    assert client.docmd("AUTH", f"LOGIN {b64(USER)}") == (334, b"UGFzc3dvcmQ6")
    return client.docmd(blob)


@pytest.mark.parametrize("exchange, blob, reason", [
    (initial_response, "not*base64", b"Invalid base64 data"),
    (initial_response, b64("alice-without-nuls"), b"Malformed PLAIN response"),
    (initial_response, b64(f"bob@example.test\0{USER}\0{PASSWORD}"),
     b"Authorization identity must match the login"),
    (plain_after_challenge, "@@@@", b"Invalid base64 data"),
    (plain_after_challenge, b64(f"\0\0{PASSWORD}"), b"Malformed PLAIN response"),
    (login_username, "%%%%", b"Invalid base64 data"),
    (login_password, base64.b64encode(b"\xff\xfe").decode(), b"Invalid base64 data"),
], ids=["plain-not-base64", "plain-no-nuls", "plain-other-authzid", "plain-334-not-base64",
        "plain-334-no-username", "login-username", "login-password-not-utf8"])
def test_a_malformed_sasl_response_is_501_and_the_session_goes_on(proxy, certs, exchange, blob, reason):
    client = submission_client(proxy, certs)
    assert exchange(client, blob) == (501, b"5.5.2 " + reason)
    assert client.noop()[0] == 250  # still connected, still in step
    assert auth_plain(client, USER, PASSWORD) == (235, b"2.7.0 Authentication successful")
    client.quit()
    assert proxy.metric("mailproxy_auth_attempts_total", result="failure") == 1
    assert proxy.metric("mailproxy_auth_attempts_total", result="success") == 1
