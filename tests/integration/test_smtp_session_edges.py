"""Edges of the SMTP session's own rules, each pinned by its exact reply: STARTTLS
refused with 502 5.5.1 where it is not offered (a listener without STARTTLS, an
implicit TLS listener, a session already in TLS) and with 501 5.5.4 when it carries an
argument; <postmaster> without a domain is a local recipient on mx (RFC 5321 4.5.1)
while any other bare local part is relaying; a MAIL whose SIZE= is exactly the
listener's max_message_size is accepted and one byte more is refused with 552 5.3.4,
before the upstream hears it; and after STARTTLS the session has forgotten the
client's EHLO (RFC 3207 4.2): no ESMTP session, as the client and the plugins see it,
until it greets again."""

import smtplib

import pytest

from tests.integration.test_data_mutants import plugins_in
from tests.integration.test_smtp_hardening import mx
from tests.integration.test_smtp_tls import implicit_listener
from tests.support.clients import connect
from tests.support.recorder import RecordingUpstream
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

NOT_RECOGNIZED = (502, b"5.5.1 Command not recognized")
MAX_SIZE = 10240

# A drop-in whose smtp_command hook answers NOOP with what the session knows of the
# client's greeting, so a test can read the state plugins are given.
GREETING_REPORTER = '''
from mailproxy import Verdict, hookimpl


class Plugin:
    def __init__(self, settings, context):
        pass

    @hookimpl
    def smtp_command(self, session, verb, argument):
        if verb == "NOOP":
            return Verdict.reject(550, "5.7.0", f"helo={session.host_name} esmtp={session.extended_smtp}")
        return None
'''


def starttls_client(proxy, certs):
    """A client on the mx listener, after EHLO and STARTTLS, that has not greeted again."""
    client = connect(proxy)
    client.ehlo("client.test")
    client.starttls(context=client_context(certs[0]))
    return client


# --- STARTTLS --------------------------------------------------------------------------


def test_starttls_on_a_listener_without_starttls_is_not_recognized(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listeners=mx())
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert "starttls" not in client.esmtp_features
            assert client.docmd("STARTTLS") == NOT_RECOGNIZED
            assert client.noop() == (250, b"ok")  # still plaintext, still in step
        [session] = upstream.wait_ended(1)
    assert b"STARTTLS" not in session.commands


def test_starttls_inside_implicit_tls_is_not_recognized(make_proxy, certs):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listeners=[implicit_listener(certs)])
        context = client_context(certs[0])
        with smtplib.SMTP_SSL("127.0.0.1", proxy.port("smtps"), context=context, timeout=10) as client:
            client.ehlo("client.test")
            assert client.docmd("STARTTLS") == NOT_RECOGNIZED
            assert client.noop() == (250, b"ok")


def test_a_second_starttls_in_a_tls_session_is_not_recognized(make_proxy, certs):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with starttls_client(proxy, certs) as client:
            client.ehlo("client.test")
            assert "starttls" not in client.esmtp_features
            assert client.docmd("STARTTLS") == NOT_RECOGNIZED
            assert client.noop() == (250, b"ok")  # the TLS session goes on
        [session] = upstream.wait_ended(1)
    assert b"STARTTLS" not in session.commands


def test_starttls_with_an_argument_is_a_syntax_error_and_tls_can_still_start(make_proxy, certs):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.docmd("STARTTLS", "now") == (501, b"5.5.4 Syntax: STARTTLS")
            assert client.starttls(context=client_context(certs[0]))[0] == 220


# --- after STARTTLS, before the next EHLO ----------------------------------------------


def test_after_starttls_the_session_is_no_esmtp_session_until_the_client_greets_again(
        make_proxy, certs, tmp_path):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, plugins=plugins_in(tmp_path, greeting_reporter=GREETING_REPORTER))
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.noop() == (550, b"5.7.0 helo=client.test esmtp=True")
            client.starttls(context=client_context(certs[0]))
            # The plaintext EHLO is forgotten: to the plugins ...
            assert client.noop() == (550, b"5.7.0 helo=None esmtp=False")
            # ... and to the client, whose ESMTP parameters wait for a new EHLO.
            assert client.docmd("MAIL", "FROM:<a@sender.example> SIZE=100") == (
                503, b"5.5.1 Error: send HELO/EHLO first")
            assert client.helo("client.test")[0] == 250
            assert client.noop() == (550, b"5.7.0 helo=client.test esmtp=False")
            assert client.docmd("MAIL", "FROM:<a@sender.example> SIZE=100") == (
                555, b"5.5.4 Unsupported option: SIZE")
        [session] = upstream.wait_ended(1)
    assert not any(command.startswith(b"MAIL") for command in session.commands)


# --- recipients and sizes --------------------------------------------------------------


def test_postmaster_without_a_domain_is_a_local_recipient_and_other_bare_names_are_relaying(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listeners=mx())
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.mail("a@sender.example")[0] == 250
            assert client.rcpt("Postmaster") == (250, b"ok")
            assert client.rcpt("someone") == (554, b"5.7.1 <someone>: Relay access denied")
        [session] = upstream.wait_ended(1)
    rcpts = [command for command in session.commands if command.startswith(b"RCPT")]
    assert rcpts == [b"RCPT TO:<Postmaster>"]


def test_size_equal_to_the_maximum_is_accepted_and_one_byte_more_is_refused(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listeners=mx(max_message_size=MAX_SIZE))
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.esmtp_features["size"] == str(MAX_SIZE)
            assert client.mail("at@sender.example", [f"SIZE={MAX_SIZE}"]) == (250, b"ok")
            assert client.rset()[0] == 250
            assert client.mail("over@sender.example", [f"SIZE={MAX_SIZE + 1}"]) == (
                552, b"5.3.4 Message size exceeds fixed maximum message size")
        [session] = upstream.wait_ended(1)
    mails = [command for command in session.commands if command.startswith(b"MAIL")]
    assert mails == [b"MAIL FROM:<at@sender.example>"]  # the upstream offered no SIZE
