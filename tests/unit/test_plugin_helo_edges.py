"""The helo plugin at its edges, each reached as the proxy reaches it: EHLO in a scripted
session through the real policy engine (mailproxy.testing), the names resolved by a real
DNS server (dnsmasq on loopback, as in test_plugin_helo.py). The exact replies a client
gets; an IPv6 literal of the proxy's own address; a name with one bracket; which names
are looked up at all; and `lookup_timeout`: what a short one leaves for AAAA and MX,
and what happens when the A answer is read only after it has passed, or the server
stops answering after the A lookup.

Timing: where the server must not answer for a while it is stopped (SIGSTOP) rather than
raced, and the tests go on when the kernel shows a query waiting at the server, or an
answer waiting at this process (/proc/net/udp), not after guessed sleeps; the one
deliberate pause is the head start of a query that a second session then shares, half
of a lookup_timeout that is generous for a loaded machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from contextlib import contextmanager

import pytest
from prometheus_client import REGISTRY

from mailproxy.testing import policy_session
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.unit.test_plugin_helo import RECORDS, checks

HOSTNAME = "proxy.test"  # the proxy's name in a scripted session's replies
ACCEPTED = [f"250 {HOSTNAME}"]  # no finding: the upstream's answer to EHLO
NOT_FOUND = ["550 5.7.1 Helo command rejected: Host not found"]


@pytest.fixture(scope="module")
def dns():
    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        yield server


def proxy(dns_server: Dnsmasq, **options):
    """A client connection to a proxy running the installed helo plugin through the real
    policy engine, asking `dns_server`; clients from anywhere are judged."""
    return policy_session("helo", {"skip_clients": [], **options},
                          config={"dns": {"servers": [dns_server.address], "timeout": 2.0}})


def ehlo(dns_server: Dnsmasq, hostname: str, **options) -> list[str]:
    async def steps():
        return (await proxy(dns_server, **options).ehlo(hostname)).lines

    return asyncio.run(steps())


# -- the replies a client gets -----------------------------------------------------------------

def test_a_one_label_name_refused_gets_504_need_fully_qualified_hostname(dns):
    # docs/plugins.md: not_fqdn refuses with `504 5.5.2`, Postfix's reply for
    # reject_non_fqdn_helo_hostname: what sending servers' logs and their admins expect.
    assert ehlo(dns, "localhost", not_fqdn="reject") == [
        "504 5.5.2 Helo command rejected: Need fully-qualified hostname"
    ]


# -- address literals ----------------------------------------------------------------------------

def test_an_ipv6_literal_of_an_own_address_is_refused(dns):
    # `[IPv6:2001:db8::1]` names the address after its tag: a client that claims the
    # proxy's public IPv6 address (`own_addresses`) is refused like one that claims its
    # IPv4 address, whatever case the tag is written in.
    for literal in ("[IPv6:2001:db8::1]", "[ipv6:2001:DB8::1]"):
        assert ehlo(dns, literal, own_addresses=["2001:db8::1"]) == [
            "550 5.7.1 Helo command rejected: That address is mine"
        ]
    assert ehlo(dns, "[IPv6:2001:db8::2]", own_addresses=["2001:db8::1"]) == ACCEPTED


@pytest.mark.parametrize("hostname", ["192.0.2.1]", "[192.0.2.1", "x.192.0.2.1]"])
def test_a_name_with_only_one_of_the_brackets_is_an_invalid_name(dns, hostname):
    # An address literal is bracketed at both ends (RFC 5321 4.1.3). A name with a
    # stray bracket is neither a literal nor a host name: refused as invalid, never
    # read as the address that is left after cutting off its first and last characters.
    assert ehlo(dns, hostname) == ["501 5.5.2 Helo command rejected: Invalid name"]


# -- which names are looked up ---------------------------------------------------------------------

@pytest.mark.parametrize("hostname, options", [
    ("nosuch.client.test", {"not_resolving": "off"}),  # the DNS check is off
    ("localhost", {"not_fqdn": "off"}),  # one label: nothing to look up, checked or not
])
def test_a_name_is_looked_up_only_when_the_dns_check_can_find_something(hostname, options):
    # With `not_resolving = "off"` the plugin asks the DNS nothing: an administrator
    # turns the check off to spare the lookups (and their latency on every EHLO). A name
    # of one label is never asked for either: "localhost." would go to the resolver.
    with Dnsmasq([*authoritative(), *RECORDS, "--log-queries"], zones=()) as server:
        before = checks("valid")
        assert ehlo(server, hostname, **options) == ACCEPTED
        assert checks("valid") == before + 1
        assert [server.queries(hostname, rdtype) for rdtype in ("A", "AAAA", "MX")] == [0, 0, 0]


# -- lookup_timeout ------------------------------------------------------------------------------

def test_a_lookup_timeout_under_a_second_still_leaves_aaaa_and_mx_their_time(dns):
    # After the A lookup, AAAA and MX get what is left of lookup_timeout, however little:
    # a name that has none of them is found not resolving, not given up on as an error.
    before = checks("error")
    assert ehlo(dns, "nosuch.client.test", lookup_timeout=0.9, not_resolving="reject") == NOT_FOUND
    assert ehlo(dns, "v6only.client.test", lookup_timeout=0.9, not_resolving="reject") == ACCEPTED
    assert checks("error") == before


def _udp_sockets() -> list[tuple[int, int, int]]:
    """(local port, bytes waiting to be read, inode) of every UDP socket on this host."""
    sockets = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        if not os.path.exists(table):  # a kernel without IPv6
            continue
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                sockets.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[4].split(":")[1], 16),
                                int(fields[9])))
    return sockets


def queued_bytes(server: Dnsmasq) -> int:
    """What waits, unread, at the server's socket (as the kernel counts it)."""
    return sum(waiting for port, waiting, _ in _udp_sockets() if port == server.port)


