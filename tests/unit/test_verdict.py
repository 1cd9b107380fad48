"""Verdict and Reply: constructors, SMTP rendering, validation."""

from __future__ import annotations

import pytest

from mailproxy.verdict import Action, Reply, Verdict


def test_cont_is_one_shared_object():
    assert Verdict.cont() is Verdict.cont()
    assert Verdict.cont().action is Action.CONTINUE
    assert Verdict.cont().reply is None


def test_accept():
    verdict = Verdict.accept("trusted network")
    assert (verdict.action, verdict.reply, verdict.reason) == (Action.ACCEPT, None, "trusted network")


def test_reject_defaults():
    verdict = Verdict.reject()
    assert verdict.action is Action.REJECT
    assert verdict.reply == Reply(550, "5.7.1", "Rejected by policy")
    assert verdict.reason == "Rejected by policy"


def test_tempfail_defaults():
    verdict = Verdict.tempfail()
    assert verdict.action is Action.TEMPFAIL
    assert verdict.reply == Reply(451, "4.7.1", "Temporarily refused by policy, try again later")


def test_disconnect_defaults():
    verdict = Verdict.disconnect()
    assert verdict.action is Action.DISCONNECT
    assert verdict.reply == Reply(421, "4.7.0", "Closing connection")


def test_custom_reject():
    verdict = Verdict.reject(554, "5.7.1", "Access denied")
    assert verdict.reply.lines() == ["554 5.7.1 Access denied"]
    assert verdict.reason == "Access denied"


def test_score():
    verdict = Verdict.score("RBL_HIT", 3, "listed")
    assert verdict.action is Action.SCORE
    assert (verdict.symbol, verdict.points, verdict.reason) == ("RBL_HIT", 3.0, "listed")
    assert type(verdict.points) is float
    assert verdict.reply is None


@pytest.mark.parametrize(
    "action, refusal",
    [
        (Action.CONTINUE, False),
        (Action.ACCEPT, False),
        (Action.SCORE, False),
        (Action.REJECT, True),
        (Action.TEMPFAIL, True),
        (Action.DISCONNECT, True),
    ],
)
def test_is_refusal(action, refusal):
    assert action.is_refusal is refusal


@pytest.mark.parametrize(
    "reply, lines",
    [
        (Reply(250, None, "OK"), ["250 OK"]),
        (Reply(250, None, ""), ["250"]),
        (Reply(550, "5.7.1", "a\nb"), ["550-5.7.1 a", "550 5.7.1 b"]),
        (Reply(550, "5.7.1", "a\n\nc"), ["550-5.7.1 a", "550-5.7.1", "550 5.7.1 c"]),
        (Reply(451, None, "one\ntwo\nthree"), ["451-one", "451-two", "451 three"]),
        (Reply(221, "2.0.0", "Bye"), ["221 2.0.0 Bye"]),
    ],
)
def test_reply_lines(reply, lines):
    assert reply.lines() == lines


def test_reject_with_4xx_code_raises():
    with pytest.raises(ValueError, match="^a reject needs a 5xx reply$"):
        Verdict.reject(451, "4.7.1", "no")


def test_tempfail_with_5xx_code_raises():
    with pytest.raises(ValueError, match="^a tempfail needs a 4xx reply$"):
        Verdict.tempfail(550, "5.7.1", "no")


@pytest.mark.parametrize(
    "code, enhanced",
    [(550, "4.7.1"), (451, "5.7.1"), (250, "5.0.0"), (550, "5.7"), (550, "5.7.1.2"), (550, "x.7.1"), (550, "3.0.0")],
)
def test_enhanced_code_must_fit(code, enhanced):
    with pytest.raises(ValueError, match=f"^enhanced code '{enhanced}' does not fit {code}$"):
        Reply(code, enhanced, "text")


@pytest.mark.parametrize("text", ["a\rb", "a\r\nb", "nul\0"])
def test_cr_or_nul_in_text_raises(text):
    with pytest.raises(ValueError, match="^reply text must not contain CR or NUL$"):
        Reply(550, "5.7.1", text)


@pytest.mark.parametrize("code", [199, 600, 0, 55])
def test_code_out_of_range(code):
    with pytest.raises(ValueError, match=f"^reply code must be 200..599, got {code}$"):
        Reply(code, None, "x")


def test_verdict_is_immutable():
    verdict = Verdict.reject()
    with pytest.raises(AttributeError):
        verdict.action = Action.ACCEPT  # type: ignore[misc]


@pytest.mark.parametrize("action, code", [(Action.REJECT, 550), (Action.TEMPFAIL, 451), (Action.DISCONNECT, 421)])
def test_a_refusal_built_without_a_reply_still_says_something(action, code):
    # The session writes the verdict's reply; with none the client would wait for ever.
    assert Verdict(action).reply.code == code
    assert Verdict(action).reply.lines()[0].startswith(f"{code} ")


@pytest.mark.parametrize("points", [float("nan"), float("inf"), float("-inf")])
def test_a_score_must_be_a_finite_number(points):
    # NaN compares false with every threshold, and would poison the score metrics.
    with pytest.raises(ValueError, match="points must be a finite number"):
        Verdict.score("BROKEN", points)
