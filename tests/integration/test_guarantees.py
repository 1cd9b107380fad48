"""The promises the README makes, each held against an upstream or a client that
tries to break it: 250 only after the upstream's 250, no relay on mx, AUTH enforced,
STARTTLS injection refused on both sides, and a listener's size and recipient limits."""

import smtplib
import socket
import ssl

import pytest

from tests.support.clients import auth_plain, connect, start_transaction, submission_client
from tests.support.recorder import RecordingUpstream
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: guarantee\r\n\r\nbody\r\n"


def mx_listener(**settings) -> dict:
    """A plaintext mx listener in front of the upstream named "sink"."""
    return {"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"], **settings}


def data_outcome(client, message: bytes) -> tuple[int, bytes]:
    """The answer to a message: to DATA itself when the upstream refused it while
    streaming (its refusal relayed at once), else to the end of the message."""
    try:
        return client.data(message)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error


DATA_MODES = pytest.mark.parametrize("data_mode", ["stream", "whole"])


# --- 250 only after the upstream's 250 -------------------------------------------------


@DATA_MODES
@pytest.mark.parametrize("refusal", [b"554 5.7.1 no thanks", b"451 4.7.1 later"])
def test_upstream_refusal_of_the_message_reaches_the_client_unchanged(make_proxy, refusal, data_mode):
    with RecordingUpstream(final_reply=refusal) as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": data_mode})
        with connect(proxy) as client:
            start_transaction(client)
            code, text = refusal.split(b" ", 1)
            assert client.data(MESSAGE) == (int(code), text)
        assert upstream.messages == [MESSAGE.removesuffix(b"\r\n")]  # it did see the message
    assert proxy.metric("mailproxy_messages_total", outcome="delivered") == 0
    outcome = "rejected" if refusal.startswith(b"5") else "tempfailed"
    assert proxy.metric("mailproxy_messages_total", outcome=outcome) == 1


@pytest.mark.parametrize("refusal", [
    b"451 4.3.0 try later", b"554 5.5.1 no DATA for you", b"400 4.0.0 the lowest refusal there is",
])
@DATA_MODES
def test_upstream_refusal_of_data_sends_no_message(make_proxy, refusal, data_mode):
    with RecordingUpstream(data_reply=refusal) as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": data_mode})
        with connect(proxy) as client:
            start_transaction(client)
            code, text = refusal.split(b" ", 1)
            assert data_outcome(client, MESSAGE) == (int(code), text)
            assert client.noop()[0] == 250  # still in step with the client
        [session] = upstream.wait_ended(1)
    assert b"Subject: guarantee" not in bytes(upstream.received)
    assert upstream.messages == []
    assert session.commands.count(b"DATA") == 1


@DATA_MODES
def test_upstream_answering_data_with_250_is_no_delivery(make_proxy, data_mode):
    # An upstream that says 250 where 354 is due took no message: a 250 to the client
    # would acknowledge mail that went nowhere.
    with RecordingUpstream(data_reply=b"250 ok") as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": data_mode})
        with connect(proxy) as client:
            start_transaction(client)
            code, _ = data_outcome(client, MESSAGE)
            assert 400 <= code < 500
        upstream.wait_ended(1)
    assert b"Subject: guarantee" not in bytes(upstream.received)
    assert proxy.metric("mailproxy_messages_total", outcome="delivered") == 0
    assert proxy.metric("mailproxy_upstream_failures_total", stage="protocol") == 1


# --- no relay on mx --------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["evilexample.test", "sub.example.test", "example.test.evil"])
def test_only_the_local_domains_themselves_are_local(make_proxy, domain):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            client.ehlo("client.test")
            client.mail("a@sender.example")
            assert client.rcpt(f"victim@{domain}") == (
                554, f"5.7.1 <victim@{domain}>: Relay access denied".encode()
            )
            assert client.rcpt("user@example.test")[0] == 250  # the local domain itself is
        [session] = upstream.wait_ended(1)
    assert [c for c in session.commands if c.upper().startswith(b"RCPT")] == [b"RCPT TO:<user@example.test>"]


# --- AUTH enforced ---------------------------------------------------------------------


def test_a_user_no_backend_knows_is_not_logged_in(make_proxy, certs):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        client = submission_client(proxy, certs)
        assert auth_plain(client, "nobody@example.test", "any-password") == (
            535, b"5.7.8 Authentication credentials invalid"
        )
        assert client.mail("nobody@example.test") == (530, b"5.7.0 Authentication required")
        assert auth_plain(client, "alice@example.test", "alice-secret")[0] == 235  # a known one is
        client.quit()
        [session] = upstream.wait_ended(1)
    assert [c for c in session.commands if c.upper().startswith((b"MAIL", b"AUTH"))] == []
    assert proxy.metric("mailproxy_auth_attempts_total", result="success") == 1


