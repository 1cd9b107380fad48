"""Counts added to their counters in batches: every count arrives, once."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry, Counter

from mailproxy import deferred_counts
from mailproxy.deferred_counts import DeferredCount, deferred, flush_deferred

# A registry of its own: reading it shows what the counter holds, without the flush
# that a collection of the default registry makes first.
registry = CollectorRegistry()
counter = Counter("mailproxy_test_deferred_total", "Counts of the deferred counts' tests.", ["case"],
                  registry=registry)


def value(case: str) -> float:
    return registry.get_sample_value("mailproxy_test_deferred_total", {"case": case}) or 0.0


def test_counts_wait_for_a_flush_and_arrive_once():
    count = DeferredCount(counter.labels("flush"))
    count.inc()
    count.inc(2)
    assert value("flush") == 0
    flush_deferred()
    flush_deferred()
    assert value("flush") == 3
    count.inc()
    REGISTRY.get_sample_value("mailproxy_test_deferred_total")  # a collection flushes first
    assert value("flush") == 4


def test_one_child_per_label_set():
    assert deferred(counter, "same") is deferred(counter, "same")
    assert deferred(counter, "same") is not deferred(counter, "other")


def test_a_negative_count_is_refused_as_by_a_counter():
    with pytest.raises(ValueError):
        deferred(counter, "negative").inc(-1)
    assert value("negative") == 0


def test_another_threads_counts_go_to_the_counter_itself():
    count = deferred(counter, "elsewhere")  # made by this thread
    thread = threading.Thread(target=count.inc, args=(2,))
    thread.start()
    thread.join()
    assert value("elsewhere") == 2  # no flush: only the making thread's counts wait for one
    count.inc()
    assert value("elsewhere") == 2


def test_counts_from_other_threads_and_flushes_from_others_are_all_kept():
    count = deferred(counter, "threads")
    done = threading.Event()

    def flush_meanwhile():
        while not done.is_set():
            flush_deferred()

    def count_many():
        for _ in range(20_000):
            count.inc()

    flusher = threading.Thread(target=flush_meanwhile)
    others = [threading.Thread(target=count_many) for _ in range(3)]
    flusher.start()
    for thread in others:
        thread.start()
    count_many()  # the thread that made it
    for thread in others:
        thread.join()
    done.set()
    flusher.join()
    flush_deferred()
    assert value("threads") == 80_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_count_its_parents_counts_again():
    count = deferred(counter, "fork")
    count.inc(5)
    pid = os.fork()  # flushes first
    if pid == 0:  # the child: the parent's counts are the counter's already
        code = 1
        try:
            flush_deferred()
            before = value("fork")
            count.inc()
            flush_deferred()
            code = 0 if (before, value("fork")) == (5, 6) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert value("fork") == 5


def test_a_serving_process_flushes_every_interval_and_when_it_stops():
    count = deferred(counter, "serving")

    async def serve():
        flushing = asyncio.create_task(deferred_counts.keep_flushing(0.05))
        count.inc()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if value("serving") == 1:
                break
        else:
            raise AssertionError("not flushed while serving")
        count.inc()
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        return value("serving")

    assert asyncio.run(serve()) == 2


class FailingOnce:
    """A counter whose first update fails, as a multiprocess file on a full disk would."""

    def __init__(self, counter) -> None:
        self.counter = counter
        self.failed = False

    def inc(self, amount: float = 1) -> None:
        if not self.failed:
            self.failed = True
            raise OSError(28, "No space left on device")
        self.counter.inc(amount)


def test_a_counter_that_cannot_be_updated_keeps_its_counts_and_stops_no_other(caplog):
    failing = DeferredCount(FailingOnce(counter.labels("failing")))
    healthy = DeferredCount(counter.labels("healthy"))
    failing.inc(2)
    healthy.inc(3)
    with caplog.at_level(logging.ERROR, "mailproxy.metrics"):
        flush_deferred()  # raises nothing
        flush_deferred()
    assert (value("failing"), value("healthy")) == (2, 3)  # kept, then added once
    assert len([r for r in caplog.records if "cannot add the counts" in r.getMessage()]) == 1


def test_a_serving_process_keeps_flushing_after_a_failed_flush():
    count = DeferredCount(FailingOnce(counter.labels("keeps_flushing")))

    async def serve():
        flushing = asyncio.create_task(deferred_counts.keep_flushing(0.01))
        count.inc()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if value("keeps_flushing") == 1:
                break
        running = not flushing.done()
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        return value("keeps_flushing"), running

    assert asyncio.run(serve()) == (1, True)


def test_a_forked_child_starts_with_nothing_to_flush():
    # What a thread counted after the parent's flush, before the fork, is the parent's.
    count = deferred(counter, "after_flush")
    count.inc(4)
    deferred_counts._after_fork_in_child()  # noqa: SLF001 (what the child runs first)
    flush_deferred()
    assert value("after_flush") == 0
