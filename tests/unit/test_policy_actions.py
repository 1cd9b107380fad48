"""The action stage: thresholds to action, the X-Spam-* header lines, the reject reply
that names the top symbols, `[policy.authenticated]`, and the configuration errors."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from mailproxy import actions, hookimpl
from mailproxy.actions import Thresholds
from mailproxy.config import ConfigError, PolicySettings, ScoreSettings, load_config
from mailproxy.plugins import LoadedPlugin, PluginSettings, new_plugin_manager
from mailproxy.policy import SCORE_TEMPFAIL, PolicyEngine
from mailproxy.session import POLICY, Envelope, Session
from mailproxy.verdict import Action, Reply, Verdict
from tests.support.configs import MINIMAL_TOML

_names = itertools.count()

CONFIG = MINIMAL_TOML


def thresholds(**keys) -> Thresholds:
    return Thresholds.of(ScoreSettings(**keys))


def unfolded(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header lines with their folds undone (a fold is CRLF and a space)."""
    return [(name, value.replace("\r\n ", " ")) for name, value in headers]


# --- thresholds to action ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "action"),
    [
        (-3.0, "no action"),
        (4.99, "no action"),
        (5.0, "add_header"),
        (7.99, "add_header"),
        (8.0, "tempfail"),
        (9.99, "tempfail"),
        (10.0, "reject"),
        (100.0, "reject"),
    ],
)
def test_the_highest_threshold_reached_decides(score, action):
    assert thresholds(reject_score=10, tempfail_score=8, add_header_score=5).action(score) == action


def test_an_unset_threshold_never_applies():
    assert thresholds().action(1000) == "no action"
    assert thresholds(add_header_score=5).action(1000) == "add_header"
    assert thresholds(tempfail_score=5).action(1000) == "tempfail"


def test_spam_headers_are_on_by_default_only_where_the_section_tags():
    assert thresholds(add_header_score=5).spam_headers
    assert not thresholds(reject_score=10, tempfail_score=5).spam_headers
    assert not thresholds(add_header_score=5, spam_headers=False).spam_headers
    assert thresholds(reject_score=10, spam_headers=True).spam_headers


# --- header lines ----------------------------------------------------------------------


def test_a_borderline_message_gets_the_flag_and_the_spamassassin_lines():
    tagging = thresholds(reject_score=10, add_header_score=5)
    symbols = {"SPF_FAIL": 1.5, "DNSBL_LISTED": 2.0, "FREEMAIL": 1.5, "DKIM_OK": -0.5, "ZERO": 0.0}
    assert unfolded(actions.spam_headers(tagging, 5.0, symbols)) == [
        ("X-Spam-Flag", "YES"),
        ("X-Spam-Score", "5.0"),
        ("X-Spam-Status", "Yes, score=5.0 required=5.0"),
        # Highest points first; equal points by name.
        ("X-Spam-Symbols", "DNSBL_LISTED(2.0), FREEMAIL(1.5), SPF_FAIL(1.5), ZERO(0.0), DKIM_OK(-0.5)"),
    ]


def test_a_clean_message_gets_score_and_status_and_no_symbols_line_without_symbols():
    tagging = thresholds(reject_score=10, add_header_score=5)
    assert actions.spam_headers(tagging, 0.0, {}) == [
        ("X-Spam-Score", "0.0"),
        ("X-Spam-Status", "No, score=0.0 required=5.0"),
    ]
    assert actions.spam_headers(tagging, 4.25, {"A": 4.25})[1] == ("X-Spam-Status", "No, score=4.25 required=5.0")


def test_required_is_the_tag_threshold_or_else_the_lowest_refusal():
    assert thresholds(reject_score=10, tempfail_score=7, spam_headers=True).required == 7
    assert thresholds(reject_score=10, spam_headers=True).required == 10
    headers = actions.spam_headers(thresholds(spam_headers=True), 1.0, {})
    assert headers == [("X-Spam-Score", "1.0"), ("X-Spam-Status", "No, score=1.0")]


def test_without_spam_headers_only_the_flag_is_added():
    quiet = thresholds(reject_score=10, add_header_score=5, spam_headers=False)
    assert actions.spam_headers(quiet, 6.0, {"A": 6.0}) == [("X-Spam-Flag", "YES")]
    assert actions.spam_headers(quiet, 1.0, {"A": 1.0}) == []


def test_many_symbols_are_folded_into_lines_of_at_most_78_characters():
    symbols = {f"SOME_RATHER_LONG_SYMBOL_{i:02}": float(i) for i in range(12)}
    [*_, (name, value)] = actions.spam_headers(thresholds(add_header_score=5), 66.0, symbols)
    lines = f"{name}: {value}".split("\r\n")
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])  # folded: continuation lines
    unfolded = value.replace("\r\n ", " ")
    assert unfolded == ", ".join(f"SOME_RATHER_LONG_SYMBOL_{i:02}({i}.0)" for i in reversed(range(12)))


