"""PolicyEngine on real pluggy plugin managers: order, short-circuits, containment,
blocking plugins in threads, observe mode, session and transaction scores, refusals at
connect, first_result and notify.

Plugin names are unique per test so that the process-wide Prometheus counters can be
compared before and after.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
import time

import pytest
from prometheus_client import REGISTRY

from mailproxy import hookimpl
from mailproxy.config import PolicySettings
from mailproxy.plugins import LoadedPlugin, PluginSettings, new_plugin_manager
from mailproxy.hook_calls import BLOCKING_THREADS
from mailproxy.policy import FAILED_REJECT, FAILED_TEMPFAIL, SCORE_TEMPFAIL, PolicyEngine
from mailproxy.session import Envelope, Session
from mailproxy.verdict import Action, Reply, Verdict

_ids = itertools.count()


def unique(name: str) -> str:
    return f"{name}-{next(_ids)}"


def build(*plugins, settings: PolicySettings | None = None, register_order=None) -> PolicyEngine:
    """plugins: (name, instance, PluginSettings | None), in the order they should run."""
    manager = new_plugin_manager()
    loaded = [LoadedPlugin(n, "test", i, s or PluginSettings()) for n, i, s in plugins]
    for name, instance, _ in (register_order or plugins):
        manager.register(instance, name=name)
    return PolicyEngine(manager, loaded, settings)


def mail(engine: PolicyEngine, envelope: Envelope | None = None) -> Verdict:
    return asyncio.run(
        engine.run("smtp_mail", Session("smtp", "test"), envelope, address="a@example.test", params={})
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def errors(plugin: str, hook: str, kind: str) -> float:
    return sample("mailproxy_plugin_errors_total", plugin=plugin, hook=hook, kind=kind)


def verdicts(plugin: str, hook: str, action: str, enforced: str) -> float:
    return sample(
        "mailproxy_verdicts_total", plugin=plugin, hook=hook, action=action, enforced=enforced
    )


class Returns:
    """smtp_mail answers a fixed value and records that it ran."""

    def __init__(self, calls: list, tag: str, answer=None) -> None:
        self.calls, self.tag, self.answer = calls, tag, answer

    @hookimpl
    def smtp_mail(self, address):
        self.calls.append((self.tag, address))
        return self.answer


class Raises:
    @hookimpl
    def smtp_mail(self):
        raise RuntimeError("plugin bug")


class Sleeps:
    def __init__(self) -> None:
        self.cancelled = False

    @hookimpl
    async def smtp_mail(self):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return Verdict.accept()


# --- order and short-circuits ------------------------------------------------------------


def test_order_follows_loaded_plugins_not_registration():
    calls: list = []
    a, b, c = Returns(calls, "a"), Returns(calls, "b"), Returns(calls, "c")
    plugins = [(unique("a"), a, None), (unique("b"), b, None), (unique("c"), c, None)]
    engine = build(*plugins, register_order=[plugins[2], plugins[0], plugins[1]])
    assert mail(engine) is Verdict.cont()
    assert [tag for tag, _ in calls] == ["a", "b", "c"]

    calls.clear()
    engine = build(plugins[2], plugins[1], plugins[0], register_order=plugins)
    mail(engine)
    assert [tag for tag, _ in calls] == ["c", "b", "a"]
    assert calls[0][1] == "a@example.test"


def test_plugins_not_in_the_list_are_not_run():
    calls: list = []
    listed = (unique("listed"), Returns(calls, "listed"), None)
    manager = new_plugin_manager()
    manager.register(listed[1], name=listed[0])
    manager.register(Returns(calls, "stray", Verdict.reject()), name=unique("stray"))
    engine = PolicyEngine(manager, [LoadedPlugin(listed[0], "test", listed[1], PluginSettings())])
    assert mail(engine) is Verdict.cont()
    assert [tag for tag, _ in calls] == ["listed"]


def test_accept_short_circuits_later_plugins():
    calls: list = []
    accept = Verdict.accept("whitelisted")
    engine = build(
        (unique("first"), Returns(calls, "first"), None),
        (unique("accepts"), Returns(calls, "accepts", accept), None),
        (unique("later"), Returns(calls, "later", Verdict.reject()), None),
    )
    assert mail(engine) is accept
    assert [tag for tag, _ in calls] == ["first", "accepts"]


def test_reject_stops_and_is_counted():
    calls: list = []
    name = unique("rejects")
    reject = Verdict.reject(550, "5.7.1", "Sender address rejected")
    engine = build(
        (name, Returns(calls, "rejects", reject), None),
        (unique("later"), Returns(calls, "later"), None),
    )
    before = verdicts(name, "smtp_mail", "reject", "true")
    assert mail(engine) is reject
    assert [tag for tag, _ in calls] == ["rejects"]
    assert verdicts(name, "smtp_mail", "reject", "true") == before + 1


def test_continue_verdict_and_none_pass_on():
    calls: list = []
    cont = unique("cont")
    engine = build(
        (cont, Returns(calls, "cont", Verdict.cont()), None),
        (unique("none"), Returns(calls, "none", None), None),
        (unique("tf"), Returns(calls, "tf", Verdict.tempfail()), None),
    )
    assert mail(engine) == Verdict.tempfail()
    assert [tag for tag, _ in calls] == ["cont", "none", "tf"]
    # "continue" is not a verdict worth a series.
    assert REGISTRY.get_sample_value(
        "mailproxy_verdicts_total",
        {"plugin": cont, "hook": "smtp_mail", "action": "continue", "enforced": "true"},
    ) is None


def test_hook_without_implementations():
    engine = build((unique("x"), Returns([], "x"), None))
    assert engine.has("smtp_mail") is True
    assert engine.has("smtp_rcpt") is False
    verdict = asyncio.run(engine.run("smtp_rcpt", Session("smtp", "test"), Envelope(), address="b", params={}))
    assert verdict is Verdict.cont()


def test_async_plugin_verdict():
    class AsyncReject:
        @hookimpl
        async def smtp_mail(self, session, envelope, address, params):
            await asyncio.sleep(0)
            return Verdict.reject(553, "5.1.8", f"bad sender {address}")

    engine = build((unique("async"), AsyncReject(), None))
    verdict = mail(engine, Envelope())
    assert verdict.reply == Reply(553, "5.1.8", "bad sender a@example.test")


# --- containment -------------------------------------------------------------------------


def test_raising_plugin_gives_tempfail_by_default():
    calls: list = []
    name = unique("raises")
    engine = build((name, Raises(), None), (unique("later"), Returns(calls, "later"), None))
    before = errors(name, "smtp_mail", "exception")
    verdict = mail(engine)
    assert verdict is FAILED_TEMPFAIL
    assert verdict.reply == Reply(451, "4.3.0", "Temporary local problem, try again later")
    assert calls == []
    assert errors(name, "smtp_mail", "exception") == before + 1


def test_raising_plugin_fail_mode_continue():
    calls: list = []
    name = unique("raises")
    engine = build(
        (name, Raises(), PluginSettings(fail_mode="continue")),
        (unique("later"), Returns(calls, "later"), None),
    )
    before = errors(name, "smtp_mail", "exception")
    assert mail(engine) is Verdict.cont()
    assert [tag for tag, _ in calls] == ["later"]
    assert errors(name, "smtp_mail", "exception") == before + 1


def test_raising_plugin_fail_mode_reject():
    name = unique("raises")
    engine = build((name, Raises(), PluginSettings(fail_mode="reject")))
    before = errors(name, "smtp_mail", "exception")
    verdict = mail(engine)
    assert verdict is FAILED_REJECT
    assert verdict.reply == Reply(554, "5.3.0", "Rejected by local policy")
    assert errors(name, "smtp_mail", "exception") == before + 1


def test_timeout_gives_tempfail_and_cancels_the_call():
    name = unique("sleeps")
    sleeper = Sleeps()
    engine = build((name, sleeper, PluginSettings(timeout=0.05)))
    before_timeout = errors(name, "smtp_mail", "timeout")
    before_exception = errors(name, "smtp_mail", "exception")
    assert mail(engine) is FAILED_TEMPFAIL
    assert sleeper.cancelled is True
    assert errors(name, "smtp_mail", "timeout") == before_timeout + 1
    assert errors(name, "smtp_mail", "exception") == before_exception


def test_sync_plugin_returning_an_awaitable_is_timed_too():
    class ReturnsCoroutine:
        @hookimpl
        def smtp_mail(self):
            return asyncio.sleep(10)

    name = unique("coro")
    engine = build((name, ReturnsCoroutine(), PluginSettings(timeout=0.05, fail_mode="reject")))
    before = errors(name, "smtp_mail", "timeout")
    assert mail(engine) is FAILED_REJECT
    assert errors(name, "smtp_mail", "timeout") == before + 1


def test_non_verdict_result_is_contained():
    calls: list = []
    name = unique("bad-result")
    engine = build(
        (name, Returns(calls, "bad", "yes please"), None),
        (unique("later"), Returns(calls, "later"), None),
    )
    before = errors(name, "smtp_mail", "bad_result")
    assert mail(engine) is FAILED_TEMPFAIL
    assert [tag for tag, _ in calls] == ["bad"]
    assert errors(name, "smtp_mail", "bad_result") == before + 1


def test_non_verdict_result_with_fail_mode_continue():
    calls: list = []
    name = unique("bad-result")
    engine = build(
        (name, Returns(calls, "bad", True), PluginSettings(fail_mode="continue")),
        (unique("later"), Returns(calls, "later"), None),
    )
    before = errors(name, "smtp_mail", "bad_result")
    assert mail(engine) is Verdict.cont()
    assert [tag for tag, _ in calls] == ["bad", "later"]
    assert errors(name, "smtp_mail", "bad_result") == before + 1


OWN_GOALS = [
    SystemExit("plugin calls sys.exit"),
    KeyboardInterrupt(),
    GeneratorExit(),
    asyncio.CancelledError("raised by the plugin itself"),
]


class RaisesBase:
    """smtp_mail raises the given BaseException, as a plain or an async hook."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    @hookimpl
    def smtp_mail(self):
        raise self.error


