"""The dnsbl plugin at its edges: the list spec's documented defaults and bounds, the
TXT reason when the lookup's time is short, spent, or the list stops answering, what
the log says about a listing, and each hook as the proxy reaches it, through the policy
engine. Against real DNS servers: dnsmasq on loopback, as in test_plugin_dnsbl.py, with
a few more records here."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import contextmanager

import pytest

from mailproxy.config import ConfigError
from mailproxy.testing import policy_session
from mailproxy_plugins._dnsbl_lists import DnsList, outside_loopback
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.plugins import client_session, load_plugin
from tests.unit.test_plugin_dnsbl import RECORDS, TTL, checks, connect, mail_from, timings

BL = "bl.test=127.0.0.[2..11]*3"  # the documented Spamhaus-style filter, on the test zone
REASON = "Listed: see http://bl.test/192.0.2.2"  # bl.test's TXT record for 192.0.2.2
MORE_RECORDS = [
    # the ends of the filter [2..11]: its last number, and the first past it
    "--host-record=11.2.0.192.bl.test,127.0.0.11",
    "--host-record=12.2.0.192.bl.test,127.0.0.12",
]
LOG = "mailproxy.plugin.dnsbl"


@pytest.fixture(scope="module")
def dns():
    with Dnsmasq([*authoritative(ttl=TTL), *RECORDS, *MORE_RECORDS], zones=()) as server:
        yield server


def proxy(dns_server: str, **options):
    """A client connection to a proxy running the installed dnsbl plugin through the real
    policy engine, asking `dns_server`."""
    return policy_session("dnsbl", options, config={"dns": {"servers": [dns_server], "timeout": 2.0}})


@contextmanager
def paused(server: Dnsmasq):
    """The server stops answering (its process stopped, its port still open: queries
    go unanswered, as to an overloaded list server), until the block ends."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def all_checks(zone: str) -> float:
    return sum(checks(zone, result) for result in ("listed", "not_listed", "error"))


# -- the list spec: documented defaults and bounds ---------------------------------------------

def test_a_list_without_a_weight_weighs_1(dns):
    # docs/plugins.md: "the weight defaults to 1". An administrator who writes a list
    # without one and sets reject_threshold = 2 expects two such lists to refuse, not one.
    plugin = load_plugin("dnsbl", dns.address, client_lists=["bl.test"])
    verdict, session = connect(plugin, "192.0.2.2")
    assert verdict is None and session.symbols == {"bl.test": 1.0}


@pytest.mark.parametrize("client, symbols", [
    ("192.0.2.2", {"bl.test": 3.0}),  # 127.0.0.2, the range's first number
    ("192.0.2.11", {"bl.test": 3.0}),  # 127.0.0.11, its last
    ("192.0.2.12", {}),  # 127.0.0.12, the first past it
])
def test_a_ranges_last_number_lists_and_the_next_does_not(dns, client, symbols):
    # zen.spamhaus.org=127.0.0.[2..11] is how Spamhaus says which answers are listings:
    # 127.0.0.11 is one (PBL), and an answer past the range (a code the list adds later,
    # meaning something else) must not refuse the client.
    plugin = load_plugin("dnsbl", dns.address, client_lists=[BL])
    verdict, session = connect(plugin, client)
    assert verdict is None and session.symbols == symbols


def test_a_single_number_lists_that_answer_only(dns):
    # "bl.test=127.0.0.2": the list's other answers (127.0.0.3, for 192.0.2.3) mean
    # something the administrator did not ask to act on.
    plugin = load_plugin("dnsbl", dns.address, client_lists=["bl.test=127.0.0.2*3"])
    assert connect(plugin, "192.0.2.2")[1].symbols == {"bl.test": 3.0}
    assert connect(plugin, "192.0.2.3")[1].symbols == {}


def test_the_widest_octet_range_is_accepted():
    # The documented allow list spec, list.dnswl.org=127.0.[0..255].[1..3]: 255 is an octet.
    load_plugin("dnsbl", "127.0.0.1:53", client_lists=["wl.test=127.0.[0..255].[0;255]*-2"])


