"""Verified client names from a real DNS server (dnsmasq), passed on as XCLIENT NAME."""

import smtplib

import pytest

from tests.support.dnsmasq import Dnsmasq
from tests.support.recorder import RecordingUpstream

pytestmark = pytest.mark.integration

RECORDS = [
    "--host-record=client.example.test,127.0.0.5",  # A and PTR agree
    "--ptr-record=6.0.0.127.in-addr.arpa,liar.example.test",  # PTR only; its A points elsewhere
    "--address=/liar.example.test/127.0.0.99",
]


@pytest.mark.parametrize("source, name", [
    ("127.0.0.5", b"client.example.test"),
    ("127.0.0.6", b"[UNAVAILABLE]"),  # not forward-confirmed
    ("127.0.0.7", b"[UNAVAILABLE]"),  # no PTR at all
])
def test_xclient_name_is_the_forward_confirmed_name(make_proxy, source, name):
    with Dnsmasq(RECORDS) as dns, RecordingUpstream(xclient=True) as upstream:
        proxy = make_proxy(
            upstream.address,
            proxy={"hostname": "proxy.test", "resolve_client_names": True},
            dns={"servers": [dns.address], "timeout": 2.0},
        )
        with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=10, source_address=(source, 0)) as client:
            assert client.ehlo("client.test")[0] == 250
    assert b"XCLIENT NAME=" + name + b" ADDR=" + source.encode() in bytes(upstream.received)


def test_unanswered_lookup_is_tempunavail(make_proxy):
    with RecordingUpstream(xclient=True) as upstream:
        from tests.support.servers import free_port

        silent = free_port()  # nothing answers DNS there
        proxy = make_proxy(
            upstream.address,
            proxy={"hostname": "proxy.test", "resolve_client_names": True},
            dns={"servers": [f"127.0.0.1:{silent}"], "timeout": 0.5},
        )
        with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=10) as client:
            assert client.ehlo("client.test")[0] == 250
    assert b"XCLIENT NAME=[TEMPUNAVAIL] ADDR=127.0.0.1" in bytes(upstream.received)
    assert proxy.metric("mailproxy_dns_query_duration_seconds_count", type="PTR", result="error") == 1


def test_client_name_lookups_are_counted(make_proxy):
    with Dnsmasq(RECORDS) as dns, RecordingUpstream(xclient=True) as upstream:
        proxy = make_proxy(
            upstream.address,
            proxy={"hostname": "proxy.test", "resolve_client_names": True},
            dns={"servers": [dns.address], "timeout": 2.0},
        )
        with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=10, source_address=("127.0.0.5", 0)) as client:
            assert client.ehlo("client.test")[0] == 250
        m = proxy.metric
        assert m("mailproxy_dns_query_duration_seconds_count", type="PTR", result="answer") == 1
        assert m("mailproxy_dns_query_duration_seconds_count", type="A", result="answer") == 1