class RaisesBaseAsync(RaisesBase):
    @hookimpl
    async def smtp_mail(self):
        await asyncio.sleep(0)
        raise self.error


@pytest.mark.parametrize("plugin_class", [RaisesBase, RaisesBaseAsync])
@pytest.mark.parametrize("error", OWN_GOALS, ids=lambda e: type(e).__name__)
def test_every_base_exception_from_a_plugin_is_contained(plugin_class, error):
    calls: list = []
    name = unique("own-goal")
    engine = build((name, plugin_class(error), None), (unique("later"), Returns(calls, "later"), None))
    before = errors(name, "smtp_mail", "exception")
    assert mail(engine) is FAILED_TEMPFAIL
    assert calls == []
    assert errors(name, "smtp_mail", "exception") == before + 1


def test_a_timeout_error_of_the_plugin_is_an_exception_not_a_timeout():
    name = unique("socket-timeout")
    engine = build((name, RaisesBase(TimeoutError("LDAP server did not answer")), None))
    before_timeout = errors(name, "smtp_mail", "timeout")
    before_exception = errors(name, "smtp_mail", "exception")
    assert mail(engine) is FAILED_TEMPFAIL
    assert errors(name, "smtp_mail", "timeout") == before_timeout
    assert errors(name, "smtp_mail", "exception") == before_exception + 1


