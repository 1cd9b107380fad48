"""first_readable: one wait that either of two real loopback connections ends."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mailproxy.proxy.connection import Connection, first_readable


async def connected_pair() -> tuple[Connection, socket.socket]:
    """A Connection on one end of a socket pair, the plain socket on the other."""
    ours, theirs = socket.socketpair()
    _, connection = await asyncio.get_running_loop().create_connection(Connection, sock=ours)
    theirs.setblocking(False)
    return connection, theirs


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_side_that_speaks_wins_and_keeps_its_bytes():
    async def scenario():
        left, left_peer = await connected_pair()
        right, right_peer = await connected_pair()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, right_peer.send, b"hello")
        winner = await first_readable(left, right, loop.time() + 10)
        assert winner is right and right.take() == b"hello" and not left.pending
        loop.call_later(0.05, left_peer.send, b"there")
        assert await first_readable(left, right, loop.time() + 10) is left
        assert left.take() == b"there"
        left_peer.close()  # the end of input also counts
        assert await first_readable(left, right, loop.time() + 10) is left
        assert await left.receive() == b""
        right_peer.close()

    run(scenario())


def test_a_deadline_with_both_silent_times_out_and_leaves_them_usable():
    async def scenario():
        left, left_peer = await connected_pair()
        right, right_peer = await connected_pair()
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await first_readable(left, right, loop.time() + 0.05)
        # The wait left nothing behind: a later plain receive still wakes.
        loop.call_later(0.05, left_peer.send, b"late")
        assert await left.receive(loop.time() + 10) == b"late"
        left_peer.close()
        right_peer.close()

    run(scenario())


def test_bytes_already_buffered_return_at_once():
    async def scenario():
        left, left_peer = await connected_pair()
        right, right_peer = await connected_pair()
        left_peer.send(b"early")
        assert await left.wait_readable(10)
        assert await first_readable(right, left, asyncio.get_running_loop().time() + 10) is left
        left_peer.close()
        right_peer.close()

    run(scenario())
