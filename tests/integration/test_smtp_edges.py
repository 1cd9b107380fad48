"""Edge cases found in review: half-closed clients, slow upstreams, relay tricks,
HELO clients and XCLIENT, and malformed command lines."""

import smtplib
import socket
import time

import pytest

from tests.support.clients import connect
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_half_closed_client_still_gets_every_reply(proxy, sink):
    sock = socket.create_connection(("127.0.0.1", proxy.port("mx")), timeout=10)
    sock.sendall(
        b"EHLO client.test\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<user@example.test>\r\n"
        b"DATA\r\nSubject: half\r\n\r\nclosed\r\n.\r\nQUIT\r\n"
    )
    sock.shutdown(socket.SHUT_WR)  # done sending, still reading
    replies = read_until_closed(sock)
    sock.close()
    codes = [line[:4] for line in replies.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220 ", b"250 ", b"250 ", b"250 ", b"354 ", b"250 ", b"221 "]
    assert sink.bodies(expected=1) == [b"Subject: half\n\nclosed\n"]


def test_idle_timer_does_not_run_while_the_upstream_works(make_proxy):
    with RecordingUpstream(delay_after_data=1.5) as upstream:
        proxy = make_proxy(upstream.address, listeners=[
            {"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"], "idle_timeout": 0.5},
        ])
        with connect(proxy) as client:
            client.ehlo("client.test")
            client.mail("a@sender.example")
            client.rcpt("user@example.test")
            assert client.data(b"Subject: slow\r\n\r\nok\r\n") == (250, b"queued")


@pytest.mark.parametrize("address", [
    "v%evil.test@example.test",
    "v@evil.test@example.test",
    '"v@evil.test"@example.test',
    "@evil.test:v@example.test",
    "v!evil.test@example.test",
    "v@evil.test(@example.test",
])
def test_routing_tricks_are_not_local_recipients(proxy, sink, address):
    with connect(proxy) as client:
        client.ehlo("client.test")
        client.mail("a@sender.example")
        code, text = client.docmd("RCPT", f"TO:<{address}>")
        assert (code, text) == (554, f"5.7.1 <{address}>: Relay access denied".encode())


def test_helo_client_is_announced_with_xclient(make_proxy):
    with RecordingUpstream(xclient=True) as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            code, text = client.helo("old-client.test")
            assert code == 250
            client.sendmail("a@sender.example", ["user@example.test"], b"Subject: helo\r\n\r\nok\r\n")
    received = bytes(upstream.received)
    assert received.startswith(
        b"EHLO old-client.test\r\nXCLIENT NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT="
    )
    assert b" PROTO=SMTP HELO=old-client.test\r\nHELO old-client.test\r\nMAIL FROM:" in received


def test_xclient_sends_ipv6_addresses_with_their_prefix(make_proxy):
    from tests.support.servers import free_port

    port = free_port("::1")
    with RecordingUpstream(xclient=True) as upstream:
        make_proxy(upstream.address, listeners=[
            {"name": "mx", "mode": "mx", "address": f"[::1]:{port}", "upstream": "sink", "local_domains": ["example.test"]},
        ])
        with smtplib.SMTP("::1", port, timeout=10) as client:
            assert client.ehlo("v6.test")[0] == 250
    assert b" ADDR=IPV6:::1 PORT=" in bytes(upstream.received)


def test_malformed_command_lines_get_replies_not_crashes(proxy, sink):
    # Raw bytes: smtplib itself refuses to send these.
    with connect(proxy) as client:
        client.ehlo("client.test")
        client.send(b"HELP x\rRCPT TO:<v@evil.test>\r\n")
        assert client.getreply() == (501, b"5.5.2 Bare CR or NUL in command")
        client.send(b"NOOP \0\r\n")
        assert client.getreply() == (501, b"5.5.2 Bare CR or NUL in command")
        # "²".isdigit() is true and int() of it raises: a SIZE that is no number is a
        # syntax error (RFC 1870), answered by the proxy, never passed on.
        client.send("MAIL FROM:<a@sender.example> SIZE=\u00b2\r\n".encode())
        assert client.getreply() == (501, b"5.5.4 Bad message size syntax")
        client.rset()
    with connect(proxy) as client:
        client.send(b"EHLO c\xff.test\r\n")
        assert client.getreply()[0] == 250
        assert client.noop()[0] == 250


def test_slow_upload_keeps_the_upstream_alive_with_noop(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(
            upstream.address, upstreams={"sink": {"address": upstream.address, "keepalive": 0.25}},
            listener={"data_mode": "whole"},  # streaming has the upstream's 354 and no NOOPs
        )
        with connect(proxy) as client:
            client.ehlo("client.test")
            client.mail("a@sender.example")
            client.rcpt("user@example.test")
            assert client.docmd("DATA")[0] == 354
            for n in range(8):  # a trickle: one line every 0.2 s
                client.send(b"line %d\r\n" % n)
                time.sleep(0.2)
            client.send(b".\r\n")
            assert client.getreply() == (250, b"queued")
    commands = [line for line in bytes(upstream.received).split(b"\r\n") if line in (b"NOOP", b"DATA")]
    assert commands[-1] == b"DATA" and commands.count(b"NOOP") >= 2
    # The recorder keeps a message without the CRLF that belongs to its end marker.
    assert upstream.messages == [b"\r\n".join(b"line %d" % n for n in range(8))]
