"""Plugins that misbehave beyond an `except Exception`, and scores that outlive a
transaction: on the wire, against the proxy as a real process."""

from __future__ import annotations

import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.conftest import DROPINS
from tests.support.clients import connect

pytestmark = pytest.mark.integration

UNRULY = {"enabled": ["access", "unruly"], "directories": [str(DROPINS)]}
SCORER = {"enabled": ["access", "scorer"], "directories": [str(DROPINS)]}
LOCAL_PROBLEM = (451, b"4.3.0 Temporary local problem, try again later")
SPAM = (550, b"5.7.1 Message scored as spam (score 7.0; CONNECT, SENDER, HELO)")


def wait_for_log(proxy, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log():
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{proxy.log()}"
        time.sleep(0.02)


def test_a_blocking_hook_in_a_thread_does_not_hold_up_other_sessions(sink, make_proxy):
    proxy = make_proxy(
        sink.address, plugins=UNRULY, plugin={"unruly": {"blocking": True, "timeout": 1.0}}
    )
    with connect(proxy) as sleeper, connect(proxy) as other, ThreadPoolExecutor(1) as pool:
        sleeper.ehlo("client.test")
        other.ehlo("client.test")
        answer = pool.submit(sleeper.mail, "sleep@test.example")  # the hook sleeps 3 s
        wait_for_log(proxy, "unruly: sleeping")
        started = time.monotonic()
        assert other.noop()[0] == 250
        other_waited = time.monotonic() - started
        assert other_waited < 1.5, "inline, the sleep holds this NOOP for nearly 3 s"
        assert answer.result(timeout=15) == LOCAL_PROBLEM  # its timeout, 1 s
        assert sleeper.noop()[0] == 250
    assert proxy.metric("mailproxy_plugin_errors_total", plugin="unruly", kind="timeout") == 1
    assert "plugin unruly: smtp_mail timed out after 1.0s (1 of its 8 threads still busy)" in proxy.log()


def test_sys_exit_in_a_hook_gets_the_fail_mode_and_the_proxy_runs_on(sink, make_proxy):
    proxy = make_proxy(sink.address, plugins=UNRULY, plugin={"unruly": {"fail_mode": "reject"}})
    proxy.expected_tracebacks = 1  # the plugin's, logged for its author
    with connect(proxy) as client:
        client.ehlo("client.test")
        assert client.mail("exit@test.example") == (554, b"5.3.0 Rejected by local policy")
        assert client.mail("a@sender.example")[0] == 250
    with connect(proxy) as client:
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: still here\r\n\r\nok\r\n")
    assert sink.bodies(expected=1) == [b"Subject: still here\n\nok\n"]
    assert proxy.metric("mailproxy_plugin_errors_total", plugin="unruly", kind="exception") == 1


def test_cancelled_error_raised_by_a_hook_gets_a_reply(sink, make_proxy):
    proxy = make_proxy(sink.address, plugins=UNRULY)
    proxy.expected_tracebacks = 1
    with connect(proxy) as client:
        client.ehlo("client.test")
        assert client.mail("cancel@test.example") == LOCAL_PROBLEM
        assert client.mail("a@sender.example")[0] == 250
    assert proxy.metric("mailproxy_plugin_errors_total", plugin="unruly", kind="exception") == 1


@pytest.mark.parametrize(
    "connect_hook, tracebacks, greeting",
    [
        ("raise", 1, (421, b"4.3.0 proxy.test Temporary local problem, try again later")),
        ("tempfail", 0, (421, b"4.7.1 proxy.test Come back later")),
    ],
)
def test_a_connect_hook_failure_or_tempfail_is_a_421_greeting(
    sink, make_proxy, connect_hook, tracebacks, greeting
):
    proxy = make_proxy(sink.address, plugins=UNRULY, plugin={"unruly": {"connect": connect_hook}})
    proxy.expected_tracebacks = tracebacks
    client = smtplib.SMTP(timeout=10)
    try:
        assert client.connect("127.0.0.1", proxy.port("mx")) == greeting
        assert client.sock.recv(1) == b""  # and the proxy closed the connection
    finally:
        client.close()


def test_session_scores_count_in_every_transaction(sink, make_proxy):
    proxy = make_proxy(
        sink.address,
        plugins=SCORER,
        plugin={"scorer": {"connect_points": 3, "helo_points": 1, "sender_points": 3}},
        policy={"reject_score": 5},
    )
    with connect(proxy) as client:
        assert client.ehlo("client.test")[0] == 250  # the session has 3 + 1
        assert client.mail("a@scored.example") == SPAM  # + 3
        assert client.mail("a@clean.example")[0] == 250  # the refused MAIL's points went with it
        assert client.rset()[0] == 250
        assert client.mail("a@scored.example") == SPAM  # a new transaction starts from 4
        assert client.ehlo("client.test")[0] == 250  # a new EHLO replaces the HELO points
        assert client.mail("a@scored.example") == SPAM
        client.sendmail("a@clean.example", ["user@example.test"], b"Subject: clean\r\n\r\nok\r\n")
    assert sink.bodies(expected=1) == [b"Subject: clean\n\nok\n"]