@pytest.mark.parametrize("spec, octet", [
    ("wl.test=127.0.[0..256].[1..3]*-2", "[0..256]"),
    ("bl.test=127.0.0.256", "256"),
])
def test_an_octet_past_255_is_refused_naming_the_key(spec, octet):
    # A typo in a filter must stop `mailproxy check` with the list named, not load a
    # filter that matches what the administrator did not mean.
    with pytest.raises(ConfigError) as error:
        load_plugin("dnsbl", "127.0.0.1:53", client_lists=[spec])
    assert str(error.value) == (
        f"config: plugin.dnsbl.client_lists[0]: {spec!r}: {octet!r} is not a number 0-255 or a list like [2;4..7]"
    )


@pytest.mark.parametrize("answer", ["", "not an address", "2001:db8::2", "127.0.0.256", "::ffff:127.0.0.2"])
def test_an_answer_that_is_not_an_ipv4_address_never_lists(answer):
    # Only A records reach these today; still, an answer that is not an IPv4 address says
    # nothing about the client: it must neither refuse it nor pass for a list's answer.
    assert DnsList.parse("bl.test").lists(answer) is False
    assert DnsList.parse(BL).lists(answer) is False
    assert outside_loopback(answer) is True


# -- which lists are asked ---------------------------------------------------------------------

def test_with_two_lists_a_client_only_the_second_lists_is_scored(dns):
    # Every list configured is asked, whatever their number: a client on the second of
    # two lists must not slip through because only the first was asked.
    plugin = load_plugin("dnsbl", dns.address, client_lists=["other.test*2", BL])
    verdict, session = connect(plugin, "192.0.2.3")  # on bl.test only
    assert verdict is None and session.symbols == {"bl.test": 3.0}


@pytest.mark.parametrize("sender", ["", "postmaster", "someone@[192.0.2.1]"])
def test_a_sender_without_a_domain_costs_no_domain_list_query(dns, sender):
    # The null sender (bounces), a bare local part, an address literal: there is no
    # domain to ask about. Asking anyway sends "None.dbl.spamhaus.org" to the list,
    # spending its query quota on nonsense for every bounce.
    plugin = load_plugin("dnsbl", dns.address, domain_lists=["dbl.test"], reject_threshold=1)
    before = (all_checks("dbl.test"), timings("dbl.test"))
    verdict, envelope = mail_from(plugin, sender)
    assert verdict is None and envelope.symbols == {}
    assert (all_checks("dbl.test"), timings("dbl.test")) == before


# -- the reason (the list's TXT record) --------------------------------------------------------

@pytest.mark.parametrize("lookup_timeout", [1.0, 0.5])
def test_a_short_lookup_timeout_still_fetches_the_reason(dns, lookup_timeout):
    # A local resolver answers in milliseconds: a lookup_timeout of a second or less
    # leaves plenty of time for the TXT record, and the client is told why it is refused.
    plugin = load_plugin("dnsbl", dns.address, client_lists=[BL], reject_threshold=3,
                         lookup_timeout=lookup_timeout)
    verdict, _ = connect(plugin, "192.0.2.2")
    assert verdict.reply.text == f"Service unavailable; client [192.0.2.2] blocked using bl.test; {REASON}"


def test_a_listing_stands_when_the_list_stops_answering_before_its_reason():
    # The A record said "listed" (and is cached); the TXT lookup then goes unanswered.
    # The client is refused all the same, naming the list, and no later than
    # lookup_timeout: the session is not held up to the hook's timeout, nor turned into
    # a "temporary local problem" for a reason the refusal can do without.
    with Dnsmasq([*authoritative(ttl=TTL), *RECORDS], zones=()) as server:
        first = proxy(server.address, client_lists=[BL], reject_threshold=3, lookup_timeout=0.5,
                      timeout=3.0, max_negative_ttl=0)  # 192.0.2.3's "no TXT" is not cached
        refused = ["554 5.7.1 Service unavailable; client [192.0.2.3] blocked using bl.test"]
        assert asyncio.run(first.connect("192.0.2.3")).lines == refused
        with paused(server):
            started = time.monotonic()
            again = asyncio.run(first.new_session().connect("192.0.2.3"))
            elapsed = time.monotonic() - started
    assert again.lines == refused
    assert elapsed < 1.5  # lookup_timeout, with room for a busy machine


