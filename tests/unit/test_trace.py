"""The why-trace: the engine records every verdict (observe mode marked, with the time
the hook took) where its scores go; a hook may answer several verdicts at once; one
JSON line per transaction names who decided and why; the X-Mailproxy-Trace items."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

import pytest

from mailproxy import hookimpl, trace
from mailproxy.actions import Thresholds
from mailproxy.config import PolicySettings
from mailproxy.plugins import LoadedPlugin, PluginSettings, new_plugin_manager
from mailproxy.policy import FAILED_TEMPFAIL, PolicyEngine
from mailproxy.session import POLICY, Envelope, Session, TraceEntry
from mailproxy.verdict import Action, Verdict

_names = itertools.count()
SENDER = "a@example.org"


class Says:
    """Answers `answer` in every hook named, after `delay` seconds."""

    def __init__(self, answer, *hooks: str, delay: float = 0.0) -> None:
        self.answer, self.hooks, self.delay = answer, hooks, delay

    def say(self, hook: str):
        if hook not in self.hooks:
            return None
        if self.delay:
            time.sleep(self.delay)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    @hookimpl
    def smtp_connect(self):
        return self.say("smtp_connect")

    @hookimpl
    def smtp_mail(self):
        return self.say("smtp_mail")

    @hookimpl
    def smtp_rcpt(self):
        return self.say("smtp_rcpt")


def build(*plugins, policy: PolicySettings | None = None) -> tuple[PolicyEngine, list[str]]:
    """plugins: (instance, PluginSettings | None) in order; returns the engine and names."""
    manager = new_plugin_manager()
    loaded, names = [], []
    for instance, settings in plugins:
        name = f"p{next(_names)}"
        manager.register(instance, name=name)
        loaded.append(LoadedPlugin(name, "test", instance, settings or PluginSettings()))
        names.append(name)
    return PolicyEngine(manager, loaded, policy), names


def play(engine: PolicyEngine, *hooks: str, session: Session | None = None, envelope: Envelope | None = None):
    """Run `hooks` in order on one session and envelope; the last verdict."""
    session = session or Session("smtp", "test")
    envelope = envelope if envelope is not None else Envelope()

    async def run() -> Verdict:
        verdict = Verdict.cont()
        for hook in hooks:
            kwargs = {"address": SENDER, "params": {}} if hook in ("smtp_mail", "smtp_rcpt") else {}
            verdict = await engine.run(hook, session, envelope, **kwargs)
            if hook == "smtp_mail" and not verdict.action.is_refusal:
                envelope.mail_from = SENDER
        return verdict

    return session, envelope, asyncio.run(run())


def said(entries) -> list[tuple]:
    return [(e.plugin, e.hook, e.action, e.symbol, e.points, e.reason, e.observed) for e in entries]


# --- recording -------------------------------------------------------------------------


def test_every_verdict_is_recorded_in_order_where_its_scores_go():
    engine, (dnsbl, spf, access) = build(
        (Says(Verdict.score("DNSBL", 3, reason="listed"), "smtp_connect"), None),
        (Says(Verdict.score("SPF_FAIL", 2), "smtp_mail"), None),
        (Says(Verdict.accept("trusted"), "smtp_rcpt"), None),
    )
    session, envelope, verdict = play(engine, "smtp_connect", "smtp_mail", "smtp_rcpt")
    assert verdict.action is Action.ACCEPT
    assert said(session.trace) == [(dnsbl, "smtp_connect", "score", "DNSBL", 3.0, "listed", False)]
    assert said(envelope.trace) == [
        (spf, "smtp_mail", "score", "SPF_FAIL", 2.0, "", False),
        (access, "smtp_rcpt", "accept", "", 0.0, "trusted", False),
    ]
    assert (session.score, envelope.score) == (3.0, 2.0)  # and the scores as before


def test_each_entry_has_the_time_its_hook_took():
    engine, _ = build((Says(Verdict.reject(), "smtp_mail", delay=0.05), None))
    _, envelope, _ = play(engine, "smtp_mail")
    [entry] = envelope.trace
    assert 50 <= entry.ms < 10_000  # milliseconds, at least the sleep
    fast, _ = build((Says(Verdict.score("A", 1), "smtp_mail"), None))
    [entry] = play(fast, "smtp_mail")[1].trace
    assert entry.ms > 0


def test_observe_mode_verdicts_are_recorded_marked_and_not_enforced():
    engine, (observer, later) = build(
        (Says(Verdict.score("TRIAL", 50), "smtp_mail"), PluginSettings(observe=True)),
        (Says(Verdict.reject(550, "5.7.1", "trial rule"), "smtp_mail"), PluginSettings(observe=True)),
        policy=PolicySettings(reject_score=10),
    )
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict is Verdict.cont()
    assert said(envelope.trace) == [
        (observer, "smtp_mail", "score", "TRIAL", 50.0, "", True),
        (later, "smtp_mail", "reject", "", 0.0, "trial rule", True),
    ]
    assert envelope.score == 0.0


def test_a_failing_plugin_is_recorded_with_its_fail_mode():
    engine, (name,) = build((Says(RuntimeError("bug"), "smtp_mail"), None))
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict is FAILED_TEMPFAIL
    assert said(envelope.trace) == [(name, "smtp_mail", "tempfail", "", 0.0, "plugin failed (exception)", False)]


def test_continue_and_none_leave_no_entry():
    engine, _ = build((Says(None, "smtp_mail"), None), (Says(Verdict.cont(), "smtp_mail"), None))
    _, envelope, _ = play(engine, "smtp_mail")
    assert envelope.trace == ()


def test_a_threshold_that_refuses_is_recorded_as_the_policys_verdict():
    scores = Says(Verdict.score("SPF_FAIL", 12), "smtp_mail")
    engine, (name,) = build((scores, None), policy=PolicySettings(reject_score=10))
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict.action is Action.REJECT
    assert said(envelope.trace) == [
        (name, "smtp_mail", "score", "SPF_FAIL", 12.0, "", False),
        (POLICY, "smtp_mail", "reject", "", 0.0, "score 12.0 >= reject_score 10.0", False),
    ]


def test_a_repeated_mail_is_traced_anew():
    engine, _ = build((Says(Verdict.score("SPF_FAIL", 2), "smtp_mail"), None))
    session, envelope = Session("smtp", "test"), Envelope()
    play(engine, "smtp_mail", session=session, envelope=envelope)
    envelope.mail_from = None  # the upstream refused it, say
    play(engine, "smtp_mail", session=session, envelope=envelope)
    assert len(envelope.trace) == 1 and envelope.score == 2.0


# --- several verdicts in one answer ---------------------------------------------------------


def test_a_hook_may_answer_a_list_of_verdicts():
    answer = [Verdict.score("A", 1), None, Verdict.score("B", 2.5), Verdict.cont()]
    engine, (name,) = build((Says(answer, "smtp_mail"), None))
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict is Verdict.cont()
    assert envelope.symbols == {"A": 1.0, "B": 2.5}
    assert [(e.plugin, e.symbol) for e in envelope.trace] == [(name, "A"), (name, "B")]
    assert envelope.trace[0].ms == envelope.trace[1].ms  # one call


def test_a_refusal_in_a_list_ends_the_phase_after_the_scores_before_it():
    refusal = Verdict.reject(550, "5.7.1", "no")
    engine, _ = build((Says((Verdict.score("A", 1), refusal, Verdict.score("B", 2)), "smtp_mail"), None))
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict is refusal
    assert envelope.symbols == {"A": 1.0}


def test_a_list_with_something_else_in_it_is_a_bad_result():
    engine, (name,) = build((Says([Verdict.score("A", 1), "yes"], "smtp_mail"), None))
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict is FAILED_TEMPFAIL
    assert envelope.symbols == {}
    assert said(envelope.trace) == [(name, "smtp_mail", "tempfail", "", 0.0, "plugin failed (bad_result)", False)]


# --- the trace line ----------------------------------------------------------------------


def ended(engine: PolicyEngine, session, envelope, caplog, *args, **kwargs) -> list[dict]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mailproxy.trace"):
        engine.transaction_ended(session, envelope, *args, **kwargs)
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "mailproxy.trace"]


def test_a_rejected_message_names_the_threshold_and_every_plugin_that_scored(caplog):
    engine, (dnsbl, spf, bad) = build(
        (Says(Verdict.score("DNSBL", 6, reason="listed in bl.test"), "smtp_connect"), None),
        (Says(Verdict.score("SPF_FAIL", 3), "smtp_mail"), None),
        (Says(Verdict.score("BAD_RCPT", 2), "smtp_rcpt"), PluginSettings(observe=True)),
        policy=PolicySettings(reject_score=10, add_header_score=5),
    )
    session, envelope, verdict = play(engine, "smtp_connect", "smtp_mail", "smtp_rcpt")
    session.peer, session.host_name = ("192.0.2.1", 4000), "client.test"
    envelope.rcpt_tos.append("user@example.test")
    envelope.add_score("BODY", 2, "content", "smtp_data")  # as a data hook would
    refusal = engine.act(session, envelope)
    [line] = ended(engine, session, envelope, caplog, "rejected", refusal.reply, "policy")
    assert line == {
        "session": session.id,
        "client": "192.0.2.1",
        "helo": "client.test",
        "from": SENDER,
        "rcpts": 1,
        "outcome": "rejected",
        "by": "score",
        "reply": "550 5.7.1 Message scored as spam (score 11.0; DNSBL, SPF_FAIL, BODY)",
        "action": "reject",
        "score": 11.0,
        "thresholds": {"reject_score": 10.0, "add_header_score": 5.0},
        "entries": [
            {"plugin": dnsbl, "hook": "smtp_connect", "action": "score", "symbol": "DNSBL", "points": 6.0,
             "reason": "listed in bl.test", "ms": line["entries"][0]["ms"]},
            {"plugin": spf, "hook": "smtp_mail", "action": "score", "symbol": "SPF_FAIL", "points": 3.0,
             "ms": line["entries"][1]["ms"]},
            {"plugin": bad, "hook": "smtp_rcpt", "action": "score", "symbol": "BAD_RCPT", "points": 2.0,
             "ms": line["entries"][2]["ms"], "observe": True},
            {"plugin": POLICY, "hook": "smtp_data", "action": "reject", "reason": "score 11.0 >= reject_score 10.0",
             "ms": 0.0},
        ],
    }
    assert all(entry["ms"] > 0 for entry in line["entries"][:3])
    # Once per transaction: the reset that follows a refusal writes no second line.
    assert ended(engine, session, envelope, caplog, "reset", by="client") == []
    assert envelope.outcome == "rejected"


def test_a_plugins_refusal_names_the_plugin_not_an_earlier_one(caplog):
    engine, (rcpts, content) = build(
        (Says(Verdict.reject(550, "5.7.1", "no such user"), "smtp_rcpt"), None),
        (Says(Verdict.tempfail(451, "4.7.1", "try later"), "smtp_mail"), None),
    )
    session, envelope = Session("smtp", "test"), Envelope()
    envelope.mail_from = SENDER
    play(engine, "smtp_rcpt", session=session, envelope=envelope)
    envelope.record(TraceEntry(content, "smtp_data", "tempfail", reason="try later", ms=1.0))
    [line] = ended(engine, session, envelope, caplog, "tempfailed", "451 4.7.1 try later", "policy")
    assert (line["by"], line["action"], line["reply"]) == (f"plugin:{content}", "tempfail", "451 4.7.1 try later")
    assert [entry["plugin"] for entry in line["entries"]] == [rcpts, content]


def test_a_delivered_message_says_what_the_score_came_to(caplog):
    scores = Says(Verdict.score("SPF_FAIL", 6), "smtp_mail")
    engine, _ = build((scores, None), policy=PolicySettings(add_header_score=5))
    session, envelope, _ = play(engine, "smtp_mail")
    [line] = ended(engine, session, envelope, caplog, "delivered", "250 2.0.0 queued as 1", "upstream")
    assert {key: line[key] for key in ("outcome", "by", "reply", "action", "score")} == {
        "outcome": "delivered", "by": "upstream", "reply": "250 2.0.0 queued as 1",
        "action": "add_header", "score": 6.0,
    }
    session, envelope = Session("smtp", "test"), Envelope()
    envelope.mail_from = SENDER
    [line] = ended(engine, session, envelope, caplog, "abandoned")
    assert (line["outcome"], line["action"], line["entries"]) == ("abandoned", "no action", [])
    assert "by" not in line and "reply" not in line


def test_a_refused_mail_names_its_sender_and_leaves_the_envelope_for_the_next_one(caplog):
    engine, (name,) = build((Says(Verdict.reject(550, "5.7.1", "Sender rejected"), "smtp_mail"), None))
    session, envelope, verdict = play(engine, "smtp_mail")
    assert envelope.mail_from is None
    [line] = ended(engine, session, envelope, caplog, reply=verdict.reply, by="policy", sender="x@spam.example")
    assert (line["from"], line["rcpts"], line["outcome"], line["by"]) == (
        "x@spam.example", 0, "rejected", f"plugin:{name}",
    )
    assert envelope.outcome is None


def test_a_session_refused_at_connect_has_a_line_without_a_transaction(caplog):
    engine, (name,) = build((Says(Verdict.reject(554, "5.7.1", "Access denied"), "smtp_connect"), None))
    session, _, verdict = play(engine, "smtp_connect")
    session.authenticated, session.username = True, "alice"  # not at connect, but shown when so
    [line] = ended(engine, session, None, caplog, reply=verdict.as_greeting("proxy.test").reply, by="policy")
    assert "from" not in line and "rcpts" not in line
    assert (line["outcome"], line["by"], line["reply"], line["user"]) == (
        "rejected", f"plugin:{name}", "554 5.7.1 Access denied", "alice",
    )


def test_the_line_is_json_whatever_the_client_sent(caplog):
    engine, _ = build()
    session, envelope = Session("smtp", "test"), Envelope()
    session.host_name = "h\x7fé\u2028\r\n"
    envelope.mail_from = "\x00a\x85@b"
    text = trace.line(session, envelope, Thresholds(), "reset")
    assert text.isascii() and text.isprintable()
    assert json.loads(text)["helo"] == "h\x7fé\u2028\r\n"
    # And through the proxy's own log formatter, which escapes control characters.
    from mailproxy.logs import EscapingFormatter

    record = logging.LogRecord("mailproxy.trace", logging.INFO, __file__, 1, "%s", (text,), None)
    assert json.loads(EscapingFormatter("%(message)s").format(record))["from"] == "\x00a\x85@b"


def test_nothing_is_built_when_the_trace_logger_is_off(caplog, monkeypatch):
    engine, _ = build()
    monkeypatch.setattr(trace, "line", lambda *a, **k: pytest.fail("line built for nobody"))
    envelope = Envelope()
    envelope.mail_from = SENDER
    with caplog.at_level(logging.WARNING, logger="mailproxy.trace"):
        engine.transaction_ended(Session("smtp", "test"), envelope, "delivered", "250 ok", "upstream")
    assert envelope.outcome == "delivered"


# --- the header items ------------------------------------------------------------------


def test_header_items_are_compact_and_carry_no_reasons():
    entries = (
        TraceEntry("dnsbl", "smtp_connect", "score", "DNSBL", 3.0, "listed (quoting the client)", 2.345),
        TraceEntry("access", "smtp_rcpt", "accept", reason="trusted", ms=0.04),
        TraceEntry("trial", "smtp_mail", "reject", ms=1.0, observed=True),
    )
    assert trace.header_items("abc", 3.0, entries) == [
        "session=abc",
        "score=3.0",
        "dnsbl/connect DNSBL(3.0) 2.3ms",
        "access/rcpt accept 0.0ms",
        "trial/mail reject 1.0ms observe",
    ]
