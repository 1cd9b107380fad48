"""The watchdog that holds plugin hooks to their timeouts (mailproxy/deadlines.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailproxy.deadlines import TICK as DEFAULT_TICK, Watchdog

TICK = 0.01


async def _call(watchdog: Watchdog, seconds: float, work) -> tuple[str, bool]:
    """Await `work` under a deadline as the policy engine does: what happened, and
    whether the watchdog alone cancelled it."""
    deadline = watchdog.arm(seconds)
    try:
        await work
    except asyncio.CancelledError:
        return "cancelled", deadline.expired_alone()
    finally:
        watchdog.disarm(deadline)
    return "finished", deadline.expired_alone()


def test_a_call_that_overstays_is_cancelled_soon_after_its_deadline():
    async def main():
        watchdog = Watchdog(TICK)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await _call(watchdog, 0.05, asyncio.sleep(10))
        elapsed = loop.time() - started
        task = asyncio.current_task()
        return outcome, elapsed, task.cancelling(), len(watchdog)

    outcome, elapsed, cancelling, armed = asyncio.run(main())
    assert outcome == ("cancelled", True)
    assert 0.05 <= elapsed < 5  # at most a tick late; the bound is loose for busy machines
    assert cancelling == 0  # the watchdog's request was taken back: the task goes on
    assert armed == 0


def test_a_call_that_ends_in_time_is_left_alone_and_forgotten():
    async def main():
        watchdog = Watchdog(TICK)
        outcome = await _call(watchdog, 1.0, asyncio.sleep(0.02))
        await asyncio.sleep(3 * TICK)  # the watchdog looks again: nothing to cancel
        return outcome, len(watchdog), asyncio.current_task().cancelling()

    assert asyncio.run(main()) == (("finished", False), 0, 0)


def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline():
    async def session(watchdog: Watchdog, results: list):
        results.append(await _call(watchdog, 10.0, asyncio.sleep(10)))
        results.append(asyncio.current_task().cancelling())

    async def main():
        watchdog, results = Watchdog(TICK), []
        task = asyncio.create_task(session(watchdog, results))
        await asyncio.sleep(0.02)
        task.cancel()  # a shutdown, not the deadline
        await task
        return results

    assert asyncio.run(main()) == [("cancelled", False), 1]


def test_a_shutdown_during_an_expired_call_still_stops_the_task():
    async def session(watchdog: Watchdog, results: list):
        async def hangs_then_shut_down():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                asyncio.current_task().cancel()  # the shutdown arrives meanwhile
                raise
        results.append(await _call(watchdog, 0.02, hangs_then_shut_down()))
        results.append(asyncio.current_task().cancelling())

    async def main():
        watchdog, results = Watchdog(TICK), []
        task = asyncio.create_task(session(watchdog, results))
        with pytest.raises(asyncio.CancelledError):
            await task  # the shutdown's cancellation was kept
        return results, task.cancelled()

    assert asyncio.run(main()) == ([("cancelled", False), 1], True)


def test_a_hook_that_swallows_the_cancellation_leaves_no_request_behind():
    async def swallows():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "late answer"

    async def main():
        watchdog = Watchdog(TICK)
        outcome = await _call(watchdog, 0.02, swallows())
        await asyncio.sleep(0)  # would raise here if a cancellation were still pending
        return outcome, asyncio.current_task().cancelling()

    assert asyncio.run(main()) == (("finished", True), 0)


def test_many_calls_share_one_watchdog_and_only_the_late_ones_are_cut():
    async def main():
        watchdog = Watchdog(TICK)
        quick = [_call(watchdog, 5.0, asyncio.sleep(0.01)) for _ in range(20)]
        slow = [_call(watchdog, 0.03, asyncio.sleep(10)) for _ in range(5)]
        return await asyncio.gather(*quick, *slow), len(watchdog)

    outcomes, armed = asyncio.run(main())
    assert outcomes == [("finished", False)] * 20 + [("cancelled", True)] * 5
    assert armed == 0


def test_a_watchdog_used_on_a_new_event_loop_starts_afresh():
    watchdog = Watchdog(TICK)
    for _ in range(2):
        assert asyncio.run(_call(watchdog, 0.02, asyncio.sleep(10))) == ("cancelled", True)


def test_the_default_watchdog_cuts_a_call_off_within_a_tick_of_its_deadline():
    async def main():
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await _call(Watchdog(), 0.05, asyncio.sleep(10))
        return outcome, loop.time() - started

    outcome, elapsed = asyncio.run(main())
    assert outcome == ("cancelled", True)
    assert DEFAULT_TICK <= 0.1  # "a hook's timeout, give or take a tenth of a second"
    assert 0.05 <= elapsed < 0.05 + DEFAULT_TICK + 0.5  # the slack is for a busy machine


def test_the_watchdog_sleeps_between_its_looks():
    # While a call waits, the watchdog looks every tick; it must not spin the loop.
    async def main():
        watchdog = Watchdog()
        cpu = time.process_time()
        outcome = await _call(watchdog, 10.0, asyncio.sleep(0.5))
        return outcome, time.process_time() - cpu

    outcome, cpu = asyncio.run(main())
    assert outcome == ("finished", False)
    assert cpu < 0.2, cpu
