"""Content rules and the action stage together, as a site would run them: the shipped
`headers` plugin scores what it finds in a message, `[policy]` decides what the total
leads to. The proxy is a real process in front of a recording upstream; smtplib is the
client.

Thresholds: X-Spam-Flag at 5 (which turns the X-Spam-* lines on), reject at 10."""

from __future__ import annotations

import smtplib

import pytest

from tests.integration.test_action_stage import trace_lines
from tests.support.clients import connect
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

RULES = [
    {"symbol": "SUBJECT_PILLS", "header": "Subject", "pattern": r"(?i)\bv[i1]agra\b", "action": 6.0},
    {"symbol": "BODY_LOTTERY", "body": r"(?i)you (have )?won", "action": 4.5},
]
POLICY = {"reject_score": 10, "add_header_score": 5}
RCPT = "user@example.test"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(subject: str, body: bytes) -> bytes:
    return b"From: <a@sender.example>\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body + b"\r\nbye\r\n"


def as_recorded(sent: bytes) -> bytes:
    return sent.removesuffix(b"\r\n")  # the recorder keeps the message without its last CRLF


@pytest.fixture
def proxy_and_upstream(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = make_proxy(
            upstream.address,
            plugins={"enabled": ["access", "headers"]},
            plugin={"headers": {"skip_clients": [], "rules": RULES}},
            policy=POLICY,
        )
        yield proxy, upstream


def test_a_gtube_message_is_rejected_and_never_delivered(proxy_and_upstream):
    proxy, upstream = proxy_and_upstream
    with connect(proxy) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@sender.example", [RCPT], message("test", GTUBE))
    upstream.wait_ended(1)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 Message content rejected (GTUBE)")
    assert upstream.messages == []
    [line] = trace_lines(proxy)
    assert (line["outcome"], line["by"]) == ("rejected", "plugin:headers")


def test_a_borderline_message_is_tagged_with_exactly_the_spam_lines(proxy_and_upstream):
    proxy, upstream = proxy_and_upstream
    sent = message("cheap viagra", b"nothing else to see")
    with connect(proxy) as client:
        assert client.sendmail("a@sender.example", [RCPT], sent) == {}
    upstream.wait_ended(1)
    [delivered] = upstream.messages
    assert delivered == (
        b"X-Spam-Flag: YES\r\n"
        b"X-Spam-Score: 6.0\r\n"
        b"X-Spam-Status: Yes, score=6.0 required=5.0\r\n"
        b"X-Spam-Symbols: SUBJECT_PILLS(6.0)\r\n" + as_recorded(sent)
    )


def test_content_scores_that_add_up_past_reject_score_refuse_the_message(proxy_and_upstream):
    proxy, upstream = proxy_and_upstream
    with connect(proxy) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@sender.example", [RCPT], message("viagra", b"You have won!"))
    upstream.wait_ended(1)
    text = b"5.7.1 Message scored as spam (score 10.5; SUBJECT_PILLS, BODY_LOTTERY)"
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, text)
    assert upstream.messages == []
    [line] = trace_lines(proxy)
    scored = [(e["plugin"], e["symbol"], e["points"]) for e in line["entries"] if e["action"] == "score"]
    assert scored == [("headers", "SUBJECT_PILLS", 6.0), ("headers", "BODY_LOTTERY", 4.5)]


def test_clean_mail_passes_byte_for_byte_apart_from_the_score_lines(proxy_and_upstream):
    proxy, upstream = proxy_and_upstream
    sent = message("minutes of the meeting", b"Attached, as promised.\r\n.a dot-stuffed line")
    with connect(proxy) as client:
        assert client.sendmail("a@sender.example", [RCPT], sent) == {}
    upstream.wait_ended(1)
    [delivered] = upstream.messages
    stuffed = as_recorded(sent).replace(b"\r\n.", b"\r\n..")  # the recorder keeps the wire form
    assert delivered == b"X-Spam-Score: 0.0\r\nX-Spam-Status: No, score=0.0 required=5.0\r\n" + stuffed
