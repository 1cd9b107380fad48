"""The shared login check's edges, seen through SMTP AUTH on a real proxy.

Pinned here:
- when every `authenticate` backend fails (an upstream that answers AUTH with a 4xx),
  the client hears 454 4.7.0 "Temporary authentication failure", the attempt is counted
  as `error`, and its failure slot is given back: however many errors, the network is
  neither paused nor throttled, and the account is not paused;
- a backend that fails before another says "wrong password" makes a plain failure
  (535, counted as `failure`) that keeps its slot, so such guesses are throttled;
- guesses at a user no backend knows keep their slots too, and are throttled;
- a wrong password's answer waits for the account's earlier failures, counted from the
  start of the attempt, even from a network that never failed before.
"""

from __future__ import annotations

import pytest

from tests.integration.test_auth_throttle import INVALID, network_pauses, submission_from, timed_auth
from tests.support.clients import auth_plain, connect
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

BOB = "bob@example.test"
TEMPORARY = (454, b"4.7.0 Temporary authentication failure")
THROTTLED = (454, b"4.7.0 Too many authentication failures, try again later")


def directory_down() -> RecordingUpstream:
    """An upstream that offers AUTH and can never check a password."""
    return RecordingUpstream(
        auth_reply=b"454 4.7.0 directory unavailable", ehlo_extensions=("PIPELINING", "AUTH PLAIN")
    )


def plaintext_submission(make_proxy, recorder: RecordingUpstream, backends: list[str]):
    return make_proxy(
        recorder.address,
        auth={"backends": backends, "max_failures": 2, "throttle_delay": 0.5},
        listeners=[{"name": "submission", "mode": "submission", "upstream": "sink", "allow_plaintext_auth": True}],
    )


def test_backend_errors_are_temporary_and_never_throttle_the_network(make_proxy):
    with directory_down() as recorder:
        proxy = plaintext_submission(make_proxy, recorder, ["upstream"])
        client = connect(proxy, "submission")
        client.ehlo("client.test")
        for _ in range(4):  # twice max_failures
            assert auth_plain(client, BOB, "bob-secret") == TEMPORARY
        client.quit()
    assert proxy.metric("mailproxy_auth_attempts_total", result="error") == 4
    assert proxy.metric("mailproxy_auth_attempts_total") == 4
    assert network_pauses(proxy) == (0, 0)
    assert proxy.metric("mailproxy_auth_delay_seconds_count", reason="account") == 0


def test_a_wrong_password_after_a_failed_backend_is_a_failure_and_is_throttled(make_proxy):
    with directory_down() as recorder:
        proxy = plaintext_submission(make_proxy, recorder, ["upstream", "file"])
        client = connect(proxy, "submission")
        client.ehlo("client.test")
        for _ in range(2):  # max_failures
            assert auth_plain(client, BOB, "guess") == INVALID
        assert auth_plain(client, BOB, "bob-secret") == THROTTLED
        client.quit()
    assert proxy.metric("mailproxy_auth_attempts_total", result="failure") == 2
    assert proxy.metric("mailproxy_auth_attempts_total", result="error") == 0


def test_guesses_at_a_user_nobody_knows_are_throttled(sink, make_proxy, certs):
    proxy = make_proxy(sink.address, auth={"max_failures": 2})
    with submission_from(proxy, certs, "127.0.0.66") as client:
        for _ in range(2):
            assert auth_plain(client, "nobody@example.test", "guess") == INVALID
        assert auth_plain(client, "nobody@example.test", "guess") == THROTTLED
    assert proxy.metric("mailproxy_auth_attempts_total", result="failure") == 2


def test_a_wrong_password_waits_for_the_accounts_failures_from_a_fresh_network(sink, make_proxy, certs):
    proxy = make_proxy(sink.address, auth={"max_failures": 10, "throttle_delay": 1.0})
    with submission_from(proxy, certs, "127.0.0.66") as first:
        assert auth_plain(first, BOB, "guess") == INVALID
    with submission_from(proxy, certs, "127.0.0.77") as second:
        reply, seconds = timed_auth(second, BOB, "guess")
    assert reply == INVALID
    assert seconds >= 1.0  # the account's one earlier failure: throttle_delay
    assert network_pauses(proxy) == (0, 0)  # the wait was the account's, not a network's
