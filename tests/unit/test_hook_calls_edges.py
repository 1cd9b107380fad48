"""One hook call at its edges (mailproxy/hook_calls.py): the stall warning for a plain
hook at and past its timeout, the time a failing hook is reported to have taken, and a
`blocking` hook that hands back a coroutine from its thread.

Where a duration matters, the hook moves a stand-in for time.perf_counter instead of
sleeping, so the numbers are exact however busy the machine is."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from mailproxy import hookimpl
from mailproxy.plugins import PluginSettings
from mailproxy.policy import FAILED_TEMPFAIL
from mailproxy.session import Envelope
from mailproxy.verdict import Verdict
from tests.unit.test_policy_engine import build, errors, mail, sample, unique
from tests.support.clock import Clock  # time.perf_counter as the hooks below move it


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    return clock


class Takes:
    """A plain smtp_mail that takes `seconds` on the clock, then answers or raises."""

    def __init__(self, clock: Clock, seconds: float, error: Exception | None = None) -> None:
        self.clock, self.seconds, self.error = clock, seconds, error

    @hookimpl
    def smtp_mail(self):
        self.clock.now += self.seconds
        if self.error:
            raise self.error


class TakesAsync(Takes):
    @hookimpl
    async def smtp_mail(self):
        self.clock.now += self.seconds
        if self.error:
            raise self.error


STALLED = "plugin {name}: smtp_mail ran {took:.1f}s inside the event loop, past its {timeout}s timeout"


@pytest.mark.parametrize(
    ("took", "timeout", "warned"),
    [
        (2.5, 2.0, True),
        (2.0, 2.0, False),  # exactly its timeout is not past it
        (0.5, 2.0, False),
    ],
)
@pytest.mark.parametrize("error", [None, RuntimeError("lookup failed")], ids=["answers", "raises"])
def test_a_plain_hook_is_warned_about_only_when_it_ran_past_its_timeout(clock, caplog, took, timeout, warned, error):
    # Answering or raising, it held up every session meanwhile: the warning says so.
    name = unique("stalls")
    engine = build((name, Takes(clock, took, error), PluginSettings(timeout=timeout)))
    # A stall delays the answer, it does not fail it; a raise fails it all the same.
    assert mail(engine) is (Verdict.cont() if error is None else FAILED_TEMPFAIL)
    stalls = [r.getMessage() for r in caplog.records if "inside the event loop" in r.getMessage()]
    expected = STALLED.format(name=name, took=took, timeout=timeout)
    assert [line.startswith(expected) for line in stalls] == ([True] if warned else [])


@pytest.mark.parametrize("plugin_class", [Takes, TakesAsync])
def test_a_failing_hook_is_reported_with_the_time_it_took(clock, plugin_class):
    # The duration histogram and the why-trace are where an administrator looks for
    # the plugin that slows mail down; a failure must show its own time there too.
    name = unique("fails-slowly")
    engine = build((name, plugin_class(clock, 0.75, RuntimeError("lookup failed")), None))
    before = sample("mailproxy_plugin_duration_seconds_sum", plugin=name, hook="smtp_mail")
    envelope = Envelope()
    assert mail(engine, envelope) is FAILED_TEMPFAIL
    assert sample("mailproxy_plugin_duration_seconds_sum", plugin=name, hook="smtp_mail") == before + 0.75
    assert [(e.plugin, e.reason, e.ms) for e in envelope.trace] == [(name, "plugin failed (exception)", 750.0)]


class HandsBackCoroutine:
    """A plain smtp_mail that does its blocking part in its thread and leaves the rest
    to a coroutine it returns."""

    def __init__(self, rest) -> None:
        self.rest = rest
        self.threads: list[threading.Thread] = []

    @hookimpl
    def smtp_mail(self):
        self.threads.append(threading.current_thread())
        return self.rest()


async def rejects() -> Verdict:
    await asyncio.sleep(0)
    return Verdict.reject(550, "5.7.1", "Listed")


async def hangs() -> None:
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    ("rest", "verdict", "timeouts"),
    [
        (rejects, Verdict.reject(550, "5.7.1", "Listed"), 0),  # the coroutine's answer counts
        (hangs, FAILED_TEMPFAIL, 1),  # and the plugin's timeout holds for it
    ],
    ids=["answers", "hangs"],
)
def test_a_blocking_hook_that_hands_back_a_coroutine_is_judged_by_it(rest, verdict, timeouts):
    name = unique("hands-back")
    plugin = HandsBackCoroutine(rest)
    engine = build((name, plugin, PluginSettings(blocking=True, timeout=0.2)))
    before = errors(name, "smtp_mail", "timeout")
    assert mail(engine) == verdict
    assert errors(name, "smtp_mail", "timeout") == before + timeouts
    assert errors(name, "smtp_mail", "bad_result") == 0
    assert plugin.threads and plugin.threads[0] is not threading.main_thread()


# An async hook's first step runs at once, with no deadline armed; the deadline armed
# when it first waits holds what is left of its timeout.


class Spins:
    """Awaits nothing but the event loop's next turn (no future that a cancellation
    could cancel) until it is cancelled or has spun for `seconds`, then answers."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled = False

    @hookimpl
    async def smtp_mail(self):
        until = time.monotonic() + self.seconds
        try:
            while time.monotonic() < until:
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return Verdict.accept()


