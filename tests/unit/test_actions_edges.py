"""The action stage at its edges, with exact header values and reply texts: folding at
HEADER_WIDTH (78) counted with the "Name: " prefix and the space after each separator,
so that a piece ending a line at exactly 78 stays and one byte more folds, and the first
piece never goes onto an empty line; a continuation line counted from its leading space,
so the same holds for a second fold; the reject reply naming at most three symbols with
", ..." only when there are more; a symbol shown as its first 64 characters; and what an
empty `[policy]` section loads as: no X-Spam lines unless `spam_headers` asks for them,
the same as a `Thresholds` given nothing; and `spam_headers` alone is enough for the
engine to run the action stage (`acts`, which the DATA phase checks before `act`)."""

from __future__ import annotations

from mailproxy import actions
from mailproxy.actions import Thresholds
from mailproxy.verdict import Verdict
from tests.unit.test_policy_actions import engine_for, load, thresholds, transaction

TAGGING = thresholds(add_header_score=5)


def symbols_header(symbols: dict[str, float]) -> str:
    """The X-Spam-Symbols value a tagged message with these symbols is delivered with."""
    [*_, (name, value)] = actions.spam_headers(TAGGING, 6.0, symbols)
    assert name == "X-Spam-Symbols"
    return value


# --- folding -----------------------------------------------------------------------------


def test_a_piece_that_ends_the_line_at_exactly_78_characters_stays_on_it():
    # "X-Spam-Symbols: " 16 + "AAAAAAAAAAAAAA(3.0)," 20 + " " + 20 + " " + "CCCCCCCCCCCCCCC(1.0)" 20
    value = symbols_header({"A" * 14: 3.0, "B" * 14: 2.0, "C" * 15: 1.0})
    assert value == "AAAAAAAAAAAAAA(3.0), BBBBBBBBBBBBBB(2.0), CCCCCCCCCCCCCCC(1.0)"
    assert len(f"X-Spam-Symbols: {value}") == 78


def test_a_piece_one_byte_longer_folds_onto_a_continuation_line():
    value = symbols_header({"A" * 14: 3.0, "B" * 14: 2.0, "C" * 16: 1.0})
    assert value == "AAAAAAAAAAAAAA(3.0), BBBBBBBBBBBBBB(2.0),\r\n CCCCCCCCCCCCCCCC(1.0)"


def test_the_separator_and_its_space_count_towards_the_width():
    # The trace header's ";" items: "X-Mailproxy-Trace: " 19 + "a;" + " " + "b;" + " " + 53.
    assert actions.folded("X-Mailproxy-Trace", ["a", "b", "c" * 53], ";") == "a; b; " + "c" * 53
    assert actions.folded("X-Mailproxy-Trace", ["a", "b", "c" * 54], ";") == "a; b;\r\n " + "c" * 54


def test_the_first_piece_is_never_folded_onto_an_empty_line():
    assert actions.folded("X-Spam-Symbols", ["L" * 90, "B"], ",") == "L" * 90 + ",\r\n B"
    assert actions.folded("X-Spam-Symbols", ["L" * 90], ",") == "L" * 90


def test_a_continuation_line_counts_its_leading_space_and_keeps_a_piece_ending_at_78():
    # First line: 16 + "A"*55 "(3.0)," 61 = 77, so B folds; then " " 1 + "B"*30 "(2.0)," 36
    # + " " 1 + "C"*35 "(1.0)" 40 = 78: C stays on the continuation line.
    value = symbols_header({"A" * 55: 3.0, "B" * 30: 2.0, "C" * 35: 1.0})
    assert value == "A" * 55 + "(3.0),\r\n " + "B" * 30 + "(2.0), " + "C" * 35 + "(1.0)"
    assert [len(line) for line in f"X-Spam-Symbols: {value}".split("\r\n")] == [77, 78]


def test_a_continuation_line_folds_again_at_one_byte_past_78():
    value = symbols_header({"A" * 55: 3.0, "B" * 30: 2.0, "C" * 36: 1.0})
    assert value == "A" * 55 + "(3.0),\r\n " + "B" * 30 + "(2.0),\r\n " + "C" * 36 + "(1.0)"


# --- the reject reply ----------------------------------------------------------------------


def test_exactly_three_positive_symbols_are_named_without_an_ellipsis():
    symbols = {"DNSBL": 3.0, "SPF_FAIL": 2.0, "BAD_HELO": 1.0, "ZERO": 0.0, "DKIM_OK": -1.0}
    text = actions.refusal("reject", 6.0, symbols).reply.text
    assert text == "Message scored as spam (score 6.0; DNSBL, SPF_FAIL, BAD_HELO)"


def test_a_fourth_positive_symbol_is_left_out_as_an_ellipsis():
    symbols = {"DNSBL": 3.0, "SPF_FAIL": 2.0, "BAD_HELO": 1.0, "FREEMAIL": 0.5}
    text = actions.refusal("reject", 6.5, symbols).reply.text
    assert text == "Message scored as spam (score 6.5; DNSBL, SPF_FAIL, BAD_HELO, ...)"


# --- a symbol's length ---------------------------------------------------------------------


def test_a_symbol_is_shown_as_its_first_64_characters_in_the_reply_and_the_header():
    symbol = "S" * 64 + "T"
    assert actions.refusal("reject", 9.0, {symbol: 9.0}).reply.text == (
        "Message scored as spam (score 9.0; " + "S" * 64 + ")"
    )
    assert symbols_header({symbol: 9.0}) == "S" * 64 + "(9.0)"


# --- the defaults ------------------------------------------------------------------------


def test_an_empty_policy_section_adds_no_header_lines_to_a_scored_message(tmp_path):
    policy = load(tmp_path, "").policy
    engine = engine_for(policy, connect={"DNSBL": 6})
    session, envelope, verdict = transaction(engine)
    assert verdict is Verdict.cont() and not engine.acts
    assert engine.act(session, envelope) is Verdict.cont()
    assert envelope.added_headers == []
    assert engine.claimed_headers(session) == ()


def test_thresholds_given_nothing_are_what_an_empty_policy_section_loads_as(tmp_path):
    empty = Thresholds.of(load(tmp_path, "").policy)
    assert Thresholds() == empty == Thresholds(None, None, None, False)
    assert not Thresholds().acts
    assert actions.spam_headers(Thresholds(), 6.0, {"DNSBL": 6.0}) == []


def test_spam_headers_alone_asks_for_the_lines_without_the_flag(tmp_path):
    policy = load(tmp_path, "[policy]\nspam_headers = true\n").policy
    engine = engine_for(policy, connect={"DNSBL": 6})
    session, envelope, _ = transaction(engine)
    assert engine.act(session, envelope) is Verdict.cont()
    assert envelope.added_headers == [
        ("X-Spam-Score", "6.0"),
        ("X-Spam-Status", "No, score=6.0"),
        ("X-Spam-Symbols", "DNSBL(6.0)"),
    ]


def test_spam_headers_alone_makes_the_engine_run_the_action_stage(tmp_path):
    # The DATA phase calls `act` only when `acts`: without it the lines above never appear.
    policy = load(tmp_path, "[policy]\nspam_headers = true\n").policy
    assert not policy.trace_header
    assert Thresholds(spam_headers=True).acts
    assert engine_for(policy, connect={"DNSBL": 6}).acts
