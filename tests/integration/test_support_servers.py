"""The real-server harness itself: smtp-sink dumps, a rejecting sink, swaks, the recorder."""

import smtplib
import ssl
import socket
import threading

import pytest

from tests.support.recorder import RecordingUpstream
from tests.support.servers import SmtpSink, run_swaks, split_dump
from tests.support.tls import client_context, make_ca_and_cert

pytestmark = pytest.mark.integration


def test_sink_bodies_are_the_message_as_sent_with_lf_line_ends():
    message = b"Subject: harness\r\nFrom: a@sender.example\r\n\r\nline 1\r\n.starts with a dot\r\n\r\nlast\r\n"
    with SmtpSink() as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            client.sendmail("a@sender.example", ["b@example.test", "c@example.test"], message)
        assert sink.bodies(expected=1) == [message.replace(b"\r\n", b"\n")]
        fields, _ = split_dump(sink.messages()[0])
        assert fields["X-Mail-Args"] == ["<a@sender.example>"]
        assert fields["X-Rcpt-Args"] == ["<b@example.test>", "<c@example.test>"]


def test_sink_keeps_one_dump_per_transaction():
    with SmtpSink() as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            for n in range(5):
                client.sendmail("a@sender.example", ["b@example.test"], b"Subject: %d\r\n\r\nbody\r\n" % n)
        # Order is not reliable within a few milliseconds (see SmtpSink.messages).
        assert sorted(sink.bodies(expected=5)) == [b"Subject: %d\n\nbody\n" % n for n in range(5)]


def test_reject_rcpt_sink_refuses_every_recipient():
    with SmtpSink(reject_rcpt="550 5.1.1 no such user") as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("a@sender.example", ["nobody@example.test"], b"Subject: x\r\n\r\nx\r\n")
        assert refused.value.recipients == {"nobody@example.test": (550, b"5.1.1 no such user")}
        assert sink.messages() == []


def test_swaks_delivers_to_the_sink():
    with SmtpSink() as sink:
        result = run_swaks("--server", sink.address, "--to", "user@example.test",
                           "--from", "a@sender.example", "--body", "hello from swaks")
        assert result.returncode == 0, result.stdout + result.stderr
        [body] = sink.bodies(expected=1)
        # swaks itself sends two empty lines after the body.
        assert body.endswith(b"\n\nhello from swaks\n\n\n")


def test_killed_sink_refuses_connections():
    with SmtpSink() as sink:
        sink.kill()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", sink.port), timeout=2).close()


def test_trustme_certificate_verifies_for_all_names(tmp_path):
    ca_path, cert_path, key_path = make_ca_and_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            for _ in range(3):
                conn, _ = listener.accept()
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for name in ("localhost", "127.0.0.1", "mailproxy.localdomain"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with client_context(ca_path).wrap_socket(raw, server_hostname=name) as tls:
                    assert tls.recv(2) == b"ok"
        thread.join(5)


def _server_context(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts from a CA made for this test."""
    ca_path, cert_path, key_path = make_ca_and_cert(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return server, client_context(ca_path)


def test_recorder_replies_as_told_and_records_each_session():
    with RecordingUpstream(
        data_reply=b"451 4.3.0 try later", auth_reply=b"334 VXNlcm5hbWU6", ehlo_extensions=["SIZE 1000"]
    ) as upstream:
        with smtplib.SMTP("127.0.0.1", upstream.port, timeout=10) as client:
            client.ehlo("one.test")
            assert client.has_extn("size") and not client.has_extn("pipelining")
            assert client.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
            client.mail("a@sender.example")
            client.rcpt("b@example.test")
            assert client.docmd("DATA") == (451, b"4.3.0 try later")
        with smtplib.SMTP("127.0.0.1", upstream.port, timeout=10) as client:
            client.helo("two.test")
        first, second = upstream.wait_ended(2)
        assert first.commands == [b"ehlo one.test", b"AUTH LOGIN", b"mail FROM:<a@sender.example>",
                                  b"rcpt TO:<b@example.test>", b"DATA", b"QUIT"]
        assert second.commands == [b"helo two.test", b"QUIT"]
        assert upstream.messages == []

    with RecordingUpstream(final_reply=b"554 5.7.1 no thanks") as upstream:
        with smtplib.SMTP("127.0.0.1", upstream.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@sender.example", ["b@example.test"], b"Subject: x\r\n\r\nbody\r\n")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.7.1 no thanks")
        [session] = upstream.wait_ended(1)
        assert session.messages == upstream.messages == [b"Subject: x\r\n\r\nbody"]


def test_recorder_closes_an_idle_connection_with_421():
    with RecordingUpstream(idle_close=0.5) as upstream:
        with socket.create_connection(("127.0.0.1", upstream.port), timeout=10) as raw:
            replies = b""
            while chunk := raw.recv(4096):  # the recorder closes: the loop ends
                replies += chunk
        assert replies == b"220 recorder ESMTP\r\n421 4.4.2 timeout\r\n"


def test_recorder_starttls_and_injection_after_its_220(tmp_path):
    server, client = _server_context(tmp_path)
    with RecordingUpstream(starttls=server) as upstream:
        with smtplib.SMTP("127.0.0.1", upstream.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            assert smtp.has_extn("starttls")
            smtp.starttls(context=client)
            smtp.ehlo("client.test")
            assert not smtp.has_extn("starttls")
        [session] = upstream.wait_ended(1)
        assert session.tls and session.commands == [b"ehlo client.test", b"STARTTLS", b"ehlo client.test", b"QUIT"]

    with RecordingUpstream(starttls=server, inject_after_starttls=b"250 injected\r\n") as upstream:
        with socket.create_connection(("127.0.0.1", upstream.port), timeout=10) as raw:
            replies = raw.makefile("rb")
            assert replies.readline() == b"220 recorder ESMTP\r\n"
            raw.sendall(b"STARTTLS\r\n")
            assert replies.readline() == b"220 2.0.0 ready to start TLS\r\n"
            assert replies.readline() == b"250 injected\r\n"
            replies.close()
        [session] = upstream.wait_ended(1)
        assert not session.tls
