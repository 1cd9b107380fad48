"""PolicyEngine on real pluggy plugin managers: order, short-circuits, containment,
observe mode, scores, first_result and notify.

Plugin names are unique per test so that the process-wide Prometheus counters can be
compared before and after.
"""

from __future__ import annotations

import asyncio
import itertools

from prometheus_client import REGISTRY

from mailproxy import hookimpl
from mailproxy.config import PolicySettings
from mailproxy.plugins import LoadedPlugin, PluginSettings, new_plugin_manager
from mailproxy.policy import (
    FAILED_REJECT,
    FAILED_TEMPFAIL,
    SCORE_REJECT,
    SCORE_TEMPFAIL,
    PolicyEngine,
)
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
    # A second phase adds to the same transaction.
    mail(engine, envelope)
    assert envelope.score == 11.0
    assert envelope.symbols == {"SYM_0": 6.0, "SYM_1": 8.0, "SYM_2": -3.0}


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
    assert verdict is SCORE_REJECT
    assert verdict.reply == Reply(550, "5.7.1", "Message scored as spam")
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


def test_scores_without_envelope_decide_nothing():
    engine = build(*scorers(30), settings=PolicySettings(reject_score=1))
    assert mail(engine, None) is Verdict.cont()


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
