"""TLS on both sides: implicit TLS listeners, and a TLS-speaking upstream (another
mailproxy listener, so the upstream's certificate and TLS mode are under test control)."""

import smtplib
import ssl

import pytest

from tests.support.tls import client_context

pytestmark = pytest.mark.integration


def implicit_listener(certs, name="smtps", mode="mx"):
    _, cert, key = certs
    return {
        "name": name, "mode": mode, "tls": "implicit", "cert_file": str(cert), "key_file": str(key),
        "upstream": "sink", "local_domains": ["example.test"],
    }


def test_implicit_tls_listener_delivers(sink, make_proxy, certs):
    proxy = make_proxy(sink.address, listeners=[implicit_listener(certs)])
    with smtplib.SMTP_SSL("127.0.0.1", proxy.port("smtps"), context=client_context(certs[0]), timeout=10) as client:
        client.ehlo("client.test")
        assert "starttls" not in client.esmtp_features  # already encrypted
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: tls\r\n\r\nsecret\r\n")
    assert sink.bodies(expected=1) == [b"Subject: tls\n\nsecret\n"]


def test_both_tls_contexts_refuse_below_tls_1_2(certs):
    # Debian's OpenSSL already refuses older versions system-wide, so a handshake test
    # could not fail; the contexts the proxy builds must say it themselves.
    from mailproxy.config import ListenerSettings, UpstreamSettings
    from mailproxy.proxy.runtime import server_tls_context
    from mailproxy.proxy.upstream_link import client_tls_context

    _, cert, key = certs
    listener = ListenerSettings(
        name="l", mode="submission", address="127.0.0.1:1", tls="implicit",
        cert_file=cert, key_file=key, upstream="u",
    )
    upstream = UpstreamSettings(address="127.0.0.1:2", tls="starttls")
    assert server_tls_context(listener).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_tls_context(upstream).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_tls_context(upstream).verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_upstream_tls_is_verified_and_used(sink, make_proxy, certs, mode):
    # The "upstream" is a second mailproxy whose listener speaks TLS, in front of the sink.
    ca, cert, key = certs
    inner_listener = implicit_listener(certs, name="inner")
    inner_listener["tls"] = mode
    inner = make_proxy(sink.address, listeners=[inner_listener])
    outer = make_proxy(
        f"127.0.0.1:{inner.port('inner')}",
        upstreams={"sink": {"address": f"127.0.0.1:{inner.port('inner')}", "tls": mode, "ca_file": str(ca)}},
        listeners=[{"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"]}],
    )
    with smtplib.SMTP("127.0.0.1", outer.port("mx"), timeout=10) as client:
        client.sendmail("a@sender.example", ["user@example.test"], b"Subject: chained\r\n\r\nok\r\n")
    assert sink.bodies(expected=1) == [b"Subject: chained\n\nok\n"]


def test_unverifiable_upstream_certificate_gives_421(sink, make_proxy, certs, tmp_path):
    from tests.support.tls import make_ca_and_cert

    inner = make_proxy(sink.address, listeners=[implicit_listener(certs, name="inner")])
    other_ca, _, _ = make_ca_and_cert(tmp_path)  # a CA that did not sign the inner cert
    outer = make_proxy(
        sink.address,
        upstreams={"sink": {"address": f"127.0.0.1:{inner.port('inner')}", "tls": "implicit", "ca_file": str(other_ca)}},
        listeners=[{"name": "mx", "mode": "mx", "upstream": "sink", "local_domains": ["example.test"]}],
    )
    client = smtplib.SMTP(timeout=10)
    code, text = client.connect("127.0.0.1", outer.port("mx"))
    client.close()
    assert code == 421
    assert "CERTIFICATE_VERIFY_FAILED" in outer.log()
    assert outer.metric("mailproxy_upstream_failures_total", stage="connect") == 1
