"""The action stage and the why-trace on the wire: the proxy as a real process in front
of a recording upstream, smtplib as the client, drop-in plugins that score
(`sender_symbols` at MAIL by the sender's local part, `body_symbols` at end of data).

Thresholds: reject at 10, X-Spam-Flag at 5 (which turns the X-Spam-* lines on)."""

from __future__ import annotations

import json
import re
import smtplib

import pytest

from tests.integration.conftest import DROPINS, USERS
from tests.support.clients import connect, submission_client
from tests.support.configs import base_config
from tests.support.proxy import ProxyProcess
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

SENDERS = {
    "spammer": {"FREEMAIL": 1.0, "DNSBL_LISTED": 6.0, "SPF_FAIL": 3.0, "BAD_HELO": 2.0},  # 12
    "borderline": {"SPF_FAIL": 2.5, "DNSBL_LISTED": 4.0},  # 6.5
    "listed": {"DNSBL_LISTED": 6.0},  # 6, and 11 with the body's 5
}
POLICY = {"reject_score": 10, "add_header_score": 5}
MODES = ["stream", "whole"]
RCPT = "user@example.test"
# A message as smtplib sends it: CRLF line ends; the line with a leading dot is
# dot-stuffed on the wire, and must reach the upstream stuffed exactly so.
MESSAGE = b"From: <a@sender.example>\r\nSubject: hello\r\n\r\nHello,\r\n.a line with a leading dot\r\nbye\r\n"
WIRE = MESSAGE.replace(b"\r\n.", b"\r\n..").removesuffix(b"\r\n")  # as the recorder keeps it


def proxy_for(make_proxy, upstream, data_mode="stream", body=False, policy=None, **overrides):
    enabled = ["access", "sender_symbols", *(["body_symbols"] if body else [])]
    return make_proxy(
        upstream.address,
        listener={"data_mode": data_mode},
        plugins={"enabled": enabled, "directories": [str(DROPINS)]},
        plugin={"sender_symbols": {"senders": SENDERS}},
        policy=policy or POLICY,
        **overrides,
    )


def trace_lines(proxy) -> list[dict]:
    """Every trace line in the proxy's log, parsed: JSON after the logger's name."""
    prefix = " mailproxy.trace: "
    return [json.loads(line.split(prefix, 1)[1]) for line in proxy.log().splitlines() if prefix in line]


def header_lines(*lines: str) -> bytes:
    return b"".join(line.encode() + b"\r\n" for line in lines)


@pytest.mark.parametrize("data_mode", MODES)
def test_a_message_over_reject_score_is_refused_naming_its_top_symbols(make_proxy, data_mode):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, data_mode)
        with connect(proxy) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("spammer@sender.example", [RCPT], MESSAGE)
        [session] = upstream.wait_ended(1)
    text = b"5.7.1 Message scored as spam (score 12.0; DNSBL_LISTED, SPF_FAIL, BAD_HELO, ...)"
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, text)
    assert upstream.messages == [] and b"DATA" not in session.commands
    [line] = trace_lines(proxy)
    assert (line["from"], line["outcome"], line["by"], line["action"]) == (
        "spammer@sender.example", "rejected", "score", "reject",
    )
    assert line["reply"] == "550 " + text.decode()
    assert (line["score"], line["thresholds"]) == (12.0, {"reject_score": 10.0, "add_header_score": 5.0})
    scored = {(e["plugin"], e["symbol"], e["points"]) for e in line["entries"] if e["action"] == "score"}
    assert scored == {("sender_symbols", symbol, points) for symbol, points in SENDERS["spammer"].items()}


