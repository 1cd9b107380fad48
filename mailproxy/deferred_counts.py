"""Counts taken several times per message, added to their Prometheus counters in
batches.

prometheus_client's own counter update takes some 4,000 instructions, and twice that
in its multiprocess mode (`workers > 1`), where each update is written to a shared
file; a DeferredCount adds to an int. What accumulated reaches the counters at
`flush_deferred`: before every collection of the default registry (a scrape of one
process, a test's read), every FLUSH_INTERVAL while a process serves, when it stops,
and before a fork. A process killed outright (SIGKILL, the OOM killer) loses what it
counted since its last flush: at most FLUSH_INTERVAL's worth.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading

from prometheus_client import REGISTRY

# Seconds a serving process keeps counts before they reach its counters: what a
# scrape of `workers > 1` may lag behind (a one-process scrape flushes first).
FLUSH_INTERVAL = 1.0

_get_ident = threading.get_ident
log = logging.getLogger("mailproxy.metrics")


class DeferredCount:
    """A counter child's counts, kept until the next flush. The thread that made it
    (the event loop's) counts here; any other counts on the counter itself, so each
    count has one writer and none is lost."""

    __slots__ = ("_counter", "_thread", "_count", "_flushed")

    def __init__(self, counter) -> None:
        self._counter = counter
        self._thread = threading.get_ident()
        self._count = 0
        self._flushed = 0  # written by flush_deferred under its lock, and after a fork
        with _flush_lock:
            _deferred.append(self)

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        if _get_ident() == self._thread:
            self._count += amount
        else:
            self._counter.inc(amount)

    def _flush(self) -> None:
        count = self._count
        if count != self._flushed:
            self._counter.inc(count - self._flushed)
            self._flushed = count


_deferred: list[DeferredCount] = []
_flush_lock = threading.Lock()
_failing = False  # whether the last flush failed: its failure is logged, not each one


@functools.cache
def deferred(metric, *label_values: str) -> DeferredCount:
    """The counter `metric.labels(*label_values)`, counted through a DeferredCount."""
    return DeferredCount(metric.labels(*label_values))


def flush_deferred() -> None:
    """Add every DeferredCount's accumulated counts to its counter. One that cannot
    (its multiprocess file cannot be written) keeps them for the next flush, and
    stops neither the others nor the caller."""
    global _failing
    with _flush_lock:
        failed = False
        for count in _deferred:
            try:
                count._flush()
            except Exception:
                if not (_failing or failed):
                    log.exception("metrics: cannot add the counts kept to a counter; kept for later")
                failed = True
        _failing = failed


def _after_fork_in_child() -> None:
    """A forked child starts with nothing to flush: what was counted before the fork
    is the parent's to flush (even if a thread counted between the parent's flush and
    the fork)."""
    global _flush_lock
    _flush_lock = threading.Lock()  # another thread may have held the parent's at the fork
    for count in _deferred:
        count._flushed = count._count


class _FlushFirst:
    """Registered before every metric, so a collection of the registry reads the
    counters with what their DeferredCounts accumulated; it exposes nothing itself."""

    def collect(self) -> list:
        flush_deferred()
        return []

    def describe(self) -> list:
        return []


REGISTRY.register(_FlushFirst())
# A forked worker must not count its parent's counts again.
os.register_at_fork(before=flush_deferred, after_in_child=_after_fork_in_child)


async def keep_flushing(interval: float = FLUSH_INTERVAL) -> None:
    """Flush every `interval` seconds until cancelled, and once more then: a serving
    process's task."""
    try:
        while True:
            await asyncio.sleep(interval)
            flush_deferred()
    finally:
        flush_deferred()  # flush_deferred raises nothing: the task ends only when cancelled
