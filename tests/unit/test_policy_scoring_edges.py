"""The policy engine at the edges of scoring: which client header fields the action
stage claims, a `[policy]` or `[policy.authenticated]` section that refuses alone, the
score histogram, the milliseconds in the trace, and lists of verdicts that hold a
`continue` or are given in observe mode."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import REGISTRY

from mailproxy.config import PolicySettings, ScoreSettings
from mailproxy.plugins import PluginSettings
from mailproxy.session import Session
from mailproxy.verdict import Action, Verdict
from tests.unit.test_policy_actions import engine_for, transaction
from tests.unit.test_trace import Says, build, play, said

_listeners = itertools.count()

SPAM = ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", "X-Spam-Symbols")
TRACE = ("X-Mailproxy-Trace",)


# --- the client's header fields the proxy writes itself --------------------------------


@pytest.mark.parametrize(
    ("policy", "authenticated", "claimed"),
    [
        # A section that only refuses leaves the messages it lets through as they were.
        (PolicySettings(reject_score=10), False, ()),
        # Tagging writes X-Spam-Flag even without the other X-Spam-* lines.
        (PolicySettings(reject_score=10, add_header_score=5, spam_headers=False), False, SPAM),
        (PolicySettings(reject_score=10, spam_headers=True), False, SPAM),
        (PolicySettings(add_header_score=5, trace_header=True), False, SPAM + TRACE),
        (PolicySettings(trace_header=True), False, TRACE),
        # Logged in: the authenticated section's settings decide, and it does not tag.
        (PolicySettings(add_header_score=5, authenticated=ScoreSettings(reject_score=20)), True, ()),
    ],
    ids=["refuses-only", "tags-without-spam-headers", "spam-headers-only", "tags-and-traces", "traces-only",
         "logged-in-refuses-only"],
)
def test_the_client_fields_dropped_are_exactly_those_the_proxy_writes(policy, authenticated, claimed):
    session = Session("smtp", "test")
    session.authenticated = authenticated
    assert engine_for(policy).claimed_headers(session) == claimed


# --- one section with thresholds, the other without ------------------------------------


@pytest.mark.parametrize(
    ("policy", "judged"),
    [
        (PolicySettings(reject_score=5, authenticated=ScoreSettings()), False),
        (PolicySettings(authenticated=ScoreSettings(reject_score=5)), True),
    ],
    ids=["only-policy-refuses", "only-authenticated-refuses"],
)
def test_a_section_refuses_its_sessions_though_the_other_section_has_no_thresholds(policy, judged):
    engine = engine_for(policy, mail={"SPF_FAIL": 6})
    assert engine.acts  # the action stage runs once the score is final
    assert transaction(engine, authenticated=judged)[2].action is Action.REJECT
    assert transaction(engine, authenticated=not judged)[2] is Verdict.cont()


# --- what the metrics and the trace say ------------------------------------------------


def test_the_score_histogram_observes_the_session_and_transaction_points_together():
    listener = f"scored-{next(_listeners)}"  # a histogram of its own
    engine, _ = build(
        (Says(Verdict.score("DNSBL", 4), "smtp_connect"), None),
        (Says(Verdict.score("SPF_FAIL", 2.5), "smtp_mail"), None),
        policy=PolicySettings(add_header_score=5),
    )
    session, envelope, _ = play(engine, "smtp_connect", "smtp_mail", session=Session("smtp", listener))
    assert engine.act(session, envelope) is Verdict.cont()
    assert REGISTRY.get_sample_value("mailproxy_spam_score_sum", {"listener": listener}) == 6.5


def test_the_trace_gives_the_milliseconds_the_duration_metric_observed_in_seconds():
    engine, (name,) = build((Says(Verdict.score("A", 1), "smtp_mail"), None))
    labels = {"plugin": name, "hook": "smtp_mail"}

    def observed() -> float:
        return REGISTRY.get_sample_value("mailproxy_plugin_duration_seconds_sum", labels) or 0.0

    before = observed()
    [entry] = play(engine, "smtp_mail")[1].trace
    assert entry.ms == pytest.approx((observed() - before) * 1000, rel=1e-6)


# --- lists of verdicts -----------------------------------------------------------------


def test_a_continue_in_a_list_passes_on_to_the_verdicts_after_it():
    answer = [Verdict.cont(), Verdict.score("A", 1), Verdict.cont(), Verdict.score("B", 2)]
    engine, _ = build((Says(answer, "smtp_mail"), None))
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict is Verdict.cont()
    assert envelope.symbols == {"A": 1.0, "B": 2.0}


def test_observe_mode_traces_every_verdict_of_a_list():
    # A trial rule's whole answer is shown, so it can be judged before it is enforced.
    answer = [Verdict.score("TRIAL_A", 3), Verdict.reject(550, "5.7.1", "trial"), Verdict.score("TRIAL_B", 4)]
    engine, (name,) = build((Says(answer, "smtp_mail"), PluginSettings(observe=True)))
    _, envelope, verdict = play(engine, "smtp_mail")
    assert verdict is Verdict.cont()
    assert said(envelope.trace) == [
        (name, "smtp_mail", "score", "TRIAL_A", 3.0, "", True),
        (name, "smtp_mail", "reject", "", 0.0, "trial", True),
        (name, "smtp_mail", "score", "TRIAL_B", 4.0, "", True),
    ]
    assert envelope.score == 0.0