def test_once_the_lookup_time_is_spent_the_reason_is_not_asked_for():
    # For a listed client the TXT record is fetched "within what is left of" lookup_timeout
    # (docs/plugins.md). When nothing is left (here the event loop was held up, as by a
    # busy proxy, while the A answer waited), the listing counts and the reason is not
    # asked for at all, not even of the cache: the refusal names the list only.
    records = [
        "--local-ttl=300",
        "--host-record=7.2.0.192.bl.test,127.0.0.2,0",  # TTL 0: the A is asked every time
        "--txt-record=7.2.0.192.bl.test,Listed again",  # TTL 300: the reason is cached
    ]
    with Dnsmasq(records, zones=("test",)) as server:
        plugin = load_plugin("dnsbl", server.address, client_lists=["bl.test"], reject_threshold=1,
                             lookup_timeout=0.5)
        blocked = "Service unavailable; client [192.0.2.7] blocked using bl.test"
        assert connect(plugin, "192.0.2.7")[0].reply.text == f"{blocked}; Listed again"

        async def held_up():
            with paused(server):
                hook = asyncio.create_task(plugin.smtp_connect(session=client_session("192.0.2.7")))
                await asyncio.sleep(0.1)  # the A query is sent, and waits for the server
            # The loop is busy past the lookup's deadline while the answer comes in; once
            # free, it reads the waiting answer before it runs the lookup's timer.
            time.sleep(0.7)
            return await hook

        assert asyncio.run(held_up()).reply.text == blocked


# -- what the log says ---------------------------------------------------------------------

def test_the_log_gives_a_listings_reason_after_a_colon(dns, caplog):
    # An administrator reading why a client scored wants the list's own words, set off
    # from the weight; a list without a TXT record leaves no dangling ": ".
    caplog.set_level(logging.INFO, logger=LOG)
    plugin = load_plugin("dnsbl", dns.address, client_lists=[BL])
    connect(plugin, "192.0.2.2")
    connect(plugin, "192.0.2.3")
    assert [r.getMessage() for r in caplog.records if r.name == LOG] == [
        f"smtp_connect: listed by bl.test (+3): {REASON}",
        "smtp_connect: listed by bl.test (+3)",
    ]


def test_an_answer_outside_loopback_is_logged_as_a_warning(dns, caplog):
    # A resolver that rewrites "no such name" into its own address makes the list useless
    # without a sound: the warning is how the administrator learns of it. An answer in
    # 127.0.0.0/8 outside the filter is the list's own business: no warning, not an error.
    caplog.set_level(logging.INFO, logger=LOG)
    hijacked = load_plugin("dnsbl", dns.address, client_lists=["hijacked.test"], reject_threshold=1)
    assert connect(hijacked, "192.0.2.6")[0] is None
    filtered = load_plugin("dnsbl", dns.address, client_lists=[BL], reject_threshold=1)
    before = (checks("bl.test", "not_listed"), checks("bl.test", "error"))
    assert connect(filtered, "192.0.2.4")[0] is None  # 127.0.0.20
    assert (checks("bl.test", "not_listed"), checks("bl.test", "error")) == (before[0] + 1, before[1])
    warnings = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOG and r.levelno >= logging.WARNING]
    assert warnings == [(
        logging.WARNING,
        "hijacked.test answered 198.51.100.80 for 6.2.0.192.hijacked.test, outside 127.0.0.0/8: ignored",
    )]


# -- the proxy calls it ------------------------------------------------------------------------

def test_the_proxy_refuses_a_listed_client_instead_of_greeting_it(dns):
    # The tests above call the methods directly; the proxy knows them only as hooks.
    session = proxy(dns.address, client_lists=[BL], reject_threshold=3)
    assert asyncio.run(session.connect("192.0.2.2")).lines == [
        f"554 5.7.1 Service unavailable; client [192.0.2.2] blocked using bl.test; {REASON}"
    ]


def test_the_proxy_refuses_a_listed_sender_domain_at_mail(dns):
    async def steps():
        session = proxy(dns.address, domain_lists=["dbl.test=127.0.1.[2..99]*5"], reject_threshold=5)
        assert (await session.connect("192.0.2.99")).lines == ["220 proxy.test ESMTP"]
        return (await session.mail("someone@spam.test")).lines

    assert asyncio.run(steps()) == [
        "550 5.7.1 Sender address rejected: spam.test blocked using dbl.test; "
        "Spam domain see http://dbl.test/spam.test"
    ]
