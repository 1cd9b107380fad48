"""The dnsbl plugin's hooks and its DNS cache, against a real DNS server (dnsmasq on
loopback, authoritative for the lists' zones as real list servers are)."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from mailproxy import Action
from mailproxy.config import ConfigError, DnsSettings
from mailproxy_plugins._dns import CachedLookups, LookupFailed, async_resolver
from tests.support.clock import Clock
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.plugins import client_session, load_plugin, sender_envelope
from tests.support.servers import free_port

TTL = 300  # of every record, and the SOA minimum: the negative TTL
V6 = "2001:db8::1"
V6_KEY = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
RECORDS = [
    # bl.test lists 192.0.2.2 (with a reason), 192.0.2.3 (without), and the IPv6 V6
    "--host-record=2.2.0.192.bl.test,127.0.0.2",
    "--txt-record=2.2.0.192.bl.test,Listed: see http://bl.test/192.0.2.2",
    "--host-record=3.2.0.192.bl.test,127.0.0.3",
    f"--host-record={V6_KEY}.bl.test,127.0.0.2",
    "--txt-record=" + V6_KEY + ".bl.test,IPv6 listed",
    # answers that no filter of [2..11] accepts, and the "query refused" answer
    "--host-record=4.2.0.192.bl.test,127.0.0.20",
    "--host-record=5.2.0.192.bl.test,127.255.255.254",
    # a second block list and an allow list
    "--host-record=2.2.0.192.other.test,127.0.0.5",
    "--txt-record=2.2.0.192.other.test,Other says no",
    "--host-record=3.2.0.192.wl.test,127.0.10.2",
    # a resolver that rewrites NXDOMAIN into its own web server
    "--host-record=6.2.0.192.hijacked.test,198.51.100.80",
    # the sender domain list
    "--host-record=spam.test.dbl.test,127.0.1.2",
    "--txt-record=spam.test.dbl.test,Spam domain see http://dbl.test/spam.test",
]
LISTS = ["bl.test=127.0.0.[2..11]*3", "other.test*2", "wl.test=127.0.10.[0..255]*-2"]


@pytest.fixture(scope="module")
def dns():
    with Dnsmasq([*authoritative(ttl=TTL), *RECORDS], zones=()) as server:
        yield server


def connect(plugin, client: str, **session):
    session = client_session(client, **session)
    return asyncio.run(plugin.smtp_connect(session=session)), session


def mail_from(plugin, sender: str, client: str = "192.0.2.99", **session):
    session, envelope = client_session(client, **session), sender_envelope(sender)
    return asyncio.run(plugin.smtp_mail(session=session, envelope=envelope, address=sender)), envelope


def checks(zone: str, result: str) -> float:
    labels = {"plugin": "dnsbl", "check": zone, "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


def timings(zone: str) -> float:
    labels = {"plugin": "dnsbl", "check": zone}
    return REGISTRY.get_sample_value("mailproxy_plugin_check_duration_seconds_count", labels) or 0.0


def test_a_listed_client_is_refused_with_the_lists_reason(dns):
    plugin = load_plugin("dnsbl", dns.address, client_lists=LISTS, reject_threshold=4)
    verdict, _ = connect(plugin, "192.0.2.2")  # bl.test (3) and other.test (2)
    assert verdict.action is Action.REJECT
    assert (verdict.reply.code, verdict.reply.enhanced) == (554, "5.7.1")
    # the heaviest list speaks
    assert verdict.reply.text == (
        "Service unavailable; client [192.0.2.2] blocked using bl.test; Listed: see http://bl.test/192.0.2.2"
    )


def test_a_list_without_a_reason_is_named(dns):
    plugin = load_plugin("dnsbl", dns.address, client_lists=LISTS[:1], reject_threshold=3)
    verdict, _ = connect(plugin, "192.0.2.3")
    assert verdict.reply.text == "Service unavailable; client [192.0.2.3] blocked using bl.test"


def test_below_the_threshold_each_list_scores_under_its_zone(dns):
    plugin = load_plugin("dnsbl", dns.address, client_lists=LISTS, reject_threshold=10)
    before = (checks("bl.test", "listed"), checks("other.test", "listed"), checks("wl.test", "not_listed"))
    timed = timings("wl.test")
    verdict, session = connect(plugin, "192.0.2.2")
    assert verdict is None
    assert session.symbols == {"bl.test": 3.0, "other.test": 2.0}
    assert [(e.plugin, e.hook) for e in session.score_entries] == [("dnsbl", "smtp_connect")] * 2
    after = (checks("bl.test", "listed"), checks("other.test", "listed"), checks("wl.test", "not_listed"))
    assert after == tuple(count + 1 for count in before)
    assert timings("wl.test") == timed + 1  # the query to the list
    timed_listed = timings("bl.test")
    connect(plugin, "192.0.2.2")  # every answer from the cache: nothing timed
    assert (timings("wl.test"), timings("bl.test")) == (timed + 1, timed_listed)


def test_an_allow_list_weighs_against_the_block_lists(dns):
    # 192.0.2.3 is on bl.test (3) and on the allow list wl.test (-2)
    block_only = load_plugin("dnsbl", dns.address, client_lists=LISTS[:1], reject_threshold=3)
    assert connect(block_only, "192.0.2.3")[0].action is Action.REJECT
    both = load_plugin("dnsbl", dns.address, client_lists=LISTS, reject_threshold=3)
    verdict, session = connect(both, "192.0.2.3")
    assert verdict is None
    assert session.symbols == {"bl.test": 3.0, "wl.test": -2.0}


@pytest.mark.parametrize("client", [
    "192.0.2.4",  # answers 127.0.0.20: outside the filter
    "192.0.2.9",  # on no list
])
def test_answers_outside_the_filter_do_not_list(dns, client):
    plugin = load_plugin("dnsbl", dns.address, client_lists=["bl.test=127.0.0.[2..11]*3"], reject_threshold=1)
    verdict, session = connect(plugin, client)
    assert verdict is None and session.symbols == {}


def test_without_a_filter_the_query_refused_answer_does_not_list(dns):
    plugin = load_plugin("dnsbl", dns.address, client_lists=["bl.test"], reject_threshold=1)
    assert connect(plugin, "192.0.2.4")[0].action is Action.REJECT  # 127.0.0.20: any 127/8 lists
    assert connect(plugin, "192.0.2.5")[0] is None  # 127.255.255.254: the list refused to say


def test_an_answer_outside_loopback_is_ignored_and_counted_as_an_error(dns):
    plugin = load_plugin("dnsbl", dns.address, client_lists=["hijacked.test"], reject_threshold=1)
    before = checks("hijacked.test", "error")
    assert connect(plugin, "192.0.2.6")[0] is None
    assert checks("hijacked.test", "error") == before + 1


def test_an_ipv6_client_is_looked_up_by_its_reversed_nibbles(dns):
    plugin = load_plugin("dnsbl", dns.address, client_lists=LISTS, reject_threshold=3)
    verdict, _ = connect(plugin, V6)
    assert verdict.reply.text == f"Service unavailable; client [{V6}] blocked using bl.test; IPv6 listed"


def test_the_sender_domain_is_looked_up_on_domain_lists(dns):
    plugin = load_plugin("dnsbl", dns.address, domain_lists=["dbl.test=127.0.1.[2..99]*5"], reject_threshold=5)
    verdict, _ = mail_from(plugin, "someone@Spam.Test")
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.7.1")
    assert verdict.reply.text == (
        "Sender address rejected: spam.test blocked using dbl.test; Spam domain see http://dbl.test/spam.test"
    )
    assert mail_from(plugin, "someone@ham.test")[0] is None
    assert mail_from(plugin, "")[0] is None  # the null sender has no domain


def test_a_listed_sender_domain_scores_on_the_transaction(dns):
    plugin = load_plugin("dnsbl", dns.address, domain_lists=["dbl.test=127.0.1.[2..99]*5"])
    verdict, envelope = mail_from(plugin, "someone@spam.test")
    assert verdict is None and envelope.symbols == {"dbl.test": 5.0}


@pytest.mark.parametrize("session", [
    {"mode": "submission"},  # a listener mode not checked by default
    {"client": "10.0.0.2"},  # a private client
])
def test_sessions_it_does_not_judge_are_not_looked_up(dns, session):
    client = session.pop("client", "192.0.2.2")
    plugin = load_plugin("dnsbl", dns.address, client_lists=LISTS, domain_lists=["dbl.test"],
                         reject_threshold=1)
    assert connect(plugin, client, **session)[0] is None
    assert mail_from(plugin, "someone@spam.test", client, **session)[0] is None


def test_an_authenticated_sender_is_not_looked_up(dns):
    plugin = load_plugin("dnsbl", dns.address, domain_lists=["dbl.test"], reject_threshold=1)
    session, envelope = client_session("192.0.2.99"), sender_envelope("a@spam.test")
    session.authenticated = True
    assert asyncio.run(plugin.smtp_mail(session=session, envelope=envelope, address="a@spam.test")) is None


def test_observe_mode_records_no_scores(dns):
    plugin = load_plugin("dnsbl", dns.address, client_lists=LISTS, observe=True)
    verdict, session = connect(plugin, "192.0.2.2")
    assert verdict is None and session.symbols == {}


def test_lists_are_asked_at_once_and_one_that_does_not_answer_lists_nobody():
    silent = f"127.0.0.1:{free_port()}"  # nothing listens there
    lists = [f"zone{n}.test" for n in range(4)]
    plugin = load_plugin("dnsbl", silent, client_lists=lists, reject_threshold=1, lookup_timeout=1.0)
    before = [checks(zone, "error") for zone in lists]
    started = time.monotonic()
    verdict, session = connect(plugin, "192.0.2.2")
    elapsed = time.monotonic() - started
    assert verdict is None and session.symbols == {}
    assert [checks(zone, "error") for zone in lists] == [count + 1 for count in before]
    assert 1.0 <= elapsed < 3.0  # one timeout, not four after each other


@pytest.mark.parametrize("options, message", [
    ({"client_lists": ["bl.test", "zen"]},
     "plugin.dnsbl.client_lists[1]: 'zen' is not zone[=filter][*weight] (like zen.example=127.0.0.[2..11]*3)"),
    ({"domain_lists": ["dbl.test=127.0.1.[9..2]"]},
     "plugin.dnsbl.domain_lists[0]: 'dbl.test=127.0.1.[9..2]': "
     "'[9..2]' is not a number 0-255 or a list like [2;4..7]"),
    ({"client_lists": ["bl.test=127.0.0"]},
     "plugin.dnsbl.client_lists[0]: 'bl.test=127.0.0': the filter is not four octets "
     "(like zen.example=127.0.0.[2..11]*3)"),
    ({"reject_threshold": 0}, "plugin.dnsbl.reject_threshold: Input should be greater than 0"),
    ({"lookup_timeout": 5.0},
     "plugin.dnsbl.lookup_timeout: must be less than timeout (5), the limit of the whole hook"),
])
def test_config_errors_name_the_key(dns, options, message):
    with pytest.raises(ConfigError) as error:
        load_plugin("dnsbl", dns.address, **options)
    assert str(error.value) == f"config: {message}"


# --- the cache ------------------------------------------------------------------------------


def lookups(dns: Dnsmasq, clock: Clock, max_ttl: float = 3600, max_negative_ttl: float = 3600) -> CachedLookups:
    resolver = async_resolver(DnsSettings(servers=[dns.address], timeout=1.0))
    return CachedLookups(resolver, max_ttl, max_negative_ttl, entries=100, clock=clock)


def ask(cache: CachedLookups, name: str, rdtype: str = "A"):
    records = asyncio.run(cache.lookup(name, rdtype, timeout=0.5))
    return [r.to_text() for r in records]


@pytest.mark.parametrize("bounds, lasts", [
    ({}, TTL),  # the answer's own TTL
    ({"max_ttl": 60}, 60),  # capped
])
def test_an_answer_is_kept_for_its_ttl(bounds, lasts):
    clock = Clock()
    with Dnsmasq([*authoritative(ttl=TTL), *RECORDS], zones=()) as server:
        cache = lookups(server, clock, **bounds)
        assert ask(cache, "2.2.0.192.bl.test") == ["127.0.0.2"]
        server.stop()  # from now on only the cache can answer
        clock.now += lasts - 1
        assert ask(cache, "2.2.0.192.BL.test.") == ["127.0.0.2"]
        clock.now += 2
        with pytest.raises(LookupFailed):
            ask(cache, "2.2.0.192.bl.test")


@pytest.mark.parametrize("name, rdtype", [
    ("9.2.0.192.bl.test", "A"),  # NXDOMAIN
    ("2.2.0.192.bl.test", "AAAA"),  # the name exists, without records of that type
])
@pytest.mark.parametrize("bounds, lasts", [
    ({}, TTL),  # the SOA's minimum
    ({"max_negative_ttl": 60}, 60),  # capped
])
def test_no_such_name_is_kept_for_the_negative_ttl(name, rdtype, bounds, lasts):
    clock = Clock()
    with Dnsmasq([*authoritative(ttl=TTL), *RECORDS], zones=()) as server:
        cache = lookups(server, clock, **bounds)
        assert ask(cache, name, rdtype) == []
        server.stop()
        clock.now += lasts - 1
        assert ask(cache, name, rdtype) == []
        clock.now += 2
        with pytest.raises(LookupFailed):
            ask(cache, name, rdtype)


def test_an_nxdomain_without_soa_and_a_failure_are_not_kept():
    clock = Clock()
    # --local answers NXDOMAIN without an SOA, and REFUSED for names outside its zones
    with Dnsmasq(["--local-ttl=300"], zones=("test",)) as server:
        cache = lookups(server, clock)
        assert ask(cache, "nothing.test") == []
        with pytest.raises(LookupFailed):
            ask(cache, "elsewhere.invalid")
        server.stop()
        for name in ("nothing.test", "elsewhere.invalid"):
            with pytest.raises(LookupFailed):
                ask(cache, name)


def test_one_zone_under_several_filters_is_asked_once():
    # postscreen's way of weighing a list's answers differently
    lists = ["bl.test=127.0.0.2*3", "bl.test=127.0.0.[3..11]*1"]
    with Dnsmasq([*authoritative(ttl=TTL), *RECORDS, "--log-queries"], zones=()) as server:
        plugin = load_plugin("dnsbl", server.address, client_lists=lists)
        verdict, session = connect(plugin, "192.0.2.2")
        assert session.symbols == {"bl.test": 3.0}
        asked = server.log()
    assert asked.count("auth[A] 2.2.0.192.bl.test from") == 1, asked