def test_a_hook_that_awaits_no_future_is_still_cancelled_at_its_timeout():
    name = unique("spins")
    plugin = Spins(seconds=3)
    engine = build((name, plugin, PluginSettings(timeout=0.1)))
    before = errors(name, "smtp_mail", "timeout")
    assert mail(engine) is FAILED_TEMPFAIL
    assert plugin.cancelled is True
    assert errors(name, "smtp_mail", "timeout") == before + 1


def test_a_hook_that_awaits_no_future_answers_within_its_timeout():
    name = unique("spins-briefly")
    plugin = Spins(seconds=0.01)
    engine = build((name, plugin, PluginSettings(timeout=5)))
    assert mail(engine) == Verdict.accept()
    assert plugin.cancelled is False


class FirstStepTakes:
    """An async smtp_mail whose first step takes `seconds` on the clock, then waits."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    @hookimpl
    async def smtp_mail(self):
        self.clock.now += self.seconds
        await asyncio.sleep(30)


def test_the_deadline_armed_after_the_first_step_is_what_is_left_of_the_timeout(clock):
    name = unique("first-step")
    engine = build((name, FirstStepTakes(clock, 5.0), PluginSettings(timeout=5)))
    before = errors(name, "smtp_mail", "timeout")
    started = time.monotonic()
    assert mail(engine) is FAILED_TEMPFAIL
    # Nothing of its 5 s was left: cancelled at the watchdog's next look, not 5 s on.
    assert time.monotonic() - started < 2.5
    assert errors(name, "smtp_mail", "timeout") == before + 1


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [(None, Verdict.cont()), (Verdict.reject(550, "5.7.1", "Listed"), Verdict.reject(550, "5.7.1", "Listed"))],
)
@pytest.mark.parametrize("waits", [0.0, 0.2], ids=["at-once", "after-a-wait"])
def test_an_async_hooks_answer_is_its_answer(answer, verdict, waits):
    """Whether it answers in its first step or after waiting past the watchdog's tick
    (0.05 s), well within its timeout."""

    class Answers:
        @hookimpl
        async def smtp_mail(self):
            if waits:
                await asyncio.sleep(waits)
            return answer

    name = unique("answers")
    engine = build((name, Answers(), PluginSettings(timeout=5)))
    before = errors(name, "smtp_mail", "exception"), errors(name, "smtp_mail", "timeout")
    assert mail(engine) == verdict
    assert (errors(name, "smtp_mail", "exception"), errors(name, "smtp_mail", "timeout")) == before


class SwallowsTheCancellation:
    """Ignores the watchdog's cancellation, then looks at what it is handling and, by
    mistake, re-raises it with a bare `raise`."""

    def __init__(self) -> None:
        self.handling: object = "not looked"

    @hookimpl
    async def smtp_mail(self):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
        self.handling = sys.exc_info()[1]
        raise  # noqa: PLE0704 - the plugin's bug: nothing is being handled here


def test_a_cancellation_thrown_into_a_hook_is_not_left_as_the_one_it_handles():
    """As with a plain await: once the hook has swallowed the cancellation, nothing is
    being handled, so its bare `raise` is a RuntimeError (a plugin exception), not the
    cancellation again (a timeout)."""
    name = unique("swallows")
    plugin = SwallowsTheCancellation()
    engine = build((name, plugin, PluginSettings(timeout=0.1)))
    before = errors(name, "smtp_mail", "exception"), errors(name, "smtp_mail", "timeout")
    assert mail(engine) is FAILED_TEMPFAIL
    assert plugin.handling is None
    assert (errors(name, "smtp_mail", "exception"), errors(name, "smtp_mail", "timeout")) == (before[0] + 1, before[1])
