"""The helo plugin's hook, called with real Session objects, its names resolved by a
real DNS server (dnsmasq on loopback)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from mailproxy import Action
from mailproxy.config import ConfigError
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.plugins import HOSTNAME, client_session, load_plugin
from tests.support.servers import free_port

NOT_AN_ACTION = 'is not an action: use "reject", "tempfail", "off" or a number of points'
CLIENT = "192.0.2.1"
OWN = "127.0.0.1"  # the address the proxy's listener has (tests.support.plugins.LISTEN)
RECORDS = [
    "--host-record=mail.client.test,192.0.2.1",
    "--host-record=v6only.client.test,2001:db8::25",
    "--mx-host=mxonly.client.test,mail.client.test,10",
    "--txt-record=txtonly.client.test,this name exists without an address",
    f"--host-record={HOSTNAME},{OWN}",
]


@pytest.fixture(scope="module")
def dns():
    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        yield server


@pytest.fixture(scope="module")
def helo(dns):
    return load_plugin("helo", dns.address, skip_clients=[])


def greet(plugin, hostname: str, client: str = CLIENT, **session):
    return asyncio.run(plugin.smtp_helo(session=client_session(client, **session), hostname=hostname))


def outcome(verdict) -> tuple:
    """(action, code) of a refusal, (action, symbol, points) of a score, None for none."""
    if verdict is None:
        return None
    if verdict.action is Action.SCORE:
        return ("score", verdict.symbol, verdict.points)
    return (verdict.action.value, verdict.reply.code, verdict.reply.enhanced)


def checks(result: str) -> float:
    labels = {"plugin": "helo", "check": "helo", "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


def timings() -> float:
    labels = {"plugin": "helo", "check": "helo"}
    return REGISTRY.get_sample_value("mailproxy_plugin_check_duration_seconds_count", labels) or 0.0


@pytest.mark.parametrize("hostname, expected", [
    # valid and resolving: A, AAAA or MX will do
    ("mail.client.test", None),
    ("MAIL.Client.Test.", None),
    ("v6only.client.test", None),
    ("mxonly.client.test", None),
    # address literals are valid syntax
    ("[192.0.2.1]", None),
    ("[IPv6:2001:db8::25]", None),
    ("[192.0.2.77]", None),  # not the client's own: not this plugin's business
    # invalid (reject by default)
    ("mail..client.test", ("reject", 501, "5.5.2")),
    ("-mail.client.test", ("reject", 501, "5.5.2")),
    ("mail.client.123", ("reject", 501, "5.5.2")),
    ("[192.0.2.300]", ("reject", 501, "5.5.2")),
    ("[2001:db8::25]", ("reject", 501, "5.5.2")),  # an IPv6 literal needs its tag
    ("[IPv6:192.0.2.1]", ("reject", 501, "5.5.2")),
    ("a" * 64 + ".client.test", ("reject", 501, "5.5.2")),
    ("mail/client.test", ("reject", 501, "5.5.2")),
    # an address without its brackets (scored by default)
    ("192.0.2.1", ("score", "HELO_BARE_IP", 2.0)),
    ("2001:db8::25", ("score", "HELO_BARE_IP", 2.0)),
    # the proxy's own address or name (reject by default)
    (f"[{OWN}]", ("reject", 550, "5.7.1")),
    (OWN, ("reject", 550, "5.7.1")),
    (HOSTNAME, ("reject", 550, "5.7.1")),
    (HOSTNAME.upper() + ".", ("reject", 550, "5.7.1")),
    # one label (scored by default)
    ("localhost", ("score", "HELO_NOT_FQDN", 1.0)),
    ("DESKTOP-4F2", ("score", "HELO_NOT_FQDN", 1.0)),
    # no A, AAAA or MX (scored by default)
    ("nosuch.client.test", ("score", "HELO_NOT_RESOLVING", 1.0)),
    ("txtonly.client.test", ("score", "HELO_NOT_RESOLVING", 1.0)),
    ("bücher.client.test", ("score", "HELO_NOT_RESOLVING", 1.0)),  # looked up as xn--bcher-kva
])
def test_helo_names(helo, hostname, expected):
    assert outcome(greet(helo, hostname)) == expected


def test_the_replies_say_why(helo):
    assert greet(helo, "mail..client.test").reply.text == "Helo command rejected: Invalid name"
    assert greet(helo, HOSTNAME).reply.text == "Helo command rejected: That name is mine"
    assert greet(helo, f"[{OWN}]").reply.text == "Helo command rejected: That address is mine"


def test_a_client_on_the_proxys_own_address_may_say_so(helo):
    assert greet(helo, f"[{OWN}]", client=OWN) is None
    assert greet(helo, HOSTNAME, client=OWN) is None


def test_each_check_can_reject_score_tempfail_or_be_off(dns):
    plugin = load_plugin("helo", dns.address, skip_clients=[], bare_ip="reject", not_fqdn="tempfail",
                         not_resolving="reject", own_name=-1.5, invalid_name=0.5)
    assert outcome(greet(plugin, "192.0.2.1")) == ("reject", 501, "5.5.2")
    assert outcome(greet(plugin, "localhost")) == ("tempfail", 450, "4.5.2")
    assert outcome(greet(plugin, "nosuch.client.test")) == ("reject", 550, "5.7.1")
    assert outcome(greet(plugin, HOSTNAME)) == ("score", "HELO_OWN_NAME", -1.5)
    assert outcome(greet(plugin, "a..b")) == ("score", "HELO_INVALID_NAME", 0.5)


def test_a_check_that_is_off_leaves_the_decision_to_the_next(dns):
    plugin = load_plugin("helo", dns.address, skip_clients=[], own_address="off", own_name="off",
                         not_fqdn="off", not_resolving="off")
    assert outcome(greet(plugin, OWN)) == ("score", "HELO_BARE_IP", 2.0)  # bare_ip is next
    assert greet(plugin, f"[{OWN}]") is None
    assert greet(plugin, HOSTNAME) is None
    assert greet(plugin, "localhost") is None
    assert greet(plugin, "nosuch.client.test") is None


def test_own_names_and_addresses_can_be_added(dns):
    plugin = load_plugin("helo", dns.address, skip_clients=[], own_names=["mx.example.org"],
                         own_addresses=["198.51.100.25"])
    assert outcome(greet(plugin, "MX.example.org")) == ("reject", 550, "5.7.1")
    assert outcome(greet(plugin, "[198.51.100.25]")) == ("reject", 550, "5.7.1")


def test_the_results_are_counted_and_each_query_to_the_dns_timed(dns):
    plugin = load_plugin("helo", dns.address, skip_clients=[])  # with a cache of its own
    before, timed = (checks("valid"), checks("not_fqdn"), checks("invalid_name")), timings()
    greet(plugin, "mail.client.test")  # its A record: one query
    greet(plugin, "mail.client.test")  # the same answer, from the cache: not timed
    greet(plugin, "localhost")  # no query: not a fully qualified name
    greet(plugin, "a..b")
    assert (checks("valid"), checks("not_fqdn"), checks("invalid_name")) == (
        before[0] + 2, before[1] + 1, before[2] + 1)
    assert timings() == timed + 1
    greet(plugin, "mxonly.client.test")  # no A record, then AAAA and MX: three queries
    assert timings() == timed + 4


@pytest.mark.parametrize("session", [
    {"mode": "submission"},  # a listener mode not checked by default
    {"client": "10.0.0.7"},  # a private client, skipped by default
])
def test_sessions_it_does_not_judge_get_nothing(dns, session):
    plugin = load_plugin("helo", dns.address)
    client = session.pop("client", CLIENT)
    assert greet(plugin, "a..b", client, **session) is None


def test_a_name_with_an_a_record_is_settled_by_that_lookup_alone():
    with Dnsmasq([*authoritative(), *RECORDS, "--log-queries"], zones=()) as server:
        plugin = load_plugin("helo", server.address, skip_clients=[])
        assert greet(plugin, "mail.client.test") is None
        assert greet(plugin, "v6only.client.test") is None  # no A: AAAA and MX asked
        asked = {(name, rdtype): server.queries(name, rdtype)
                 for name in ("mail.client.test", "v6only.client.test") for rdtype in ("A", "AAAA", "MX")}
    assert asked == {
        ("mail.client.test", "A"): 1, ("mail.client.test", "AAAA"): 0, ("mail.client.test", "MX"): 0,
        ("v6only.client.test", "A"): 1, ("v6only.client.test", "AAAA"): 1, ("v6only.client.test", "MX"): 1,
    }


def test_a_dns_that_cannot_say_is_no_finding():
    silent = f"127.0.0.1:{free_port()}"  # nothing listens there
    plugin = load_plugin("helo", silent, skip_clients=[], not_resolving="reject", lookup_timeout=0.5)
    before = checks("error")
    assert greet(plugin, "mail.client.test") is None
    assert checks("error") == before + 1


@pytest.mark.parametrize("options, message", [
    ({"bare_ip": "refuse"}, f"plugin.helo.bare_ip: 'refuse' {NOT_AN_ACTION}"),
    ({"own_name": True}, f"plugin.helo.own_name: True {NOT_AN_ACTION}"),
    ({"own_addresses": ["mx.example.org"]}, "plugin.helo.own_addresses: 'mx.example.org' is not an IP address"),
])
def test_config_errors_name_the_key(dns, options, message):
    with pytest.raises(ConfigError) as error:
        load_plugin("helo", dns.address, **options)
    assert str(error.value) == f"config: {message}"
