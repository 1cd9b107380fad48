"""A plugin's thread lane: threads kept for the next call, as many at once as the lane's
size allows, and a thread that cannot be started costing the lane nothing."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest

from mailproxy.threads import ThreadLane

_lanes = itertools.count()


def lane_of(size: int) -> ThreadLane:
    return ThreadLane(f"lane-test-{next(_lanes)}", size)


def threads_of(lane: ThreadLane) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"plugin {lane.name}"]


def test_calls_one_after_another_share_one_thread():
    # A thread per call would leak one for every hook a blocking plugin ever answered.
    lane = lane_of(4)

    async def calls() -> set[int]:
        return {await lane.call(threading.get_ident) for _ in range(5)}

    assert len(asyncio.run(calls())) == 1
    assert len(threads_of(lane)) == 1


def test_the_lane_runs_as_many_calls_at_once_as_its_size():
    # Each of three calls waits for the other two: fewer threads than calls at once,
    # and the barrier breaks instead of the calls being served side by side.
    lane = lane_of(3)
    barrier = threading.Barrier(3, timeout=10)

    async def calls() -> list[int]:
        return await asyncio.gather(*(lane.call(barrier.wait) for _ in range(3)))

    assert sorted(asyncio.run(calls())) == [0, 1, 2]
    assert len(threads_of(lane)) == 3


def test_a_thread_that_cannot_be_started_costs_the_lane_no_slot(monkeypatch):
    # The system may refuse a new thread (its limit reached): the call fails, and the
    # lane's only slot must be free again for the next one, or the plugin waits forever.
    lane = lane_of(1)
    start = threading.Thread.start

    def refused(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def calls() -> str:
        monkeypatch.setattr(threading.Thread, "start", refused)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await lane.call(str)
        monkeypatch.setattr(threading.Thread, "start", start)
        return await asyncio.wait_for(lane.call(str, ("served",)), timeout=10)

    assert asyncio.run(calls()) == "served"
    assert lane.busy == 0