def test_a_message_whose_content_takes_it_over_reject_score_is_never_delivered(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, body=True)
        with connect(proxy) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("listed@sender.example", [RCPT], MESSAGE + b"You won the lottery!\r\n")
            # The session goes on, and the next message is judged afresh.
            client.sendmail("listed@sender.example", [RCPT], MESSAGE)
        [session] = upstream.wait_ended(1)
    text = b"5.7.1 Message scored as spam (score 11.0; DNSBL_LISTED, BODY_LOTTERY)"
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, text)
    assert session.commands.count(b"DATA") == 1 and len(upstream.messages) == 1
    refused_line, delivered_line = trace_lines(proxy)
    assert (refused_line["outcome"], refused_line["by"], refused_line["rcpts"]) == ("rejected", "score", 1)
    # Every plugin that scored is named, with what it said and in which hook.
    assert [(e["plugin"], e["hook"], e["action"], e.get("symbol")) for e in refused_line["entries"]] == [
        ("sender_symbols", "smtp_mail", "score", "DNSBL_LISTED"),
        ("body_symbols", "smtp_data", "score", "BODY_LOTTERY"),
        ("[policy]", "smtp_data", "reject", None),
    ]
    assert refused_line["entries"][2]["reason"] == "score 11.0 >= reject_score 10.0"
    delivered = (delivered_line["outcome"], delivered_line["action"], delivered_line["score"])
    assert delivered == ("delivered", "add_header", 6.0)


@pytest.mark.parametrize("data_mode", MODES)
def test_a_borderline_message_is_delivered_tagged_and_otherwise_byte_for_byte(make_proxy, data_mode):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, data_mode)
        with connect(proxy) as client:
            assert client.sendmail("borderline@sender.example", [RCPT], MESSAGE) == {}
        upstream.wait_ended(1)
    assert upstream.messages == [
        header_lines(
            "X-Spam-Flag: YES",
            "X-Spam-Score: 6.5",
            "X-Spam-Status: Yes, score=6.5 required=5.0",
            "X-Spam-Symbols: DNSBL_LISTED(4.0), SPF_FAIL(2.5)",
        )
        + WIRE
    ]
    [line] = trace_lines(proxy)
    assert (line["outcome"], line["by"], line["action"], line["score"]) == ("delivered", "upstream", "add_header", 6.5)
    assert line["reply"].startswith("250 ")


@pytest.mark.parametrize("data_mode", MODES)
def test_a_clean_message_gets_only_the_score_lines(make_proxy, data_mode):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, data_mode)
        with connect(proxy) as client:
            client.sendmail("clean@sender.example", [RCPT], MESSAGE)
        upstream.wait_ended(1)
    assert upstream.messages == [header_lines("X-Spam-Score: 0.0", "X-Spam-Status: No, score=0.0 required=5.0") + WIRE]
    [line] = trace_lines(proxy)
    assert (line["outcome"], line["action"], line["entries"]) == ("delivered", "no action", [])


@pytest.mark.parametrize("data_mode", MODES)
def test_without_spam_headers_only_the_tag_is_added(make_proxy, data_mode):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, data_mode, policy={**POLICY, "spam_headers": False})
        with connect(proxy) as client:
            client.sendmail("clean@sender.example", [RCPT], MESSAGE)
            client.sendmail("borderline@sender.example", [RCPT], MESSAGE)
        upstream.wait_ended(1)
    assert upstream.messages == [WIRE, b"X-Spam-Flag: YES\r\n" + WIRE]


def test_logged_in_users_have_their_own_thresholds(make_proxy, certs):
    # [policy.authenticated] sets only a higher reject_score: no tag and no X-Spam-*
    # lines on the users' own mail, and 12 points do not refuse it.
    policy = {**POLICY, "authenticated": {"reject_score": 20}}
    user, password = next(iter(USERS.items()))
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, policy=policy)
        with submission_client(proxy, certs, user, password) as client:
            assert client.sendmail("spammer@sender.example", ["someone@elsewhere.example"], MESSAGE) == {}
        with connect(proxy) as client:
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail("spammer@sender.example", [RCPT], MESSAGE)
        upstream.wait_ended(2)
    assert upstream.messages == [WIRE]
    delivered, refused = trace_lines(proxy)
    assert (delivered["user"], delivered["outcome"]) == (user, "delivered")
    assert delivered["thresholds"] == {"reject_score": 20.0}
    assert (refused["outcome"], refused["thresholds"]["reject_score"]) == ("rejected", 10.0)