def a_queries_failed() -> float:
    """A queries of the plugins' DNS cache that failed (timed out), as the metrics count them."""
    labels = {"type": "A", "result": "error"}
    return REGISTRY.get_sample_value("mailproxy_dns_query_duration_seconds_count", labels) or 0.0


def query_waiting(server: Dnsmasq) -> bool:
    """A query waits, unread, at the server's socket."""
    return queued_bytes(server) > 0


def answer_waiting() -> bool:
    """An answer waits, unread, at one of this process's own UDP sockets (the resolver's)."""
    own = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            own.add(int(target[8:-1]))
    return any(waiting and inode in own for _, waiting, inode in _udp_sockets())


async def until(condition, timeout: float = 10.0) -> None:
    """Let the event loop run until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{condition.__name__} did not happen within {timeout}s"
        await asyncio.sleep(0.01)


def holding_the_loop_until(condition, timeout: float = 10.0) -> None:
    """Block the event loop (time.sleep, as a busy worker does: a plain hook that blocks,
    a large message parsed) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{condition.__name__} did not happen within {timeout}s"
        time.sleep(0.005)


@contextmanager
def paused(server: Dnsmasq):
    """The server stops answering: its process stopped, its port still open, so queries
    wait there unanswered, until the block ends."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


# Generous: the steps below must fit inside it on a loaded machine. The hook timeout
# (the whole EHLO's limit) must be longer still.
LOOKUP_TIMEOUT = 4.0
HOOK_TIMEOUT = 8.0


async def ehlo_read_late(server: Dnsmasq, session, hostname: str) -> list[str]:
    """EHLO `hostname` in `session`: the server answers its A query at once, but the
    event loop is busy until 0.3 s after lookup_timeout has passed, and only then reads
    the answer."""
    with paused(server):
        started = time.monotonic()
        greeting = asyncio.create_task(session.ehlo(hostname))
        await until(lambda: query_waiting(server))
    holding_the_loop_until(answer_waiting)  # the server runs again: its answer comes in
    holding_the_loop_until(lambda: time.monotonic() >= started + LOOKUP_TIMEOUT + 0.3)
    return (await greeting).lines


def late_proxy(server: Dnsmasq):
    return proxy(server, lookup_timeout=LOOKUP_TIMEOUT, timeout=HOOK_TIMEOUT, not_resolving="reject")


def test_an_a_answer_read_after_lookup_timeout_ends_the_check_as_no_finding():
    # The A answer ("no such name") came in time but was read late (a busy worker):
    # the time for AAAA and MX is spent, so the check ends as a DNS error, which is no
    # finding. The client is neither refused as not resolving nor, worse, tempfailed as
    # if the plugin had crashed.
    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        before = checks("error")
        assert asyncio.run(ehlo_read_late(server, late_proxy(server), "nosuch.client.test")) == ACCEPTED
        assert checks("error") == before + 1


def test_once_lookup_timeout_is_spent_no_cached_answer_gets_a_client_refused():
    # lookup_timeout bounds the whole check: what the cache holds for AAAA and MX is not
    # weighed once it has passed. Here the cache says "no AAAA, no MX" (from an earlier
    # session whose A lookup had failed) and the A answer, "no such name", is read late:
    # the check still ends as a DNS error, no finding, rather than refusing the client.
    name = "nosuch.client.test"

    async def steps(server: Dnsmasq):
        first = late_proxy(server)
        second, third = first.new_session(), first.new_session()
        # The first client's A query goes unanswered, and it hangs up. A second client
        # gives the same name half the lookup_timeout later and shares that query: when it
        # fails, the second session has that half left for AAAA and MX, which the
        # server, running again, answers.
        with paused(server):
            one = asyncio.create_task(first.ehlo(name))
            await until(lambda: query_waiting(server))
            failed = a_queries_failed()
            await asyncio.sleep(LOOKUP_TIMEOUT / 2)
            two = asyncio.create_task(second.ehlo(name))
            one.cancel()  # the first client is gone; its query goes on for the second
            with contextlib.suppress(asyncio.CancelledError):
                await one
            await until(lambda: a_queries_failed() > failed)  # the shared A query: AAAA and MX are asked next
        assert (await two).lines == ACCEPTED  # its A lookup failed: no finding, AAAA and MX now cached
        return await ehlo_read_late(server, third, name)

    with Dnsmasq([*authoritative(), *RECORDS, "--log-queries"], zones=()) as server:
        assert asyncio.run(steps(server)) == ACCEPTED
        assert [server.queries(name, rdtype) for rdtype in ("AAAA", "MX")] == [1, 1]  # asked once: then cached


def test_a_name_with_an_mx_is_valid_though_its_aaaa_lookup_fails():
    # A resolver that drops AAAA queries (some middleboxes do) must not turn a mail
    # domain's MX into a DNS error: the name resolves, and is counted `valid`. The
    # `error` count is what tells an administrator the DNS is too slow for
    # lookup_timeout; it must not count names that did resolve.
    name = "mxonly.client.test"  # an MX, no A and no AAAA

    async def steps(server: Dnsmasq):
        first = proxy(server, lookup_timeout=LOOKUP_TIMEOUT, timeout=HOOK_TIMEOUT,
                      max_negative_ttl=0)  # the cache keeps only the MX
        assert (await first.ehlo(name)).lines == ACCEPTED
        with paused(server):
            greeting = asyncio.create_task(first.new_session().ehlo(name))
            await until(lambda: query_waiting(server))
        holding_the_loop_until(answer_waiting)  # the A answer ("no A") is in...
        with paused(server):  # ...and the AAAA query will go unanswered
            return (await greeting).lines

    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        before = checks("valid"), checks("error")
        assert asyncio.run(steps(server)) == ACCEPTED
        assert (checks("valid"), checks("error")) == (before[0] + 2, before[1])
