"""The redis state backend in the real proxy with two worker processes: the AUTH
throttle counts one network's failures in every worker, and while Redis is gone it
goes on per process (guessing stays limited, a correct password still logs in), with
the failed operations counted and the outage logged."""

from __future__ import annotations

import smtplib

import pytest

from tests.support.clients import auth_plain
from tests.support.redis import RedisServer
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

ALICE, ALICE_PASSWORD = "alice@example.test", "alice-secret"
INVALID = (535, b"5.7.8 Authentication credentials invalid")
SUCCESS = (235, b"2.7.0 Authentication successful")
THROTTLED = (454, b"4.7.0 Too many authentication failures, try again later")


@pytest.fixture
def redis():
    with RedisServer() as server:
        yield server


@pytest.fixture
def proxy(sink, make_proxy, redis):
    return make_proxy(
        sink.address,
        proxy={"workers": 2},
        state={"backend": "redis", "url": redis.url, "timeout": 5.0},  # generous on a busy machine
        auth={"max_failures": 3, "throttle_delay": 0.0},
    )


def submission_from(proxy, certs, source: str) -> smtplib.SMTP:
    """A new session on the submission listener from `source`, after STARTTLS; the
    kernel hands each new connection to either worker."""
    client = smtplib.SMTP("127.0.0.1", proxy.port("submission"), timeout=30, source_address=(source, 0))
    client.ehlo("client.test")
    client.starttls(context=client_context(certs[0]))
    client.ehlo("client.test")
    return client


def attempt(proxy, certs, source: str, password: str) -> tuple[int, bytes]:
    with submission_from(proxy, certs, source) as client:
        return auth_plain(client, ALICE, password)


def test_a_networks_failures_count_in_every_worker(proxy, certs, redis):
    assert [attempt(proxy, certs, "127.0.0.5", "guess") for _ in range(3)] == [INVALID] * 3
    # Now every worker refuses that network, even a correct password (a network at
    # max_failures is not checked at all). With per-process counts, a session landing on
    # a worker that saw fewer than 3 of the failures would log in.
    assert [attempt(proxy, certs, "127.0.0.5", ALICE_PASSWORD) for _ in range(6)] == [THROTTLED] * 6
    assert redis.client().get("mailproxy:authfail:addr:127.0.0.5/32") == "3"
    assert proxy.metric("mailproxy_state_errors_total") == 0


def test_with_redis_gone_the_throttle_goes_on_per_worker(proxy, certs, redis):
    assert attempt(proxy, certs, "127.0.0.6", ALICE_PASSWORD) == SUCCESS
    redis.stop()
    # Not closed: a correct password logs in.
    assert attempt(proxy, certs, "127.0.0.6", ALICE_PASSWORD) == SUCCESS
    # Not open: one session stays with one worker, whose own count refuses the 4th try.
    with submission_from(proxy, certs, "127.0.0.7") as guesser:
        replies = [auth_plain(guesser, ALICE, "guess") for _ in range(4)]
    assert replies == [INVALID] * 3 + [THROTTLED]
    assert proxy.metric("mailproxy_state_errors_total", backend="redis", operation="get") >= 2
    assert proxy.metric("mailproxy_state_errors_total", backend="redis", operation="incr") >= 3
    assert f"state backend redis at {redis.url} unavailable" in proxy.log()