def test_the_trace_header_names_the_session_and_what_each_plugin_said(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, policy={"trace_header": True})
        with connect(proxy) as client:
            client.sendmail("borderline@sender.example", [RCPT], MESSAGE)
        upstream.wait_ended(1)
    [line] = trace_lines(proxy)
    [message] = upstream.messages
    assert message.endswith(b"\r\n" + WIRE)
    unfolded = message.removesuffix(WIRE).decode().replace("\r\n ", " ").removesuffix("\r\n")
    assert re.fullmatch(
        rf"X-Mailproxy-Trace: session={line['session']}; score=6\.5;"
        r" sender_symbols/mail SPF_FAIL\(2\.5\) \d+\.\dms; sender_symbols/mail DNSBL_LISTED\(4\.0\) \d+\.\dms",
        unfolded,
    ), unfolded


@pytest.mark.parametrize("data_mode", MODES)
def test_a_score_final_only_at_data_is_refused_there(certs, users_file, tmp_path, data_mode):
    # Points from connect stay under [policy]'s reject_score; the login brings the lower
    # one of [policy.authenticated]. With no transaction hook to hold them against it at
    # MAIL or RCPT, the action stage refuses the message: DATA itself when the message
    # would stream, its end when it is taken whole. The upstream never hears DATA.
    user, password = next(iter(USERS.items()))
    with RecordingUpstream() as upstream:
        config = base_config(
            upstream.address, certs, users_file,
            listener={"data_mode": data_mode},
            plugins={"enabled": ["client_symbols"], "directories": [str(DROPINS)]},
            policy={"reject_score": 10, "authenticated": {"reject_score": 5}},
        )
        del config["plugin"]["access"]  # its MAIL and RCPT hooks would judge the score first
        proxy = ProxyProcess(config, tmp_path).start()
        try:
            with submission_client(proxy, certs, user, password) as client:
                with pytest.raises(smtplib.SMTPDataError) as refused:
                    client.sendmail("alice@example.test", ["someone@elsewhere.example"], MESSAGE)
                assert client.noop()[0] == 250  # the session goes on
        finally:
            assert proxy.stop() == 0
        [session] = upstream.wait_ended(1)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        550, b"5.7.1 Message scored as spam (score 6.0; CLIENT_LISTED)",
    )
    assert b"DATA" not in session.commands and upstream.messages == []
    assert "Traceback" not in proxy.log()
    [line] = trace_lines(proxy)
    assert (line["outcome"], line["by"], line["user"]) == ("rejected", "score", user)
    assert [(e["plugin"], e["hook"], e["action"]) for e in line["entries"]] == [
        ("client_symbols", "smtp_connect", "score"),
        ("[policy]", "smtp_data", "reject"),
    ]


SPOOFED = (
    b"From: <a@sender.example>\r\n"
    b"X-Spam-Flag: NO\r\n"
    b"X-Spam-Score: -9.0\r\n"
    b"X-Spam-Status: No, score=-9.0\r\n"
    b"\trequired=99\r\n"
    b"X-Mailproxy-Trace: nobody looked\r\n"
    b"Subject: hello\r\n\r\n"
    b"X-Spam-Flag: NO (in the body, and so not a field)\r\n"
)


@pytest.mark.parametrize("data_mode", MODES)
def test_the_clients_own_spam_and_trace_fields_are_dropped_where_the_proxy_writes_them(make_proxy, data_mode):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, data_mode, policy={**POLICY, "trace_header": True})
        with connect(proxy) as client:
            assert client.sendmail("borderline@sender.example", [RCPT], SPOOFED) == {}
        upstream.wait_ended(1)
    [delivered] = upstream.messages
    ours, _, theirs = delivered.partition(b"From: ")
    assert b"X-Spam-Flag: YES\r\n" in ours and b"X-Mailproxy-Trace: " in ours
    assert theirs == (
        b"<a@sender.example>\r\nSubject: hello\r\n\r\nX-Spam-Flag: NO (in the body, and so not a field)"
    )


def test_where_the_proxy_writes_no_spam_fields_the_clients_pass_unchanged(make_proxy):
    with RecordingUpstream() as upstream:
        proxy = proxy_for(make_proxy, upstream, policy={"reject_score": 10})
        with connect(proxy) as client:
            assert client.sendmail("borderline@sender.example", [RCPT], SPOOFED) == {}
        upstream.wait_ended(1)
    assert upstream.messages == [SPOOFED.removesuffix(b"\r\n")]
