"""greylist and ratelimit in the real proxy with two worker processes sharing a real
redis-server: a deferral in one worker is remembered in the other, a limit counts
every worker's sessions, and with Redis gone each plugin does what docs/plugins.md
says (greylisting lets mail pass, limits hold per process) and the errors are counted."""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from tests.support.redis import RedisServer

pytestmark = pytest.mark.integration

SENDER = "alice@sender.example"
MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"
DEFERRED = (450, b"4.7.1 Greylisted, try again in 1 second")


@pytest.fixture
def redis():
    with RedisServer() as server:
        yield server


def proxy_with(make_proxy, sink, redis, **plugins):
    """Two workers, state in `redis`, the plugins (after access) with their options."""
    return make_proxy(
        sink.address,
        proxy={"workers": 2},
        state={"backend": "redis", "url": redis.url, "timeout": 5.0},  # generous on a busy machine
        plugins={"enabled": ["access", *plugins]},
        plugin=plugins,
    )


def mx_client(proxy, source: str = "127.0.0.1") -> smtplib.SMTP:
    """A new connection: the kernel hands it to either worker."""
    client = smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15, source_address=(source, 0))
    client.ehlo("client.test")
    return client


def greeting(proxy, source: str) -> bytes:
    """The first line a new connection from `source` hears."""
    with socket.create_connection(("127.0.0.1", proxy.port("mx")), timeout=15, source_address=(source, 0)) as s:
        return s.makefile("rb").readline()


def test_a_deferral_in_one_worker_is_remembered_in_the_other(sink, make_proxy, redis):
    proxy = proxy_with(make_proxy, sink, redis, greylist={"delay": 1, "skip_clients": []})
    recipients = [f"user{i}@example.test" for i in range(8)]
    for recipient in recipients:
        with mx_client(proxy) as client:
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(recipient) == DEFERRED
    time.sleep(1.5)  # the delay, counted by the proxy from the last deferral above
    for recipient in recipients:
        with mx_client(proxy) as client:
            # Each retry lands on either worker; with per-process state, about half
            # would be deferred again as new.
            assert client.sendmail(SENDER, [recipient], MESSAGE) == {}
    count = lambda result, expected: proxy.settled_metric("mailproxy_plugin_checks_total", expected,
                                                          plugin="greylist", result=result)
    assert (count("new", 8), count("passed", 8), count("state_error", 0)) == (8, 8, 0)


def test_a_rate_limit_counts_the_sessions_of_both_workers(sink, make_proxy, redis):
    proxy = proxy_with(make_proxy, sink, redis,
                       ratelimit={"client_connections": 4, "window": 3600, "skip_clients": []})
    greetings = [greeting(proxy, "127.0.0.1") for _ in range(12)]
    # With per-process counts, each worker would greet 4 of its own share.
    assert [line[:3] for line in greetings] == [b"220"] * 4 + [b"421"] * 8, greetings
    assert greetings[-1] == (b"421 4.7.1 proxy.test Error: too many connections from your network, "
                             b"try again later\r\n")
    count = lambda result, expected: proxy.settled_metric("mailproxy_plugin_checks_total", expected,
                                                          plugin="ratelimit", check="client_connections",
                                                          result=result)
    assert (count("within", 4), count("over", 8)) == (4, 8)


def test_with_redis_gone_greylisting_lets_mail_pass_and_limits_hold_per_worker(sink, make_proxy, redis):
    proxy = proxy_with(
        make_proxy, sink, redis,
        greylist={"delay": 3600, "retry_window": 7200, "skip_clients": []},
        # Only 127.0.0.3 is limited, so the greylisting sessions are not.
        ratelimit={"client_connections": 2, "window": 3600, "skip_clients": ["127.0.0.1/32"]},
    )
    with mx_client(proxy) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("bob@example.test")[0] == 450
    redis.stop()

    # greylist (on_state_error = "pass"): mail is not deferred for a state it cannot read.
    with mx_client(proxy) as client:
        assert client.sendmail(SENDER, ["bob@example.test", "carol@example.test"], MESSAGE) == {}
    assert proxy.settled_metric("mailproxy_plugin_checks_total", 2, plugin="greylist", result="state_error") == 2

    # ratelimit: each worker counts on its own, so at most 2 per worker are greeted;
    # neither all (no limit) nor none (everyone refused).
    greetings = [greeting(proxy, "127.0.0.3")[:3] for _ in range(10)]
    assert 2 <= greetings.count(b"220") <= 4, greetings
    assert greetings.count(b"220") + greetings.count(b"421") == 10, greetings

    assert proxy.metric("mailproxy_state_errors_total", backend="redis", operation="get") >= 2
    assert proxy.metric("mailproxy_state_errors_total", backend="redis", operation="incr_and_get") >= 10
    assert f"state backend redis at {redis.url} unavailable" in proxy.log()
