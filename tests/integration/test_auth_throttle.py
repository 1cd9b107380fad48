"""AUTH throttling as clients on different loopback addresses see it: a stranger's
failures never lock an account out, each failure from a network makes its next attempt
wait longer, and the disconnect mode sends away a network, never an account."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.support.clients import auth_plain
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

ALICE, ALICE_PASSWORD = "alice@example.test", "alice-secret"
INVALID = (535, b"5.7.8 Authentication credentials invalid")
SUCCESS = (235, b"2.7.0 Authentication successful")


def submission_from(proxy, certs, source: str) -> smtplib.SMTP:
    """A client on the submission listener from `source`, after STARTTLS."""
    client = smtplib.SMTP("127.0.0.1", proxy.port("submission"), timeout=30, source_address=(source, 0))
    client.ehlo("client.test")
    client.starttls(context=client_context(certs[0]))
    client.ehlo("client.test")
    return client


def timed_auth(client: smtplib.SMTP, user: str, password: str) -> tuple[tuple[int, bytes], float]:
    start = time.monotonic()
    reply = auth_plain(client, user, password)
    return reply, time.monotonic() - start


def network_pauses(proxy) -> tuple[float, float]:
    """How many pauses the proxy imposed for the client's network, and their sum."""
    return (
        proxy.metric("mailproxy_auth_delay_seconds_count", reason="network"),
        proxy.metric("mailproxy_auth_delay_seconds_sum", reason="network"),
    )


def test_a_stranger_cannot_lock_an_account_out(sink, make_proxy, certs):
    proxy = make_proxy(sink.address, auth={"max_failures": 3, "throttle_delay": 0.5})
    with submission_from(proxy, certs, "127.0.0.66") as stranger:
        for _ in range(3):
            assert auth_plain(stranger, ALICE, "guess") == INVALID
    with submission_from(proxy, certs, "127.0.0.77") as alice:
        reply, seconds = timed_auth(alice, ALICE, ALICE_PASSWORD)
    assert reply == SUCCESS
    # Promptly: the only pauses were the stranger's (before its 2nd and 3rd attempt),
    # none for her account. A fourth wrong answer for the account would wait 2 s.
    assert network_pauses(proxy) == (2, 0.5 + 1.0)
    assert proxy.metric("mailproxy_auth_delay_seconds_count", reason="account") == 0
    assert seconds < 2.0


def test_each_failure_from_a_network_makes_the_next_attempt_wait_longer(sink, make_proxy, certs):
    proxy = make_proxy(sink.address, auth={"max_failures": 10, "throttle_delay": 0.5})
    expected = [0.0, 0.5, 1.0, 2.0]
    with submission_from(proxy, certs, "127.0.0.66") as client:
        waits = []
        for _ in expected:
            reply, seconds = timed_auth(client, "bob@example.test", "guess")
            assert reply == INVALID
            waits.append(seconds)
    assert all(wait >= least for wait, least in zip(waits, expected)), waits
    assert waits == sorted(waits), waits
    assert network_pauses(proxy) == (3, 3.5)
    # Another address is a network of its own (IPv4 /32 by default) and does not wait.
    with submission_from(proxy, certs, "127.0.0.77") as other:
        assert auth_plain(other, "bob@example.test", "bob-secret") == SUCCESS
    assert network_pauses(proxy) == (3, 3.5)


def test_the_cap_and_the_prefix_are_settings(sink, make_proxy, certs):
    proxy = make_proxy(
        sink.address,
        auth={"max_failures": 10, "throttle_delay": 0.25, "throttle_delay_max": 0.5, "ipv4_prefix": 24},
    )
    with submission_from(proxy, certs, "127.0.0.66") as client:
        for _ in range(3):
            assert auth_plain(client, "bob@example.test", "guess") == INVALID
    assert network_pauses(proxy) == (2, 0.25 + 0.5)  # not 0.25 + 0.5 + 1.0: capped
    # 127.0.0.77 is in the same /24, so it waits as the next attempt from there would.
    with submission_from(proxy, certs, "127.0.0.77") as alice:
        reply, seconds = timed_auth(alice, ALICE, ALICE_PASSWORD)
    assert reply == SUCCESS
    assert seconds >= 0.5
    assert network_pauses(proxy) == (3, 1.25)


def test_disconnect_is_for_a_network_never_for_an_account(sink, make_proxy, certs):
    proxy = make_proxy(sink.address, auth={"max_failures": 2, "throttle": "disconnect"})
    stranger = submission_from(proxy, certs, "127.0.0.66")
    for _ in range(2):
        assert auth_plain(stranger, ALICE, "guess") == INVALID
    assert auth_plain(stranger, ALICE, ALICE_PASSWORD) == (
        421, b"4.7.0 proxy.test Too many authentication failures"
    )
    with pytest.raises(smtplib.SMTPServerDisconnected):
        stranger.noop()
    # Alice from her own address is checked, and let in.
    with submission_from(proxy, certs, "127.0.0.77") as alice:
        assert auth_plain(alice, ALICE, ALICE_PASSWORD) == SUCCESS
    assert proxy.metric("mailproxy_auth_attempts_total", result="throttled") == 1
