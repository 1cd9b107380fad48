"""The pregreet plugin in the real proxy, in front of a recording upstream: raw sockets
that talk before the greeting or hang up during the wait, smtplib as the patient
client. The recorder tells whether an upstream session was opened."""

from __future__ import annotations

import smtplib
import socket
import struct
import time

import pytest

from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"
EARLY = b"EHLO bot.test\r\nQUIT\r\n"  # a whole conversation, without waiting to be greeted


@pytest.fixture
def upstream():
    with RecordingUpstream() as server:
        yield server


def proxy_with(make_proxy, upstream, **options):
    """The proxy with pregreet enabled (after access); its clients come from loopback,
    which the plugin skips unless told otherwise."""
    return make_proxy(
        upstream.address,
        plugins={"enabled": ["access", "pregreet"]},
        plugin={"pregreet": {"skip_clients": [], "greet_wait": 1.0, **options}},
    )


def connect(proxy, source: str = "127.0.0.1", listener: str = "mx") -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port(listener)), timeout=30, source_address=(source, 0))


def talk_early(proxy, source: str = "127.0.0.1", listener: str = "mx") -> list[bytes]:
    """Connect, send EARLY at once, and return every line the proxy sends until it closes."""
    with connect(proxy, source, listener) as client:
        client.sendall(EARLY)
        lines = []
        with client.makefile("rb") as replies:
            try:
                while line := replies.readline():
                    lines.append(line)
            except ConnectionResetError:  # a close with EARLY unread may come as a reset
                pass
    return lines


def checks(proxy, result: str) -> float:
    return proxy.metric("mailproxy_plugin_checks_total", plugin="pregreet", check="pregreet", result=result)


def deliver_patiently(proxy, upstream: RecordingUpstream, source: str = "127.0.0.1") -> None:
    """A client that waits for its greeting delivers; the upstream session it needs
    is, at that point, every one the proxy opened."""
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=30, source_address=(source, 0)) as client:
        client.sendmail("alice@sender.example", ["bob@example.test"], MESSAGE)
    upstream.wait_ended(1)


def test_an_early_talker_is_refused_and_costs_no_upstream_session(make_proxy, upstream):
    proxy = proxy_with(make_proxy, upstream)
    assert talk_early(proxy) == [b"554 5.5.1 Protocol error: talked before the greeting\r\n"]
    assert checks(proxy, "early_talker") == 1
    deliver_patiently(proxy, upstream)
    assert len(upstream.sessions) == 1  # the patient client's
    assert b"bot.test" not in upstream.received


def test_an_early_talker_that_is_only_scored_is_greeted_and_then_answered(make_proxy, upstream):
    proxy = proxy_with(make_proxy, upstream, early_talker=2.0)
    lines = talk_early(proxy)
    # The upstream's greeting first, then the answers to what the client said before it.
    assert lines[0] == b"220 recorder ESMTP\r\n"
    assert [line[:3] for line in lines[1:]] == [b"250"] * (len(lines) - 2) + [b"221"], lines
    [session] = upstream.wait_ended(1)
    assert session.commands == [b"EHLO bot.test", b"QUIT"]
    assert checks(proxy, "early_talker") == 1
    assert proxy.metric("mailproxy_verdicts_total", plugin="pregreet", hook="smtp_connect", action="score") == 1


def test_a_patient_client_is_greeted_after_the_wait_and_delivers(make_proxy, upstream):
    proxy = proxy_with(make_proxy, upstream, greet_wait=1.0)
    started = time.monotonic()
    with connect(proxy) as client, client.makefile("rb") as replies:
        assert replies.readline() == b"220 recorder ESMTP\r\n"
        # The wait runs from the proxy's accept, which came after our connect.
        assert time.monotonic() - started >= 1.0
    deliver_patiently(proxy, upstream)
    assert upstream.messages == [MESSAGE.removesuffix(b"\r\n")]
    assert checks(proxy, "patient") == 2
    assert checks(proxy, "early_talker") == 0


def test_clients_it_does_not_judge_are_greeted_without_waiting(make_proxy, upstream):
    # A wait far longer than any greeting takes, even on a busy machine.
    proxy = proxy_with(make_proxy, upstream, greet_wait=20.0, timeout=30.0, skip_clients=["127.0.0.2/32"])
    started = time.monotonic()
    for source, listener in [("127.0.0.2", "mx"), ("127.0.0.1", "submission")]:  # modes: ["mx"]
        with connect(proxy, source, listener) as client, client.makefile("rb") as replies:
            assert replies.readline() == b"220 recorder ESMTP\r\n"
    assert time.monotonic() - started < 10.0
    # What such a client says early is answered after the greeting, not judged.
    lines = talk_early(proxy, source="127.0.0.2")
    assert lines[0] == b"220 recorder ESMTP\r\n" and lines[-1][:3] == b"221", lines
    assert sum(checks(proxy, result) for result in ("early_talker", "patient", "left")) == 0


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_during_the_wait_costs_no_upstream_session(make_proxy, upstream, how):
    # A wait long enough to leave within on a busy machine; 127.0.0.2 delivers without it.
    proxy = proxy_with(make_proxy, upstream, greet_wait=5.0, timeout=10.0, skip_clients=["127.0.0.2/32"])
    client = connect(proxy)
    # Leave once the proxy has the connection, while the plugin waits for it to talk.
    wait_for_log(proxy, f"connect from 127.0.0.1 port {client.getsockname()[1]}")
    if how == "reset":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_for_log(proxy, "client left before the greeting")
    assert checks(proxy, "left") == 1
    deliver_patiently(proxy, upstream, source="127.0.0.2")
    assert len(upstream.sessions) == 1  # the patient client's


def wait_for_log(proxy, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log():
        assert time.monotonic() < deadline, f"not logged within {timeout}s: {text!r}\n{proxy.log()}"
        time.sleep(0.05)