# --- STARTTLS injection refused --------------------------------------------------------


def read_line(sock) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed after {line!r}")
        line += chunk
    return line


def final_reply_codes(sock, last: bytes) -> list[bytes]:
    """The codes of the final reply lines, read up to and including one coded `last`."""
    codes = []
    while not codes or codes[-1] != last:
        line = read_line(sock)
        if line[3:4] == b" ":
            codes.append(line[:3])
    return codes


def test_commands_pipelined_after_client_starttls_are_discarded(make_proxy, certs):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with socket.create_connection(("127.0.0.1", proxy.port("mx")), timeout=10) as raw:
            assert read_line(raw).startswith(b"220 ")
            raw.sendall(b"EHLO client.test\r\n")
            assert final_reply_codes(raw, b"250") == [b"250"]
            # Sent in plaintext after STARTTLS: a man in the middle's injection.
            raw.sendall(b"STARTTLS\r\nEHLO injected.test\r\n")
            assert read_line(raw).startswith(b"220 ")
            with client_context(certs[0]).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"EHLO client.test\r\nQUIT\r\n")
                assert final_reply_codes(tls, b"221") == [b"250", b"221"]
        [session] = upstream.wait_ended(1)
    assert b"EHLO injected.test" not in session.commands
    assert session.commands.count(b"EHLO client.test") == 2


def test_upstream_data_after_its_starttls_220_is_refused(make_proxy, certs):
    ca, cert, key = certs
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)

    def proxy_for(upstream):
        return make_proxy(
            upstream.address, listeners=[mx_listener()],
            upstreams={"sink": {"address": upstream.address, "tls": "starttls", "ca_file": str(ca)}},
        )

    with RecordingUpstream(starttls=server) as honest:  # the same path, without injection
        with connect(proxy_for(honest)) as client:
            client.sendmail("a@sender.example", ["user@example.test"], MESSAGE)
        [session] = honest.wait_ended(1)
        assert session.tls and session.messages == [MESSAGE.removesuffix(b"\r\n")]

    with RecordingUpstream(starttls=server, inject_after_starttls=b"250 injected\r\n") as injecting:
        proxy = proxy_for(injecting)
        client = smtplib.SMTP(timeout=10)
        code, text = client.connect("127.0.0.1", proxy.port("mx"))
        client.close()
        assert (code, text) == (421, b"4.3.0 proxy.test Service not available, try again later")
        [session] = injecting.wait_ended(1)
        assert not session.tls and session.commands[-1] == b"STARTTLS"
    assert proxy.metric("mailproxy_upstream_failures_total", stage="tls") == 1


# --- listener size and recipient limits -------------------------------------------------


def test_listener_max_message_size_is_enforced(make_proxy):
    limit = 2048
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listeners=[mx_listener(max_message_size=limit)])
        too_big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 40
        assert len(too_big) > limit
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.esmtp_features["size"] == str(limit)
            assert client.mail("a@sender.example", [f"SIZE={len(too_big)}"]) == (
                552, b"5.3.4 Message size exceeds fixed maximum message size"
            )
            start_transaction(client)  # no SIZE declared: the limit holds at end of data
            assert client.data(too_big) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
            assert client.sendmail("a@sender.example", ["user@example.test"], MESSAGE) == {}
        upstream.wait_ended(1)
    assert upstream.messages == [MESSAGE.removesuffix(b"\r\n")]


def test_listener_max_recipients_is_enforced(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listeners=[mx_listener(max_recipients=3)])
        accepted = [f"user{n}@example.test" for n in range(3)]
        with connect(proxy) as client:
            client.ehlo("client.test")
            assert client.mail("a@sender.example")[0] == 250
            for recipient in accepted:
                assert client.rcpt(recipient)[0] == 250
            assert client.rcpt("user3@example.test") == (452, b"4.5.3 Too many recipients")
            assert client.data(MESSAGE)[0] == 250  # for the recipients accepted
        [session] = upstream.wait_ended(1)
    assert [c for c in session.commands if c.startswith(b"RCPT")] == [
        f"RCPT TO:<{r}>".encode() for r in accepted
    ]
    assert upstream.messages == [MESSAGE.removesuffix(b"\r\n")]