def test_symbols_are_shown_printable_and_bounded():
    symbols = {"BAD (SYM),\r\n\u00e9;": 1.0, "L" * 200: 1.0}
    [*_, (_, value)] = unfolded(actions.spam_headers(thresholds(add_header_score=5), 2.0, symbols))
    assert value == "BAD__SYM______(1.0), " + "L" * actions.SYMBOL_LENGTH + "(1.0)"


@pytest.mark.parametrize(
    ("points", "text"), [(3.5, "3.5"), (12, "12.0"), (0.25, "0.25"), (-1, "-1.0"), (-0.001, "0.0"), (1 / 3, "0.33")]
)
def test_points_are_written_as_people_write_them(points, text):
    assert actions.format_points(points) == text


# --- the reject reply ------------------------------------------------------------------


def test_the_reject_reply_names_the_top_three_symbols_with_points():
    symbols = {"SPF_FAIL": 3.0, "DNSBL_LISTED": 6.0, "BAD_HELO": 2.0, "FREEMAIL": 1.0, "WHITELIST": -1.0}
    verdict = actions.refusal("reject", 11.0, symbols)
    assert verdict.action is Action.REJECT
    text = "Message scored as spam (score 11.0; DNSBL_LISTED, SPF_FAIL, BAD_HELO, ...)"
    assert verdict.reply == Reply(550, "5.7.1", text)


def test_the_reject_reply_with_few_or_no_positive_symbols():
    assert actions.refusal("reject", 7.0, {"A": 7.0, "B": -1.0}).reply.text == "Message scored as spam (score 7.0; A)"
    assert actions.refusal("reject", 0.0, {"B": 0.0}).reply.text == "Message scored as spam (score 0.0)"


def test_the_reject_reply_is_bounded_and_one_printable_line():
    symbols = {("X" * 500) + f"\r\n{i}": 10.0 + i for i in range(10)}
    text = actions.refusal("reject", 145.0, symbols).reply.text
    assert text.isprintable() and text.isascii()
    assert len(text) < 80 + 3 * (actions.SYMBOL_LENGTH + 2)


def test_a_score_tempfail_is_the_plain_one():
    assert actions.refusal("tempfail", 8.0, {"A": 8.0}) is SCORE_TEMPFAIL


# --- the engine: thresholds per session, the stage once the score is final -----------------


class Scores:
    """Scores SYMBOL points at connect and at MAIL."""

    def __init__(self, connect: dict[str, float], mail: dict[str, float]) -> None:
        self.connect, self.mail = connect, mail

    @hookimpl
    def smtp_connect(self):
        return [Verdict.score(symbol, points) for symbol, points in self.connect.items()]

    @hookimpl
    def smtp_mail(self):
        return [Verdict.score(symbol, points) for symbol, points in self.mail.items()]


def engine_for(policy: PolicySettings, connect=None, mail=None) -> PolicyEngine:
    name = f"scores-{next(_names)}"
    plugin = Scores(connect or {}, mail or {})
    manager = new_plugin_manager()
    manager.register(plugin, name=name)
    return PolicyEngine(manager, [LoadedPlugin(name, "test", plugin, PluginSettings())], policy)


def transaction(engine: PolicyEngine, authenticated: bool = False) -> tuple[Session, Envelope, Verdict]:
    session, envelope = Session("smtp", "test"), Envelope()
    session.authenticated = authenticated

    async def play() -> Verdict:
        await engine.run("smtp_connect", session, envelope)
        verdict = await engine.run("smtp_mail", session, envelope, address="a@example.org", params={})
        envelope.mail_from = "a@example.org"
        return verdict

    return session, envelope, asyncio.run(play())


def test_the_stage_adds_the_header_lines_of_the_final_score_to_the_envelope():
    policy = PolicySettings(reject_score=10, add_header_score=5)
    engine = engine_for(policy, connect={"DNSBL": 4}, mail={"SPF_FAIL": 2.5})
    session, envelope, verdict = transaction(engine)
    envelope.added_headers.append(("X-Plugin", "said so"))
    assert verdict is Verdict.cont() and engine.acts
    assert engine.act(session, envelope) is Verdict.cont()
    assert envelope.added_headers == [
        ("X-Plugin", "said so"),
        ("X-Spam-Flag", "YES"),
        ("X-Spam-Score", "6.5"),
        ("X-Spam-Status", "Yes, score=6.5 required=5.0"),
        ("X-Spam-Symbols", "DNSBL(4.0), SPF_FAIL(2.5)"),
    ]


