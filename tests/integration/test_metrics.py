"""/metrics reflects the traffic; /healthz answers."""

import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import DROPINS
from tests.support.clients import connect

pytestmark = pytest.mark.integration

TAGGER = {"enabled": ["access", "tagger"], "directories": [str(DROPINS)]}


def test_metrics_reflect_traffic(sink, make_proxy):
    proxy = make_proxy(sink.address, plugins=TAGGER)
    message = b"Subject: m\r\n\r\n" + b"y" * 3000 + b"\r\n"
    with connect(proxy) as client:
        client.sendmail("a@sender.example", ["user@example.test"], message)
        client.ehlo("client.test")
        client.mail("bulk@spam.example")  # refused by access
    [body] = sink.bodies(expected=1)
    assert body.startswith(b"X-Tagged: %d bytes\n" % len(message))  # the data hook read it whole
    m = proxy.metric
    assert m("mailproxy_connections_total", protocol="smtp", listener="mx") == 1
    assert m("mailproxy_commands_total", verb="MAIL") == 2
    assert m("mailproxy_commands_total", verb="RCPT") == 1
    assert m("mailproxy_commands_total", verb="DATA") == 1
    assert m("mailproxy_messages_total", listener="mx", outcome="delivered") == 1
    assert m("mailproxy_replies_total", **{"class": "5xx", "origin": "proxy"}) == 1
    assert m("mailproxy_replies_total", **{"class": "3xx", "origin": "proxy"}) == 1  # the 354
    assert m("mailproxy_verdicts_total", plugin="access", action="reject") == 1
    assert m("mailproxy_upstream_duration_seconds_count", upstream="sink", command="DATA_END") == 1
    assert m("mailproxy_plugin_duration_seconds_count", plugin="tagger", hook="smtp_data") == 1
    assert m("mailproxy_message_size_bytes_sum", listener="mx") > 3000
    assert m("mailproxy_sessions_active") == 0


def test_healthz_and_404(proxy):
    assert proxy.scrape("/healthz") == "ok\n"
    with pytest.raises(urllib.error.HTTPError) as missing:
        proxy.scrape("/nothing")
    assert missing.value.code == 404
