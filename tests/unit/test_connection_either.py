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


def test_splice_passes_bytes_both_ways_and_an_end_closes_the_other_side():
    async def scenario():
        left, left_peer = await connected_pair()
        right, right_peer = await connected_pair()
        loop = asyncio.get_running_loop()
        left_peer.send(b"before the splice")
        assert await left.wait_readable(10)
        lost = left.splice(right)
        assert await loop.sock_recv(right_peer, 100) == b"before the splice"  # read earlier, not lost
        right_peer.send(b"pong")
        assert await loop.sock_recv(left_peer, 100) == b"pong"
        left_peer.send(b"ping")
        assert await loop.sock_recv(right_peer, 100) == b"ping"
        left_peer.close()
        await asyncio.wait_for(lost, 10)
        assert await asyncio.wait_for(loop.sock_recv(right_peer, 100), 10) == b""  # closed in turn
        right_peer.close()

    run(scenario())


def test_a_spliced_side_that_does_not_read_stops_the_reading_of_the_other():
    async def scenario():
        left, left_peer = await connected_pair()
        right, right_peer = await connected_pair()
        loop = asyncio.get_running_loop()
        lost = left.splice(right)
        chunk = b"x" * 65536
        sent = 0
        # right_peer never reads: left_peer's sends must stall once the buffers are full,
        # instead of the proxy's memory taking it all.
        for _ in range(4000):  # at most 256 MiB, far beyond any socket buffers
            try:
                await asyncio.wait_for(loop.sock_sendall(left_peer, chunk), 0.5)
            except TimeoutError:
                break
            sent += len(chunk)
        else:
            raise AssertionError("the sender was never held back")
        assert right.write_buffer_size < 4 * 1024 * 1024
        assert sent < 64 * 1024 * 1024
        left_peer.close()
        right_peer.close()
        await asyncio.wait_for(lost, 10)

    run(scenario())


def test_a_pipe_that_stops_moving_ends_both_sides_after_the_stall_limit():
    async def scenario():
        left, left_peer = await connected_pair()
        right, right_peer = await connected_pair()
        loop = asyncio.get_running_loop()
        lost = left.splice(right, stall_limit=0.5)
        # right_peer never reads: once the buffers are full nothing moves, and left_peer
        # could have left meanwhile unnoticed (its end is not read while reading waits).
        chunk = b"x" * 65536
        for _ in range(4000):  # far beyond any socket buffers
            try:
                await asyncio.wait_for(loop.sock_sendall(left_peer, chunk), 0.2)
            except TimeoutError:
                break
        await asyncio.wait_for(lost, 10)
        assert left.transport is None and right.transport is None
        left_peer.close()
        right_peer.close()

    run(scenario())


def test_a_quiet_pipe_is_not_a_stalled_one():
    async def scenario():
        left, left_peer = await connected_pair()
        right, right_peer = await connected_pair()
        loop = asyncio.get_running_loop()
        lost = left.splice(right, stall_limit=0.2)
        await asyncio.sleep(0.6)  # nothing to send is no stall
        assert not lost.done()
        left_peer.send(b"still here")
        assert await loop.sock_recv(right_peer, 100) == b"still here"
        left_peer.close()
        right_peer.close()
        await asyncio.wait_for(lost, 10)

    run(scenario())
