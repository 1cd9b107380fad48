"""The plugins' DNS helper (plugins/_dns.py) at its edges: an answer with TTL 0, an
alias (CNAME) for a name without the record asked for, a query that outlives every
caller or the event loop, and which servers a resolver asks when `[dns] servers` is
empty. Against real DNS servers (dnsmasq on loopback), with the cache on the test's
clock, as in test_plugin_dnsbl.py."""

from __future__ import annotations

import asyncio
import gc
import logging

import dns.resolver
import pytest

from mailproxy.config import DnsSettings
from mailproxy.testing import policy_session
from mailproxy_plugins._dns import LookupFailed, async_resolver, blocking_resolver
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.clock import Clock
from tests.unit.test_plugin_dnsbl import ask, lookups
from tests.unit.test_plugin_helo import checks as helo_checks
from tests.unit.test_plugin_helo_edges import paused, query_waiting, until

RECORDS = [
    "--host-record=mail.client.test,192.0.2.1",
    # aliases for a name outside the zone, and for one inside it that does not exist
    "--cname=alias.client.test,mail.elsewhere.invalid",
    "--cname=dangling.client.test,gone.client.test",
]


# -- what is kept, and for how long ------------------------------------------------------------

def test_an_answer_with_ttl_0_is_not_kept():
    # A zone that publishes TTL 0 (a load-balanced name, a list that wants every query
    # asked) means "ask me every time": the answer is used once, never served later from
    # the cache, not even a second later.
    clock = Clock()  # does not move: only a kept answer could answer again
    with Dnsmasq([*authoritative(ttl=0), *RECORDS], zones=()) as server:
        cache = lookups(server, clock)
        assert ask(cache, "mail.client.test") == ["192.0.2.1"]
        server.stop()  # from now on only the cache could answer
        with pytest.raises(LookupFailed):
            ask(cache, "mail.client.test")


@pytest.mark.parametrize("name", ["alias.client.test", "dangling.client.test"])
def test_an_alias_for_a_name_without_the_record_is_no_record_and_not_kept(name):
    # The answer is the CNAME alone, with the zone's NS (not its SOA) beside it: "no
    # record", as for any name without one, and not kept, since without an SOA nothing
    # says for how long (RFC 2308). Not a failure, and no crash on the NS record.
    clock = Clock()
    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        cache = lookups(server, clock)
        assert ask(cache, name) == []
        assert ask(cache, name, "MX") == []
        server.stop()
        with pytest.raises(LookupFailed):
            ask(cache, name)


def test_a_helo_name_that_is_a_dangling_alias_is_not_resolving():
    # The same through the helo plugin, as the proxy runs it: a client that names itself
    # by an alias of nothing scores as not resolving (1 point by default); the hook
    # neither fails (a tempfail for the client) nor counts a DNS error.
    async def steps(server: Dnsmasq):
        scripted = policy_session("helo", {"skip_clients": [], "not_resolving": "reject"},
                                  config={"dns": {"servers": [server.address], "timeout": 2.0}})
        return (await scripted.ehlo("dangling.client.test")).lines

    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        before = helo_checks("not_resolving")
        assert asyncio.run(steps(server)) == ["550 5.7.1 Helo command rejected: Host not found"]
        assert helo_checks("not_resolving") == before + 1


# -- queries that outlive their callers ----------------------------------------------------------

def _asyncio_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


def test_a_lookup_every_caller_gave_up_on_fails_without_an_error_in_the_log(caplog):
    # A query goes on when the hook that asked gave up (it timed out, the client left),
    # for the sessions that may ask next. When it then fails with nobody waiting, the
    # proxy's log must not get "Task exception was never retrieved", an ERROR with a
    # traceback that sends an administrator looking for a bug that is not there.
    async def steps(server: Dnsmasq):
        cache = lookups(server, Clock())
        caller = asyncio.create_task(cache.lookup("mail.client.test", "A", timeout=0.5))
        await until(lambda: query_waiting(server))
        caller.cancel()  # the hook's timeout
        with pytest.raises(asyncio.CancelledError):
            await caller
        # the query, alone now, times out
        await until(lambda: not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server, paused(server):
            asyncio.run(steps(server))
        gc.collect()  # a task's unretrieved exception is reported when the task goes
    assert _asyncio_errors(caplog) == []


def test_a_lookup_cut_short_by_the_event_loops_end_leaves_no_error_in_the_log(caplog):
    # A worker that stops while a query is under way (a reload, a shutdown) cancels it:
    # that is no error, and must not log "Exception in callback".
    async def steps(server: Dnsmasq):
        cache = lookups(server, Clock())
        caller = asyncio.create_task(cache.lookup("mail.client.test", "A", timeout=5.0))
        await until(lambda: query_waiting(server))
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        # returning ends the loop, which cancels the query still waiting for an answer

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server, paused(server):
            asyncio.run(steps(server))
        gc.collect()
    assert _asyncio_errors(caplog) == []


# -- which servers are asked ---------------------------------------------------------------------

@pytest.mark.parametrize("resolver", [async_resolver, blocking_resolver])  # dnsbl and helo; spf
def test_without_servers_the_systems_resolvers_are_asked(resolver):
    # docs/plugins.md: the DNS checks ask `[dns] servers`, "or resolv.conf when empty":
    # the proxy then resolves as every other program on the host does, rather than
    # failing every lookup for want of a server to ask.
    try:
        system = dns.resolver.Resolver()  # /etc/resolv.conf, as dnspython reads it
    except dns.resolver.NoResolverConfiguration:
        pytest.skip("this host's /etc/resolv.conf names no server")
    asks = resolver(DnsSettings(servers=[], timeout=1.5))
    assert asks.nameservers == system.nameservers != []
    assert asks.lifetime == 1.5
