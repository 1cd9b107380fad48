"""PolicyEngine at its edges: scores exactly at a threshold and where they go, the busy
threads of a `blocking` plugin (counted, given back, never keeping the process alive),
plugins left out of the list, and what the log lines and the duration metric say."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client import REGISTRY

from mailproxy import hookimpl
from mailproxy.config import PolicySettings
from mailproxy.plugins import LoadedPlugin, PluginSettings, new_plugin_manager
from mailproxy.policy import FAILED_TEMPFAIL, SCORE_TEMPFAIL, PolicyEngine
from mailproxy.session import Envelope, Session
from mailproxy.verdict import Action, Verdict

_names = itertools.count()


def engine_with(plugin, settings: PluginSettings | None = None,
                policy: PolicySettings | None = None) -> tuple[PolicyEngine, str]:
    name = f"edge-{next(_names)}"
    manager = new_plugin_manager()
    manager.register(plugin, name=name)
    return PolicyEngine(manager, [LoadedPlugin(name, "test", plugin, settings or PluginSettings())], policy), name


class ScoresAtConnect:
    def __init__(self, points: float) -> None:
        self.points = points

    @hookimpl
    def smtp_connect(self):
        return Verdict.score("CONNECT", self.points)


@pytest.mark.parametrize(("points", "action"), [(5.0, Action.REJECT), (4.5, Action.CONTINUE)])
def test_without_a_transaction_the_session_score_alone_meets_the_threshold(points, action):
    engine, _ = engine_with(ScoresAtConnect(points), policy=PolicySettings(reject_score=5))
    session = Session("smtp", "test")
    assert asyncio.run(engine.run("smtp_connect", session)).action is action
    assert session.score == points


class BlocksUntilReleased:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.returned = threading.Event()
        self.threads: list[threading.Thread] = []

    @hookimpl
    def smtp_mail(self):
        self.threads.append(threading.current_thread())
        try:
            self.release.wait(10)
        finally:
            self.returned.set()


def busy_threads(name: str) -> float:
    return REGISTRY.get_sample_value("mailproxy_plugin_threads_busy", {"plugin": name}) or 0.0


async def until_no_thread_is_busy(name: str) -> None:
    deadline = time.monotonic() + 10
    while busy_threads(name):
        assert time.monotonic() < deadline, "the lane never took its thread back"
        await asyncio.sleep(0.01)


def test_a_thread_that_came_back_is_no_longer_counted_busy(caplog):
    plugin = BlocksUntilReleased()
    engine, name = engine_with(plugin, PluginSettings(blocking=True, timeout=0.2))
    session = Session("smtp", "test")

    def mail():
        return engine.run("smtp_mail", session, None, address="a@example.test", params={})

    async def scenario():
        first = await mail()
        assert busy_threads(name) == 1  # held by the call that timed out
        plugin.release.set()
        await until_no_thread_is_busy(name)  # it came back, and the loop took it back
        plugin.release.clear()
        second = await mail()
        return first, second

    try:
        assert asyncio.run(scenario()) == (FAILED_TEMPFAIL, FAILED_TEMPFAIL)
    finally:
        plugin.release.set()
    timeouts = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert timeouts == [f"plugin {name}: smtp_mail timed out after 0.2s (1 of its 8 threads still busy)"] * 2


def test_a_thread_that_comes_back_after_the_loop_closed_ends_quietly(monkeypatch):
    unhandled = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    plugin = BlocksUntilReleased()
    engine, _ = engine_with(plugin, PluginSettings(blocking=True, timeout=0.1))
    session = Session("smtp", "test")
    verdict = asyncio.run(engine.run("smtp_mail", session, None, address="a@example.test", params={}))
    assert verdict is FAILED_TEMPFAIL
    plugin.release.set()  # the plugin returns when the loop is gone (the proxy stopped)
    assert plugin.returned.wait(10)
    time.sleep(0.2)  # what follows the hook's return in its thread: nothing must escape
    assert unhandled == []


class CountsItsThreads:
    def __init__(self) -> None:
        self.threads: set[threading.Thread] = set()

    @hookimpl
    def smtp_mail(self):
        self.threads.add(threading.current_thread())


def test_a_blocking_plugin_reuses_its_threads():
    plugin = CountsItsThreads()
    engine, name = engine_with(plugin, PluginSettings(blocking=True, timeout=5))
    session = Session("smtp", "test")

    async def calls():
        for _ in range(5):  # one after another: one thread serves them all
            await engine.run("smtp_mail", session, None, address="a@example.test", params={})
        await asyncio.gather(*(  # at once: one thread each, up to the lane's bound
            engine.run("smtp_mail", session, None, address="a@example.test", params={}) for _ in range(3)))

    asyncio.run(calls())
    assert 1 <= len(plugin.threads) <= 3
    assert all(t.daemon and t.name == f"plugin {name}" and t is not threading.main_thread() for t in plugin.threads)
    assert busy_threads(name) == 0


class Answers:
    def __init__(self, calls: list, tag: str, answer=None) -> None:
        self.calls, self.tag, self.answer = calls, tag, answer

    @hookimpl
    def smtp_mail(self):
        self.calls.append(self.tag)
        return self.answer


def test_a_plugin_left_out_of_the_list_does_not_hide_the_ones_registered_after_it():
    calls: list = []
    manager = new_plugin_manager()
    manager.register(Answers(calls, "stray", Verdict.reject()), name=f"edge-{next(_names)}")
    listed_name, listed = f"edge-{next(_names)}", Answers(calls, "listed", Verdict.accept())
    manager.register(listed, name=listed_name)
    engine = PolicyEngine(manager, [LoadedPlugin(listed_name, "test", listed, PluginSettings())])
    verdict = asyncio.run(engine.run("smtp_mail", Session("smtp", "test"), None, address="a@example.test", params={}))
    assert verdict == Verdict.accept()
    assert calls == ["listed"]


def test_a_hook_within_its_timeout_is_not_logged_as_stalled(caplog):
    engine, name = engine_with(Answers([], "quick"), PluginSettings(timeout=30))
    asyncio.run(engine.run("smtp_mail", Session("smtp", "test"), None, address="a@example.test", params={}))
    assert "ran" not in caplog.text and "blocking = true" not in caplog.text


@pytest.mark.parametrize(("observe", "suffix"), [(True, " (observe mode, not enforced)"), (False, "")])
def test_the_verdict_log_line_says_whether_it_was_enforced(caplog, observe, suffix):
    caplog.set_level("INFO", logger="mailproxy.policy")
    engine, name = engine_with(Answers([], "rejects", Verdict.reject()), PluginSettings(observe=observe))
    session = Session("smtp", "test")
    asyncio.run(engine.run("smtp_mail", session, None, address="a@example.test", params={}))
    [line] = [r.getMessage() for r in caplog.records if f"plugin {name} smtp_mail" in r.getMessage()]
    assert line.endswith(f"plugin {name} smtp_mail: reject{suffix}")


HANGS_AT_EXIT = """
import asyncio, threading
from mailproxy import hookimpl
from mailproxy.plugins import LoadedPlugin, PluginSettings, new_plugin_manager
from mailproxy.policy import PolicyEngine
from mailproxy.session import Session