def test_cancelling_the_session_task_still_cancels_it():
    name = unique("sleeps")
    sleeper = Sleeps()
    engine = build((name, sleeper, None))
    before = errors(name, "smtp_mail", "exception")

    async def scenario():
        task = asyncio.create_task(
            engine.run("smtp_mail", Session("smtp", "test"), None, address="a@example.test", params={})
        )
        await asyncio.sleep(0)  # the task runs until the plugin's sleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sleeper.cancelled is True
    assert errors(name, "smtp_mail", "exception") == before


# --- blocking plugins: plain hooks in threads ---------------------------------------------


class Blocks:
    """A plain smtp_mail that blocks until `release` is set, and counts its threads."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.entered = self.running = self.most = 0
        self.threads: list[threading.Thread] = []

    @hookimpl
    def smtp_mail(self):
        with self.lock:
            self.entered += 1
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.append(threading.current_thread())
        try:
            return Verdict.accept() if self.release.wait(10) else Verdict.reject()
        finally:
            with self.lock:
                self.running -= 1

    def wait_until_idle(self) -> None:
        self.release.set()
        deadline = time.monotonic() + 10
        while self.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.running == 0


def test_a_blocking_plugin_runs_in_a_thread_and_leaves_the_loop_free():
    blocks = Blocks()
    engine = build((unique("blocking"), blocks, PluginSettings(blocking=True)))

    async def scenario():
        call = asyncio.create_task(
            engine.run("smtp_mail", Session("smtp", "test"), None, address="a@example.test", params={})
        )
        await asyncio.sleep(0)
        # Only a loop that is not held by the plugin gets here while the call waits.
        blocks.release.set()
        return await call

    try:
        assert asyncio.run(scenario()) == Verdict.accept()
    finally:
        blocks.wait_until_idle()
    assert blocks.threads[0] is not threading.main_thread()


def test_plain_hooks_run_inline_by_default_and_async_hooks_always():
    seen: list = []

    class Both:
        @hookimpl
        def smtp_mail(self):
            seen.append(threading.current_thread())

        @hookimpl
        async def smtp_rcpt(self):
            seen.append(threading.current_thread())

    inline = build((unique("inline"), Both(), None))
    blocking = build((unique("blocking"), Both(), PluginSettings(blocking=True)))
    mail(inline)
    asyncio.run(blocking.run("smtp_rcpt", Session("smtp", "test"), Envelope(), address="b", params={}))
    assert seen == [threading.main_thread(), threading.main_thread()]


def test_a_blocking_call_sees_the_sessions_context():
    tag = contextvars.ContextVar("tag", default="unset")
    seen: list = []

    class Reads:
        @hookimpl
        def smtp_mail(self):
            seen.append(tag.get())

    engine = build((unique("reads"), Reads(), PluginSettings(blocking=True)))

    async def scenario():
        tag.set("session 1")
        await engine.run("smtp_mail", Session("smtp", "test"), None, address="a", params={})

    asyncio.run(scenario())
    assert seen == ["session 1"]


def test_a_blocking_call_that_times_out_runs_on_in_its_thread():
    name = unique("blocking")
    blocks = Blocks()
    engine = build((name, blocks, PluginSettings(blocking=True, timeout=0.1)))
    before = errors(name, "smtp_mail", "timeout")
    try:
        assert mail(engine) is FAILED_TEMPFAIL
        assert errors(name, "smtp_mail", "timeout") == before + 1
        assert blocks.running == 1  # Python cannot stop it
    finally:
        blocks.wait_until_idle()


def test_a_blocking_call_that_raises_system_exit_is_contained():
    name = unique("blocking")
    engine = build((name, RaisesBase(SystemExit("in a thread")), PluginSettings(blocking=True)))
    before = errors(name, "smtp_mail", "exception")
    assert mail(engine) is FAILED_TEMPFAIL
    assert errors(name, "smtp_mail", "exception") == before + 1


def test_a_hanging_blocking_plugin_holds_at_most_its_threads():
    name = unique("hangs")
    blocks = Blocks()
    engine = build((name, blocks, PluginSettings(blocking=True, timeout=1.0)))
    before = errors(name, "smtp_mail", "timeout")
    session = Session("smtp", "test")

    async def scenario():
        calls = [
            engine.run("smtp_mail", session, None, address="a@example.test", params={})
            for _ in range(BLOCKING_THREADS + 2)
        ]
        verdicts = await asyncio.gather(*calls)
        entered = blocks.entered
        blocks.release.set()  # the plugin recovers: its threads come back
        after = await engine.run("smtp_mail", session, None, address="a@example.test", params={})
        return verdicts, entered, after

    try:
        verdicts, entered, after = asyncio.run(scenario())
    finally:
        blocks.wait_until_idle()
    assert verdicts == [FAILED_TEMPFAIL] * (BLOCKING_THREADS + 2)
    assert entered == blocks.most == BLOCKING_THREADS  # two calls timed out waiting for one
    assert errors(name, "smtp_mail", "timeout") == before + BLOCKING_THREADS + 2
    assert after == Verdict.accept()


def test_cancelling_the_session_task_during_a_blocking_call_still_cancels_it():
    blocks = Blocks()
    engine = build((unique("blocking"), blocks, PluginSettings(blocking=True)))

    async def scenario():
        task = asyncio.create_task(
            engine.run("smtp_mail", Session("smtp", "test"), None, address="a@example.test", params={})
        )
        while not blocks.entered:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 10))
    finally:
        blocks.wait_until_idle()


def test_a_slow_inline_hook_is_logged_with_the_remedy(caplog):
    class Sleepy:
        @hookimpl
        def smtp_mail(self):
            time.sleep(0.1)

    name = unique("sleepy")
    engine = build((name, Sleepy(), PluginSettings(timeout=0.01)))
    assert mail(engine) is Verdict.cont()  # the answer came, late
    assert f"plugin {name}: smtp_mail ran" in caplog.text
    assert "set blocking = true for it" in caplog.text


# --- observe mode ------------------------------------------------------------------------


def test_observe_mode_counts_but_does_not_enforce():
    calls: list = []
    name = unique("observer")
    engine = build(
        (name, Returns(calls, "observer", Verdict.reject()), PluginSettings(observe=True)),
        (unique("later"), Returns(calls, "later"), None),
    )
    before_false = verdicts(name, "smtp_mail", "reject", "false")
    before_true = verdicts(name, "smtp_mail", "reject", "true")
    assert mail(engine) is Verdict.cont()
    assert [tag for tag, _ in calls] == ["observer", "later"]
    assert verdicts(name, "smtp_mail", "reject", "false") == before_false + 1
    assert verdicts(name, "smtp_mail", "reject", "true") == before_true


def test_observe_mode_failure_is_not_enforced():
    name = unique("observer")
    engine = build((name, Raises(), PluginSettings(observe=True)))
    before = verdicts(name, "smtp_mail", "tempfail", "false")
    assert mail(engine) is Verdict.cont()
    assert verdicts(name, "smtp_mail", "tempfail", "false") == before + 1


def test_observe_mode_scores_are_not_added():
    envelope = Envelope()
    name = unique("observer")
    engine = build(
        (name, Returns([], "o", Verdict.score("SPAMMY", 50)), PluginSettings(observe=True)),
        settings=PolicySettings(reject_score=10),
    )
    before = verdicts(name, "smtp_mail", "score", "false")
    assert mail(engine, envelope) is Verdict.cont()
    assert (envelope.score, envelope.symbols) == (0.0, {})
    assert verdicts(name, "smtp_mail", "score", "false") == before + 1


# --- scores ------------------------------------------------------------------------------


def scorers(*points):
    return [
        (unique(f"s{i}"), Returns([], f"s{i}", Verdict.score(f"SYM_{i}", p)), None)
        for i, p in enumerate(points)
    ]


def test_scores_accumulate_in_the_envelope():
    envelope = Envelope()
    engine = build(*scorers(3, 4, -1.5))
    assert mail(engine, envelope) is Verdict.cont()  # no thresholds configured
    assert envelope.score == 5.5
    assert envelope.symbols == {"SYM_0": 3.0, "SYM_1": 4.0, "SYM_2": -1.5}
    # A second MAIL (the first was refused, say) is judged anew: its scores replace the
    # first one's instead of adding to them.
    mail(engine, envelope)
    assert envelope.score == 5.5
    assert envelope.symbols == {"SYM_0": 3.0, "SYM_1": 4.0, "SYM_2": -1.5}


def test_score_without_symbol_is_booked_under_the_plugin_name():
    from mailproxy.verdict import Action as A

    envelope = Envelope()
    name = unique("nosymbol")
    engine = build((name, Returns([], "n", Verdict(A.SCORE, points=2.0)), None))
    mail(engine, envelope)
    assert envelope.symbols == {name: 2.0}


def test_reject_score_turns_scores_into_550():
    envelope = Envelope()
    engine = build(*scorers(3, 4), settings=PolicySettings(reject_score=7))
    verdict = mail(engine, envelope)
    assert verdict.reply == Reply(550, "5.7.1", "Message scored as spam (score 7.0; SYM_1, SYM_0)")
    assert envelope.score == 7.0


def test_tempfail_score_below_reject_score():
    envelope = Envelope()
    engine = build(*scorers(3, 4), settings=PolicySettings(reject_score=10, tempfail_score=6))
    verdict = mail(engine, envelope)
    assert verdict is SCORE_TEMPFAIL
    assert verdict.reply == Reply(451, "4.7.1", "Message scored as suspicious, try again later")


def test_below_thresholds_continues():
    envelope = Envelope()
    engine = build(*scorers(3, 4), settings=PolicySettings(reject_score=10, tempfail_score=7.5))
    assert mail(engine, envelope) is Verdict.cont()
    assert envelope.score == 7.0


def test_scores_without_envelope_are_the_sessions():
    session = Session("smtp", "test")
    engine = build(*scorers(30), settings=PolicySettings(reject_score=1))
    verdict = asyncio.run(engine.run("smtp_mail", session, None, address="a@example.test", params={}))
    assert verdict.reply.text == "Message scored as spam (score 30.0; SYM_0)"
    assert session.symbols == {"SYM_0": 30.0}


class ScoresBy:
    """Scores in the hooks named, `points` each, under the symbol HOOK_NAME."""

    def __init__(self, **points: float) -> None:
        self.points = points

    def answer(self, hook: str) -> Verdict | None:
        points = self.points.get(hook)
        return None if points is None else Verdict.score(hook.upper(), points)

    @hookimpl
    def smtp_connect(self):
        return self.answer("smtp_connect")

    @hookimpl
    def smtp_helo(self):
        return self.answer("smtp_helo")

    @hookimpl
    def smtp_auth(self):
        return self.answer("smtp_auth")

    @hookimpl
    def smtp_command(self):
        return self.answer("smtp_command")

    @hookimpl
    def smtp_mail(self):
        return self.answer("smtp_mail")

    @hookimpl
    def smtp_rcpt(self):
        return self.answer("smtp_rcpt")


def run(engine: PolicyEngine, hook: str, session: Session, envelope: Envelope | None) -> Verdict:
    return asyncio.run(engine.run(hook, session, envelope))


def test_client_scores_stay_on_the_session_and_message_scores_go_with_the_envelope():
    name = unique("scores")
    scores = ScoresBy(smtp_connect=1, smtp_helo=2, smtp_auth=4, smtp_mail=8, smtp_rcpt=16)
    engine = build((name, scores, None))
    session, envelope = Session("smtp", "test"), Envelope()
    for hook in ("smtp_connect", "smtp_helo", "smtp_auth", "smtp_mail", "smtp_rcpt"):
        run(engine, hook, session, envelope)
    assert session.score == 7.0
    assert envelope.score == 24.0
    assert envelope.symbols == {"SMTP_MAIL": 8.0, "SMTP_RCPT": 16.0}
    assert [(e.plugin, e.hook, e.symbol, e.points) for e in session.score_entries] == [
        (name, "smtp_connect", "SMTP_CONNECT", 1.0),
        (name, "smtp_helo", "SMTP_HELO", 2.0),
        (name, "smtp_auth", "SMTP_AUTH", 4.0),
    ]


def test_smtp_command_scores_the_session_outside_a_transaction_and_the_envelope_inside():
    engine = build((unique("commands"), ScoresBy(smtp_command=1), None))
    session, envelope = Session("smtp", "test"), Envelope()
    run(engine, "smtp_command", session, envelope)
    envelope.mail_from = "a@example.test"
    run(engine, "smtp_command", session, envelope)
    assert (session.score, envelope.score) == (1.0, 1.0)


def test_thresholds_apply_to_session_and_transaction_together_in_every_transaction():
    engine = build(
        (unique("scores"), ScoresBy(smtp_connect=3, smtp_mail=3), None),
        settings=PolicySettings(reject_score=5),
    )
    session = Session("smtp", "test")
    assert run(engine, "smtp_connect", session, Envelope()) is Verdict.cont()
    assert run(engine, "smtp_mail", session, Envelope()).action is Action.REJECT
    # RSET, a new EHLO or STARTTLS start a fresh Envelope: the session's points remain.
    assert run(engine, "smtp_mail", session, Envelope()).action is Action.REJECT
    assert session.score == 3.0


def test_a_repeated_helo_replaces_the_points_of_the_last_one():
    engine = build(
        (unique("scores"), ScoresBy(smtp_connect=1, smtp_helo=3), None),
        settings=PolicySettings(reject_score=5),
    )
    session = Session("smtp", "test")
    run(engine, "smtp_connect", session, Envelope())
    for _ in range(3):  # EHLO, STARTTLS, EHLO again, and once more
        assert run(engine, "smtp_helo", session, Envelope()) is Verdict.cont()
    assert session.symbols == {"SMTP_CONNECT": 1.0, "SMTP_HELO": 3.0}


def test_an_old_score_refuses_the_next_message_but_no_other_command():
    engine = build((unique("scores"), ScoresBy(smtp_auth=6), None), settings=PolicySettings(reject_score=5))
    session = Session("smtp", "test")
    assert run(engine, "smtp_auth", session, Envelope()).action is Action.REJECT
    # Its smtp_command hook scores nothing: RSET or QUIT are not refused for old points,
    assert run(engine, "smtp_command", session, Envelope()) is Verdict.cont()
    # but every message of the session is.
    assert run(engine, "smtp_mail", session, Envelope()).action is Action.REJECT


def test_score_entries_and_their_views():
    envelope = Envelope()
    envelope.add_score("RBL", 2, "dnsbl", "smtp_rcpt")
    envelope.add_score("RBL", 1.5, "dnsbl", "smtp_data")
    envelope.add_score("BAYES", -1, "bayes", "smtp_data")
    assert envelope.score == 2.5
    assert envelope.symbols == {"RBL": 3.5, "BAYES": -1.0}
    envelope.forget_scores("smtp_data")
    assert envelope.symbols == {"RBL": 2.0}


# --- refusals at connect -----------------------------------------------------------------


class ConnectAnswers:
    def __init__(self, answer) -> None:
        self.answer = answer

    @hookimpl
    def smtp_connect(self):
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    "answer, fail_mode, lines",
    [
        (RuntimeError("bug"), "tempfail", ["421 4.3.0 proxy.test Temporary local problem, try again later"]),
        (SystemExit(), "reject", ["554 5.3.0 Rejected by local policy"]),
        (Verdict.tempfail(450, "4.7.1", "Come back later"), "tempfail", ["421 4.7.1 proxy.test Come back later"]),
        (Verdict.reject(550, "5.7.1", "Access denied"), "tempfail", ["554 5.7.1 Access denied"]),
        (Verdict.disconnect(), "tempfail", ["421 4.7.0 proxy.test Closing connection"]),
        (
            Verdict.tempfail(451, None, "Busy\nTry later"),
            "tempfail",
            ["421-4.3.0 proxy.test Busy", "421 4.3.0 Try later"],
        ),
        (Verdict(Action.REJECT), "tempfail", ["554 5.7.1 Rejected by policy"]),
    ],
)
def test_a_refusal_at_connect_becomes_a_421_or_554_greeting(answer, fail_mode, lines):
    engine = build((unique("connect"), ConnectAnswers(answer), PluginSettings(fail_mode=fail_mode)))
    verdict = run(engine, "smtp_connect", Session("smtp", "test"), None)
    greeting = verdict.as_greeting("proxy.test")
    assert greeting.action is Action.DISCONNECT
    assert greeting.reply.lines() == lines


# --- first_result and notify -------------------------------------------------------------


class Auth:
    def __init__(self, answer, calls: list, tag: str) -> None:
        self.answer, self.calls, self.tag = answer, calls, tag

    @hookimpl
    def authenticate(self, username, password):
        self.calls.append(self.tag)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def authenticate(engine: PolicyEngine):
    return asyncio.run(
        engine.first_result(
            "authenticate",
            session=Session("smtp", "test"),
            mechanism="PLAIN",
            username="alice",
            password="secret",
        )
    )


def test_first_result_first_answer_wins_and_failures_are_counted():
    calls: list = []
    broken = unique("broken")
    engine = build(
        (broken, Auth(OSError("ldap down"), calls, "broken"), None),
        (unique("unknown"), Auth(None, calls, "unknown"), None),
        (unique("yes"), Auth(True, calls, "yes"), None),
        (unique("no"), Auth(False, calls, "no"), None),
    )
    before = errors(broken, "authenticate", "exception")
    assert authenticate(engine) == (True, 1)
    assert calls == ["broken", "unknown", "yes"]
    assert errors(broken, "authenticate", "exception") == before + 1


def test_first_result_false_is_an_answer():
    calls: list = []
    engine = build(
        (unique("no"), Auth(False, calls, "no"), None),
        (unique("yes"), Auth(True, calls, "yes"), None),
    )
    assert authenticate(engine) == (False, 0)
    assert calls == ["no"]


def test_first_result_nobody_knows():
    engine = build((unique("a"), Auth(None, [], "a"), None), (unique("b"), Auth(None, [], "b"), None))
    assert authenticate(engine) == (None, 0)
    assert asyncio.run(build().first_result("authenticate", session=None)) == (None, 0)


def test_first_result_all_failing():
    engine = build(
        (unique("a"), Auth(RuntimeError("x"), [], "a"), None),
        (unique("b"), Auth(ValueError("y"), [], "b"), None),
    )
    assert authenticate(engine) == (None, 2)


def test_notify_swallows_exceptions_and_tells_everyone():
    calls: list = []

    class Broken:
        @hookimpl
        def smtp_disconnect(self, session):
            calls.append("broken")
            raise RuntimeError("cleanup failed")

    class Counts:
        @hookimpl
        async def smtp_disconnect(self, session):
            calls.append(("counts", session.listener))
            return Verdict.reject()  # ignored: notify hooks decide nothing

    broken = unique("broken")
    engine = build((broken, Broken(), None), (unique("counts"), Counts(), None))
    before = errors(broken, "smtp_disconnect", "exception")
    assert asyncio.run(engine.notify("smtp_disconnect", session=Session("smtp", "edge"))) is None
    assert calls == ["broken", ("counts", "edge")]
    assert errors(broken, "smtp_disconnect", "exception") == before + 1


def test_verdict_actions_reach_the_caller_unchanged():
    disconnect = Verdict.disconnect(421, "4.7.0", "Too many errors")
    engine = build((unique("d"), Returns([], "d", disconnect), None))
    verdict = mail(engine)
    assert verdict is disconnect
    assert verdict.action is Action.DISCONNECT
