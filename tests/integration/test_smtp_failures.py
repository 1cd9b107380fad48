"""When the upstream is down or dies: the client always hears a 4xx, never a false 250."""

import smtplib
import time
import socket

import pytest

from tests.support.clients import connect
from tests.support.servers import SmtpSink, free_port

pytestmark = pytest.mark.integration


def test_upstream_down_at_connect_gives_421(make_proxy):
    closed_port = free_port()  # nothing listens here
    proxy = make_proxy(f"127.0.0.1:{closed_port}")
    client = smtplib.SMTP(timeout=10)
    code, text = client.connect("127.0.0.1", proxy.port("mx"))
    client.close()
    assert (code, text) == (421, b"4.3.0 proxy.test Service not available, try again later")
    assert proxy.metric("mailproxy_upstream_failures_total", stage="connect") == 1


def test_upstream_killed_in_the_middle_of_data_gives_4xx_and_no_250(make_proxy):
    with SmtpSink() as sink:
        proxy = make_proxy(sink.address)
        client = connect(proxy)
        client.ehlo("client.test")
        assert client.mail("a@sender.example")[0] == 250
        assert client.rcpt("user@example.test")[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: doomed\r\n\r\nfirst half\r\n")
        sink.kill()
        client.send(b"second half\r\n.\r\n")
        code, text = client.getreply()
        assert code == 451, (code, text)
        assert text == b"4.3.0 Upstream failure, message not accepted, try again later"
        # The session is still usable; with the upstream gone, the next command is 421.
        code, _ = client.docmd("MAIL", "FROM:<a@sender.example>")
        assert code == 421
        client.close()
    assert proxy.metric("mailproxy_messages_total", outcome="tempfailed") == 1
    assert proxy.metric("mailproxy_messages_total", outcome="delivered") == 0


def test_client_leaving_mid_data_delivers_nothing(proxy, sink):
    client = connect(proxy)
    client.ehlo("client.test")
    client.mail("a@sender.example")
    client.rcpt("user@example.test")
    assert client.docmd("DATA")[0] == 354
    client.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    # A new session works, and only its message arrives.
    with connect(proxy) as again:
        again.sendmail("a@sender.example", ["user@example.test"], b"Subject: whole\r\n\r\nok\r\n")
    assert sink.bodies(expected=1) == [b"Subject: whole\n\nok\n"]


def test_bad_input_gets_protocol_errors_not_a_crash(proxy):
    with connect(proxy) as client:
        assert client.docmd("FOO")[0] == 502
        assert client.docmd("MAIL", "FROM:<a@b")[0] == 503  # no EHLO yet
        client.ehlo("client.test")
        assert client.docmd("MAIL", "FROM:<a@b")[0] == 501
        assert client.docmd("RCPT", "TO:<user@example.test>")[0] == 503
        client.send(b"X" * 5000 + b"\r\n")
        assert client.getreply() == (500, b"5.5.2 Line too long")
        assert client.docmd("XCLIENT", "ADDR=1.2.3.4")[0] == 502  # never passed upstream
        assert client.noop()[0] == 250


def test_too_many_errors_end_the_session(sink, make_proxy):
    proxy = make_proxy(sink.address, listeners=[
        {"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"],
         "max_errors": 10, "soft_error_limit": 10},
    ])
    with connect(proxy) as client:
        replies = [client.docmd("BOGUS")[0] for _ in range(10)]
        assert replies == [502] * 10  # each error is answered; the tenth is the last
        assert client.getreply() == (421, b"4.7.0 proxy.test Error: too many errors, closing connection")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_upstream_silent_at_end_of_data_gives_451_after_data_timeout(make_proxy):
    from tests.support.recorder import RecordingUpstream

    with RecordingUpstream(silent_after_data=True) as upstream:
        proxy = make_proxy(upstream.address, upstreams={
            "sink": {"address": upstream.address, "data_timeout": 1.0, "reply_timeout": 30.0},
        })
        with connect(proxy) as client:
            client.ehlo("client.test")
            client.mail("a@sender.example")
            client.rcpt("user@example.test")
            started = time.monotonic()
            assert client.data(b"Subject: waiting\r\n\r\nx\r\n") == (
                451, b"4.3.0 Upstream failure, message not accepted, try again later"
            )
            # Room for a loaded machine, and still far below reply_timeout.
            assert 0.9 < time.monotonic() - started < 15
    assert proxy.metric("mailproxy_upstream_failures_total", stage="timeout") == 1


def test_idle_client_is_told_and_disconnected(sink, make_proxy):
    proxy = make_proxy(sink.address, listeners=[
        {"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"], "idle_timeout": 0.5},
    ])
    with connect(proxy) as client:
        client.ehlo("client.test")
        # Said nothing more: the reply arrives on its own (smtplib waits up to 10 s).
        assert client.getreply() == (421, b"4.4.2 proxy.test Idle timeout, closing connection")


def test_ipv6_listener(sink, make_proxy):
    port = free_port("::1")
    make_proxy(sink.address, listeners=[
        {"name": "mx", "mode": "mx", "address": f"[::1]:{port}", "upstream": "sink", "local_domains": ["example.test"]},
    ])
    with smtplib.SMTP("::1", port, timeout=10) as client:
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: v6\r\n\r\nok\r\n")
    fields, _ = sink.transactions(expected=1)[0]
    assert fields["X-Client-Addr"] == ["127.0.0.1"]  # the proxy's own side of it