def test_the_stage_refuses_a_score_that_reached_a_threshold_meanwhile():
    # The session scored before it logged in; its own thresholds are lower.
    policy = PolicySettings(reject_score=50, authenticated=ScoreSettings(reject_score=5))
    engine = engine_for(policy, connect={"DNSBL": 6})
    session, envelope, verdict = transaction(engine)
    assert verdict is Verdict.cont()
    session.authenticated = True
    refusal = engine.act(session, envelope)
    assert refusal.reply.text == "Message scored as spam (score 6.0; DNSBL)"
    assert envelope.added_headers == []
    assert envelope.trace[-1].plugin == POLICY and envelope.trace[-1].reason == "score 6.0 >= reject_score 5.0"


def test_nothing_to_do_without_thresholds_or_headers():
    engine = engine_for(PolicySettings(), connect={"DNSBL": 6})
    assert not engine.acts
    assert engine_for(PolicySettings(trace_header=True)).acts


def test_authenticated_sessions_have_their_own_thresholds():
    policy = PolicySettings(
        reject_score=10, tempfail_score=8, add_header_score=5,
        authenticated=ScoreSettings(reject_score=20),
    )
    engine = engine_for(policy, mail={"SPF_FAIL": 9})
    assert transaction(engine)[2] is SCORE_TEMPFAIL
    # Logged in: 9 points reach neither its reject_score nor a tempfail_score or
    # add_header_score it left out (no threshold, not the [policy] ones).
    session, envelope, verdict = transaction(engine, authenticated=True)
    assert verdict is Verdict.cont()
    assert engine.act(session, envelope) is Verdict.cont()
    assert envelope.added_headers == []
    engine = engine_for(policy, mail={"SPF_FAIL": 20})
    assert transaction(engine, authenticated=True)[2].action is Action.REJECT


def test_without_an_authenticated_section_logged_in_sessions_have_the_same_thresholds():
    engine = engine_for(PolicySettings(reject_score=10, add_header_score=5), mail={"SPF_FAIL": 10})
    assert transaction(engine, authenticated=True)[2].action is Action.REJECT
    engine = engine_for(PolicySettings(reject_score=10, add_header_score=5), mail={"SPF_FAIL": 6})
    session, envelope, _ = transaction(engine, authenticated=True)
    engine.act(session, envelope)
    assert ("X-Spam-Flag", "YES") in envelope.added_headers


def test_the_trace_header_is_added_when_configured():
    engine = engine_for(PolicySettings(trace_header=True), connect={"DNSBL": 4})
    session, envelope, _ = transaction(engine)
    engine.act(session, envelope)
    [(name, value)] = unfolded(envelope.added_headers)
    assert name == "X-Mailproxy-Trace"
    plugin = session.trace[0].plugin
    assert value.startswith(f"session={session.id}; score=4.0; {plugin}/connect DNSBL(4.0) ")


# --- configuration ---------------------------------------------------------------------


def load(tmp_path: Path, policy: str):
    path = tmp_path / "mailproxy.toml"
    path.write_text(CONFIG + policy)
    return load_config(path)


def error_of(tmp_path: Path, policy: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, policy)
    return str(info.value)


def test_the_policy_section_loads_with_its_authenticated_section(tmp_path):
    config = load(tmp_path, """
[policy]
reject_score = 15
tempfail_score = 10
add_header_score = 6
spam_headers = false
trace_header = true

[policy.authenticated]
reject_score = 30
""")
    policy = config.policy
    assert (policy.reject_score, policy.tempfail_score, policy.add_header_score) == (15, 10, 6)
    assert (policy.spam_headers, policy.trace_header) == (False, True)
    assert policy.authenticated == ScoreSettings(reject_score=30)


def test_defaults(tmp_path):
    policy = load(tmp_path, "").policy
    assert policy == PolicySettings()
    assert (policy.add_header_score, policy.spam_headers, policy.trace_header, policy.authenticated) == (
        None, None, False, None,
    )


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("[policy]\nreject_score = 10\ntempfail_score = 12\n",
         "policy.tempfail_score: 12 is above reject_score (10), so it could never apply"),
        ("[policy]\nreject_score = 10\nadd_header_score = 11\n",
         "policy.add_header_score: 11 is above reject_score (10), so it could never apply"),
        ("[policy]\ntempfail_score = 5\nadd_header_score = 6\n",
         "policy.add_header_score: 6 is above tempfail_score (5), so it could never apply"),
        ("[policy.authenticated]\nreject_score = 10\ntempfail_score = 20\n",
         "policy.authenticated.tempfail_score: 20 is above reject_score (10), so it could never apply"),
        ("[policy.authenticated]\ntrace_header = true\n", "policy.authenticated.trace_header: unknown key"),
        ("[policy]\nreject_score = nan\n", "policy.reject_score: Input should be a finite number"),
        ('[policy]\nspam_headers = "yes"\n', "policy.spam_headers: Input should be a valid boolean"),
    ],
)
def test_config_errors_name_the_key(tmp_path, policy, message):
    assert error_of(tmp_path, policy) == f"{tmp_path / 'mailproxy.toml'}: {message}"
