"""The metrics an operator's dashboards and alerts read, each shown to move with the
traffic it names: TLS handshakes and certificate expiry, upstream connection time,
the spam score distribution and the build."""

import platform
import socket

import pytest
from cryptography import x509

from mailproxy import __version__
from tests.integration.conftest import DROPINS
from tests.support.clients import connect, submission_client

pytestmark = pytest.mark.integration

SCORER = {"enabled": ["access", "scorer"], "directories": [str(DROPINS)]}


def test_starttls_handshakes_are_counted_by_result_and_version(proxy, certs):
    with submission_client(proxy, certs) as client:
        client.noop()
    # A client that asks for TLS and then speaks plaintext fails the handshake.
    with socket.create_connection(("127.0.0.1", proxy.port("mx")), timeout=10) as raw:
        raw.recv(1024)
        raw.sendall(b"EHLO client.test\r\n")
        while b"250 " not in raw.recv(4096):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert raw.recv(1024).startswith(b"220")
        raw.sendall(b"this is not a TLS ClientHello\r\n" * 4)
        assert raw.recv(1024) == b""  # the proxy hangs up
    m = proxy.metric
    handshake = {"protocol": "smtp", "mode": "starttls"}
    assert m("mailproxy_tls_handshakes_total", listener="submission", result="success", version="TLSv1.3", **handshake) == 1
    assert m("mailproxy_tls_handshakes_total", listener="mx", result="failure", version="none", **handshake) == 1
    assert m("mailproxy_tls_handshakes_total", result="success", listener="mx") == 0


def test_certificate_expiry_is_the_served_certificates(proxy, certs):
    _, cert, _ = certs
    expiry = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
    for listener in ("mx", "submission"):
        assert proxy.metric("mailproxy_tls_certificate_expiry_timestamp_seconds", listener=listener) == expiry


def test_upstream_connections_are_timed_and_the_final_score_observed(sink, make_proxy):
    proxy = make_proxy(
        sink.address, plugins=SCORER, plugin={"scorer": {"connect_points": 2.5, "helo_points": 1}},
        policy={"reject_score": 100},  # the action stage runs: there is a threshold
    )
    with connect(proxy) as client:
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: s\r\n\r\nbody\r\n")
        client.sendmail("b@sender.example", ["user@example.test"], b"Subject: t\r\n\r\nbody\r\n")
    sink.bodies(expected=2)
    m = proxy.metric
    assert m("mailproxy_upstream_connect_duration_seconds_count", upstream="sink") >= 1
    assert m("mailproxy_spam_score_count", listener="mx") == 2
    assert m("mailproxy_spam_score_sum", listener="mx") == 7.0  # 3.5 for each message
    assert m("mailproxy_spam_score_bucket", listener="mx", le="3.0") == 0
    assert m("mailproxy_spam_score_bucket", listener="mx", le="4.0") == 2


def test_build_info_names_this_build(proxy):
    labels = {"version": __version__, "python": platform.python_version()}
    assert proxy.metric("mailproxy_build_info", **labels) == 1


def test_multiple_workers_report_the_certificate_and_build_once(sink, make_proxy, certs):
    # Workers inherit the gauges at fork and read 0 in their own files: the merged
    # scrape must still show the real values, not 0 and not a sum.
    _, cert, _ = certs
    expiry = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
    proxy = make_proxy(sink.address, proxy={"workers": 2})
    with connect(proxy) as client:  # a worker touches its metrics
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: w\r\n\r\nbody\r\n")
    sink.bodies(expected=1)
    assert proxy.metric("mailproxy_tls_certificate_expiry_timestamp_seconds", listener="mx") == expiry
    assert proxy.metric("mailproxy_build_info") == 1


def test_alerting_series_exist_at_zero_before_the_first_failure(proxy):
    # rate() sees a counter from its first sample: the first failure of a kind whose
    # series did not exist before would be missed by every alert.
    samples = proxy.scrape().splitlines()
    assert 'mailproxy_plugin_errors_total{hook="smtp_mail",kind="timeout",plugin="access"} 0.0' in samples
    assert 'mailproxy_upstream_failures_total{stage="connect",upstream="sink"} 0.0' in samples
    assert 'mailproxy_messages_total{listener="mx",outcome="rejected"} 0.0' in samples
