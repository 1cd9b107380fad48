"""Streaming DATA (the default when no plugin reads whole messages): the upstream's own
354, the message passed on as it arrives, and whatever the upstream must not take cut
off before its end marker, so the upstream discards it."""

import time

import pytest

from tests.support.clients import connect, start_transaction
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: streamed\r\n\r\nhello\r\n"


def wait_received(upstream: RecordingUpstream, needle: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in bytes(upstream.received):
        assert time.monotonic() < deadline, f"{needle!r} never reached the upstream"
        time.sleep(0.02)


def test_the_upstreams_own_go_ahead_reaches_the_client(make_proxy):
    with RecordingUpstream(data_reply=b"354 recorder says go ahead") as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            start_transaction(client)
            assert client.docmd("DATA") == (354, b"recorder says go ahead")
            client.send(MESSAGE + b".\r\n")
            assert client.getreply() == (250, b"queued")
    assert upstream.messages == [MESSAGE.removesuffix(b"\r\n")]


def test_the_message_reaches_the_upstream_before_it_is_complete(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            start_transaction(client)
            assert client.docmd("DATA")[0] == 354
            client.send(b"Subject: first half\r\n\r\n")
            wait_received(upstream, b"Subject: first half")  # passed on, not held
            assert upstream.messages == []
            client.send(b"second half\r\n.\r\n")
            assert client.getreply() == (250, b"queued")
    assert upstream.messages == [b"Subject: first half\r\n\r\nsecond half"]


def test_a_client_that_leaves_mid_message_delivers_nothing(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        client = connect(proxy)
        start_transaction(client)
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: cut off\r\n\r\npart one\r\n")
        wait_received(upstream, b"part one")
        client.close()  # gone, mid-message
        [session] = upstream.wait_ended(1)  # the proxy dropped it without the end marker
    assert upstream.messages == []
    assert b"QUIT" not in bytes(upstream.received)  # dropped: a QUIT would be a line of the message
    assert proxy.metric("mailproxy_messages_total", outcome="delivered") == 0


def test_a_message_over_the_limit_is_cut_off_before_its_end(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address, listener={"max_message_size": 2048})
        with connect(proxy) as client:
            start_transaction(client)
            assert client.docmd("DATA")[0] == 354
            client.send(b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 100 + b".\r\n")
            assert client.getreply() == (552, b"5.3.4 Message size exceeds fixed maximum message size")
            # In step, and the next message goes through on a new upstream session.
            start_transaction(client)
            assert client.data(MESSAGE) == (250, b"queued")
        upstream.wait_ended(2)
    assert upstream.messages == [MESSAGE.removesuffix(b"\r\n")]
    assert proxy.metric("mailproxy_messages_total", outcome="rejected") == 1


def test_commands_pipelined_after_the_message_are_answered_after_its_reply(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(upstream.address)
        with connect(proxy) as client:
            start_transaction(client)
            assert client.docmd("DATA")[0] == 354
            client.send(MESSAGE + b".\r\nNOOP\r\nRSET\r\n")
            assert client.getreply() == (250, b"queued")
            assert client.getreply() == (250, b"ok")
            assert client.getreply() == (250, b"ok")
        [session] = upstream.wait_ended(1)
    assert session.commands[-3:] == [b"NOOP", b"RSET", b"QUIT"]
    assert upstream.messages == [MESSAGE.removesuffix(b"\r\n")]
