"""The spf, dnsbl and helo plugins in the real proxy, in front of a recording upstream,
their DNS answered by a real DNS server (dnsmasq on loopback) and nothing else."""

import smtplib

import pytest

from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

LISTED = "127.0.0.2"  # clients connect from these loopback addresses
CLEAN = "127.0.0.3"
RECORDS = [
    # SPF: the proxy's clients all come from 127.0.0.0/8
    "--txt-record=pass.test,v=spf1 ip4:127.0.0.0/8 -all",
    "--txt-record=fail.test,v=spf1 -all",
    # a block list that lists 127.0.0.2, and says why
    "--host-record=2.0.0.127.bl.test,127.0.0.2",
    "--txt-record=2.0.0.127.bl.test,Listed: see http://bl.test/127.0.0.2",
    # a HELO name that resolves
    "--host-record=client.test,127.0.0.3",
]
MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"
DELIVERED = MESSAGE.removesuffix(b"\r\n")  # the recorder keeps the end marker's CRLF apart


@pytest.fixture(scope="module")
def dns():
    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        yield server


@pytest.fixture
def upstream():
    with RecordingUpstream() as server:
        yield server


def proxy_with(make_proxy, upstream, dns, plugin: str, **options):
    """The proxy with `plugin` enabled (after access), its DNS on the test server; the
    clients come from loopback, which the plugins skip unless told otherwise."""
    return make_proxy(
        upstream.address,
        dns={"servers": [dns.address], "timeout": 2.0},
        plugins={"enabled": ["access", plugin]},
        plugin={plugin: {"skip_clients": [], **options}},
    )


def test_spf_fail_is_refused_and_a_pass_arrives_with_its_headers(make_proxy, upstream, dns):
    proxy = proxy_with(make_proxy, upstream, dns, "spf", on_fail="reject")
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15, source_address=(CLEAN, 0)) as client:
        client.ehlo("client.test")
        code, text = client.mail("forger@fail.test")
        assert (code, text) == (550, b"5.7.23 SPF fail: domain of fail.test does not designate 127.0.0.3 "
                                     b"as permitted sender (SPF fail - not authorized)")
        client.sendmail("someone@pass.test", ["rcpt@example.test"], MESSAGE)
    [message] = upstream.messages
    assert message == (
        b"Received-SPF: pass (proxy.test: domain of pass.test designates 127.0.0.3 as permitted sender) "
        b"client-ip=127.0.0.3; envelope-from=someone@pass.test; helo=client.test; receiver=proxy.test; "
        b"identity=mailfrom\r\n"
        b"Authentication-Results: proxy.test; spf=pass smtp.mailfrom=someone@pass.test\r\n" + DELIVERED
    )
    assert b"MAIL FROM:<forger@fail.test>" not in upstream.received


def test_a_listed_client_is_refused_with_the_lists_reason(make_proxy, upstream, dns):
    proxy = proxy_with(make_proxy, upstream, dns, "dnsbl",
                       client_lists=["bl.test=127.0.0.[2..11]*3"], reject_threshold=3)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15, source_address=(LISTED, 0))
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        554, b"5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test; "
             b"Listed: see http://bl.test/127.0.0.2",
    )
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15, source_address=(CLEAN, 0)) as client:
        client.sendmail("someone@pass.test", ["rcpt@example.test"], MESSAGE)
    assert upstream.messages == [DELIVERED]
    assert len(upstream.sessions) == 1  # the listed client never got an upstream session
    assert proxy.metric("mailproxy_plugin_checks_total", plugin="dnsbl", check="bl.test", result="listed") == 1


@pytest.mark.parametrize("name, reply", [
    ("proxy.test", (550, b"5.7.1 Helo command rejected: That name is mine")),
    ("client..test", (501, b"5.5.2 Helo command rejected: Invalid name")),
])
def test_a_bad_helo_is_refused(make_proxy, upstream, dns, name, reply):
    proxy = proxy_with(make_proxy, upstream, dns, "helo")
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15, source_address=(CLEAN, 0)) as client:
        assert client.ehlo(name) == reply
        assert client.ehlo("client.test")[0] == 250
        client.sendmail("someone@pass.test", ["rcpt@example.test"], MESSAGE)
    assert upstream.messages == [DELIVERED]
    assert name.encode() not in upstream.received


def test_dns_queries_and_cache_hits_are_counted(make_proxy, upstream, dns):
    proxy = proxy_with(make_proxy, upstream, dns, "dnsbl",
                       client_lists=["bl.test=127.0.0.[2..11]*3"], reject_threshold=3)
    for _ in range(2):  # the second refusal is answered from the cache
        with pytest.raises(smtplib.SMTPConnectError):
            smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15, source_address=(LISTED, 0))
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15, source_address=(CLEAN, 0)) as client:
        client.noop()
    m = proxy.metric
    assert m("mailproxy_dns_query_duration_seconds_count", type="A", result="answer") == 1
    assert m("mailproxy_dns_query_duration_seconds_count", type="TXT", result="answer") == 1
    assert m("mailproxy_dns_query_duration_seconds_count", type="A", result="nxdomain") == 1
    assert m("mailproxy_dns_cache_lookups_total", result="hit") >= 1
    assert m("mailproxy_dns_cache_lookups_total", result="miss") == 3  # A and TXT of the listed, A of the clean