class Hangs:
    @hookimpl
    def smtp_mail(self):
        threading.Event().wait()

manager = new_plugin_manager()
manager.register(Hangs(), name="hangs")
settings = PluginSettings(blocking=True, timeout=0.1)
engine = PolicyEngine(manager, [LoadedPlugin("hangs", "test", Hangs(), settings)])
print(asyncio.run(engine.run("smtp_mail", Session("smtp", "test"), None, address="a@b", params={})).action.value)
"""


def test_a_thread_stuck_in_a_plugin_does_not_keep_the_process_alive():
    done = subprocess.run([sys.executable, "-c", HANGS_AT_EXIT], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "tempfail"), done.stderr


def test_a_score_exactly_at_the_tempfail_threshold_tempfails():
    engine, _ = engine_with(ScoresAtConnect(5.0), policy=PolicySettings(tempfail_score=5))
    assert asyncio.run(engine.run("smtp_connect", Session("smtp", "test"))) is SCORE_TEMPFAIL


class ScoresCommands:
    @hookimpl
    def smtp_command(self):
        return Verdict.score("COMMAND", 1)


def test_command_scores_go_to_the_envelope_only_once_a_transaction_is_open():
    engine, _ = engine_with(ScoresCommands())
    session, envelope = Session("smtp", "test"), Envelope()
    asyncio.run(engine.run("smtp_command", session, envelope))
    assert (session.score, envelope.score) == (1.0, 0.0)
    envelope.mail_from = "a@example.test"
    asyncio.run(engine.run("smtp_command", session, envelope))
    assert (session.score, envelope.score) == (1.0, 1.0)


def test_the_time_a_hook_took_is_what_it_took():
    engine, name = engine_with(Answers([], "quick"))
    labels = {"plugin": name, "hook": "smtp_mail"}
    started = time.perf_counter()
    asyncio.run(engine.run("smtp_mail", Session("smtp", "test"), None, address="a@example.test", params={}))
    elapsed = time.perf_counter() - started
    assert 0 <= REGISTRY.get_sample_value("mailproxy_plugin_duration_seconds_sum", labels) <= elapsed


class RaisesFromItsThread:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    @hookimpl
    def smtp_mail(self):
        raise self.error


@pytest.mark.parametrize("error", [StopIteration(), GeneratorExit(), SystemExit(3), KeyboardInterrupt()],
                         ids=lambda e: type(e).__name__)
def test_whatever_a_blocking_hook_raises_is_its_failure_at_once(error, caplog):
    # StopIteration cannot be set on a Future, and GeneratorExit thrown into the
    # awaiting coroutine would end the session instead of reaching the containment.
    engine, name = engine_with(RaisesFromItsThread(error), PluginSettings(blocking=True, timeout=5))
    session = Session("smtp", "test")
    started = time.monotonic()
    verdict = asyncio.run(engine.run("smtp_mail", session, None, address="a@example.test", params={}))
    assert verdict is FAILED_TEMPFAIL
    assert time.monotonic() - started < 4  # failed when it raised, not at its timeout
    assert f"plugin {name}: smtp_mail raised" in caplog.text and "timed out" not in caplog.text
    assert busy_threads(name) == 0


class ScoresAFreshSymbolEachTime:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def smtp_mail(self):
        self.calls += 1
        return Verdict.score(f"RULE_{self.calls}", 1)


def test_symbols_are_counted_per_plugin_and_bounded():
    from mailproxy.metrics import SYMBOLS_PER_PLUGIN

    engine, name = engine_with(ScoresAFreshSymbolEachTime())

    async def messages():
        for _ in range(SYMBOLS_PER_PLUGIN + 5):
            await engine.run("smtp_mail", Session("smtp", "test"), Envelope(), address="a@example.test", params={})

    asyncio.run(messages())

    def counted(symbol):
        return REGISTRY.get_sample_value("mailproxy_symbols_total", {"plugin": name, "symbol": symbol, "enforced": "true"})

    assert counted("RULE_1") == 1 and counted(f"RULE_{SYMBOLS_PER_PLUGIN}") == 1
    assert counted(f"RULE_{SYMBOLS_PER_PLUGIN + 1}") is None  # past the bound: OTHER
    assert counted("OTHER") == 5
