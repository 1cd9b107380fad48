"""Plugins on the wire: access refusals, a data hook's refusal, a plugin that fails or
hangs, observe mode."""

import smtplib
from pathlib import Path

import pytest

from tests.support.clients import connect

DROPINS = Path(__file__).parent / "dropins"

pytestmark = pytest.mark.integration

FAULTY = {"enabled": ["access", "faulty"], "directories": [str(DROPINS)]}


def test_access_rejects_a_denied_sender(proxy, sink):
    with connect(proxy) as client:
        client.ehlo("client.test")
        assert client.mail("bulk@spam.example") == (550, b"5.7.1 Sender address rejected")
        assert client.mail("a@sender.example")[0] == 250  # the session goes on
    assert proxy.metric("mailproxy_verdicts_total", plugin="access", action="reject", enforced="true") == 1


def test_access_refuses_a_denied_client_network_at_connect(sink, make_proxy):
    proxy = make_proxy(sink.address, plugin={"access": {"deny_clients": ["127.0.0.0/8"]}})
    client = smtplib.SMTP(timeout=10)
    code, text = client.connect("127.0.0.1", proxy.port("mx"))
    client.close()
    assert (code, text) == (554, b"5.7.1 Access denied")


def test_access_refuses_a_denied_recipient_and_the_others_get_the_message(sink, make_proxy):
    proxy = make_proxy(sink.address, plugin={"access": {"deny_recipients": ["abuse-test@*"]}})
    with connect(proxy) as client:
        client.ehlo("client.test")
        client.mail("a@sender.example")
        assert client.rcpt("user@example.test")[0] == 250
        assert client.rcpt("abuse-test@example.test") == (550, b"5.7.1 Recipient address rejected")
        assert client.rcpt("other@example.test")[0] == 250
        assert client.data(b"Subject: two of three\r\n\r\nok\r\n")[0] == 250
    [(fields, _)] = sink.transactions(expected=1)
    assert fields["X-Rcpt-Args"] == ["<user@example.test>", "<other@example.test>"]


def test_a_data_hook_refusal_reaches_the_client_and_nothing_is_delivered(sink, make_proxy):
    proxy = make_proxy(sink.address, plugins=FAULTY)
    with connect(proxy) as client:
        client.ehlo("client.test")
        client.mail("a@sender.example")
        client.rcpt("user@example.test")
        refused = b"Subject: refused\r\nX-Reject-Me: yes\r\n\r\nbody\r\n"
        assert client.data(refused) == (554, b"5.7.1 Content rejected by the faulty test plugin")
        # The upstream never heard DATA for it; the next message goes through.
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: small\r\n\r\nok\r\n")
    [body] = sink.bodies(expected=1)
    assert body.endswith(b"\nSubject: small\n\nok\n")  # after the plugin's X-Faulty-Seen header
    assert proxy.metric("mailproxy_messages_total", outcome="rejected") == 1
    assert proxy.metric("mailproxy_messages_total", outcome="delivered") == 1


def test_a_plugin_that_raises_gives_4xx_and_the_session_survives(sink, make_proxy):
    proxy = make_proxy(sink.address, plugins=FAULTY)
    proxy.expected_tracebacks = 1  # the plugin's, logged for its author
    with connect(proxy) as client:
        client.ehlo("client.test")
        assert client.mail("raise@test.example") == (451, b"4.3.0 Temporary local problem, try again later")
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: after\r\n\r\nok\r\n")
    [body] = sink.bodies(expected=1)
    assert body.startswith(b"X-Faulty-Seen: ")  # the plugin's data hook added a header
    assert proxy.metric("mailproxy_plugin_errors_total", plugin="faulty", kind="exception") == 1
    assert "plugin faulty: smtp_mail raised" in proxy.log()


def test_a_plugin_that_hangs_times_out_with_4xx(sink, make_proxy):
    proxy = make_proxy(sink.address, plugins=FAULTY, plugin={"faulty": {"timeout": 0.5}})
    with connect(proxy) as client:
        client.ehlo("client.test")
        assert client.mail("hang@test.example") == (451, b"4.3.0 Temporary local problem, try again later")
        assert client.mail("a@sender.example")[0] == 250
    assert proxy.metric("mailproxy_plugin_errors_total", plugin="faulty", kind="timeout") == 1


def test_observe_mode_lets_mail_through_and_counts_the_reject(sink, make_proxy):
    proxy = make_proxy(
        sink.address,
        plugins=FAULTY,
        plugin={"faulty": {"observe": True}, "access": {"deny_senders": ["*@spam.example"], "observe": True}},
    )
    with connect(proxy) as client:
        client.sendmail("bulk@spam.example", ["user@example.test"], b"Subject: trial\r\n\r\nok\r\n")
        client.sendmail("reject@test.example", ["user@example.test"], b"Subject: trial 2\r\n\r\nok\r\n")
    assert len(sink.bodies(expected=2)) == 2
    assert proxy.metric("mailproxy_verdicts_total", plugin="access", action="reject", enforced="false") == 1
    assert proxy.metric("mailproxy_verdicts_total", plugin="faulty", action="reject", enforced="false") == 1
    assert proxy.metric("mailproxy_verdicts_total", enforced="true") == 0
