"""The session core under clients and upstreams that break the rules: a client that
pipelines without reading, a shutdown that closes a client before its message went
out, an upstream that speaks or hangs up while it takes a message."""

import signal
import smtplib
import socket
import time

import pytest

from tests.support.clients import connect, start_transaction
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: core\r\n\r\nbody\r\n"


def settled(count, timeout: float = 30.0, quiet: float = 1.0) -> int:
    """`count()` once it has stopped changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


def rss_kib(proxy) -> int:
    with open(f"/proc/{proxy.process.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_a_client_that_pipelines_without_reading_is_not_answered_into_memory(make_proxy):
    # 64 Ki EHLOs in, each answered with a multi-line reply the client never reads: once
    # the socket's buffers are full the proxy must stop taking commands, not answer them
    # all into memory (about 11 MB for this one session).
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"idle_timeout": 60, "command_timeout": 60,
                                                        "max_errors": 10**6})
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", proxy.port("mx")))
        client.settimeout(30)
        with connect(proxy) as warm_up:  # the first session's one-time allocations
            warm_up.ehlo("client.test")
        before = rss_kib(proxy)
        client.sendall(b"EHLO a\r\n" * 65536)
        answered = settled(lambda: bytes(upstream.received).count(b"EHLO a"))
        grown = rss_kib(proxy) - before
        client.close()
    assert answered < 65536 and grown < 2048, (answered, grown)


def test_a_shutdown_never_delivers_a_message_behind_a_closed_clients_back(make_proxy):
    # The upstream answers DATA just after the shutdown grace: by then the client has
    # been let go, so its message must not be sent (it would be sent again: a duplicate).
    with RecordingUpstream(data_reply_delay=0.55) as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": "whole"},
                           proxy={"hostname": "proxy.test", "resolve_client_names": False,
                                  "shutdown_grace": 0.5})
        client = connect(proxy)
        start_transaction(client)
        assert client.docmd("DATA")[0] == 354
        client.sock.sendall(MESSAGE + b".\r\n")
        wait_for = time.monotonic() + 10
        while b"DATA" not in bytes(upstream.received) and time.monotonic() < wait_for:
            time.sleep(0.02)
        proxy.process.send_signal(signal.SIGTERM)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.getreply()
        assert proxy.process.wait(30) == 0
        upstream.wait_ended(1)
    assert upstream.messages == []


@pytest.mark.parametrize("data_mode", ["stream", "whole"])
def test_an_upstream_that_speaks_while_taking_a_message_is_not_believed(make_proxy, data_mode):
    # Its 250 came before the message did: the answer to the message is still to come.
    with RecordingUpstream(after_go_ahead=b"250 2.0.0 early\r\n", final_reply=b"554 5.7.1 refused") as upstream:
        proxy = make_proxy(upstream.address, listener={"data_mode": data_mode})
        with connect(proxy) as client:
            start_transaction(client)
            assert client.data(MESSAGE)[0] == 451
            assert client.noop() == (250, b"ok")  # in step: a new upstream session
    assert proxy.metric("mailproxy_messages_total", outcome="delivered") == 0
    assert proxy.metric("mailproxy_upstream_failures_total", stage="protocol") == 1
