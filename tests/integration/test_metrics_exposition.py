"""A live scrape of a real proxy passes `promtool check metrics`, Prometheus's own lint
of metric names, types, units and help texts; with several workers too, where the
supervisor serves the workers' merged metrics. SMTP traffic first puts samples in most
metric families, so that the lint sees real series and not only their declarations."""

from __future__ import annotations

import smtplib
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import DROPINS, USERS
from tests.support.clients import auth_plain, connect, submission_client
from tests.support.configs import base_config
from tests.support.servers import free_port

pytestmark = pytest.mark.integration

PROMTOOL = "/usr/bin/promtool"
USER = "alice@example.test"

# The families the traffic below gives samples to (histograms by their base name).
DRIVEN = {
    "mailproxy_connections", "mailproxy_sessions_active", "mailproxy_commands",
    "mailproxy_replies", "mailproxy_tls_handshakes",
    "mailproxy_tls_certificate_expiry_timestamp_seconds", "mailproxy_verdicts",
    "mailproxy_symbols", "mailproxy_plugin_errors", "mailproxy_plugin_duration_seconds",
    "mailproxy_state_errors", "mailproxy_auth_attempts", "mailproxy_upstream_duration_seconds",
    "mailproxy_upstream_connect_duration_seconds", "mailproxy_upstream_up",
    "mailproxy_upstream_failures", "mailproxy_messages", "mailproxy_message_size_bytes",
    "mailproxy_spam_score", "mailproxy_build_info",
}


def proxy_config(sink, certs, users_file) -> dict:
    """The usual two listeners, plus one in front of an upstream nobody listens on; the
    faulty plugin (content rejects, a hang past a short timeout), the scorer with an
    action stage to weigh its points, and a Redis state backend nobody listens on."""
    listeners = base_config(sink.address, certs, users_file)["listeners"]
    listeners.append({"name": "relay", "mode": "mx", "upstream": "gone", "local_domains": ["example.test"]})
    return {
        "listeners": listeners,
        "upstreams": {"gone": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 3.0}},
        "plugins": {"enabled": ["access", "faulty", "scorer"], "directories": [str(DROPINS)]},
        "plugin": {"faulty": {"timeout": 0.5}, "scorer": {"sender_points": 3.0}},
        "policy": {"reject_score": 15.0},
        "state": {"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "timeout": 1.0},
        "metrics": {"upstream_probe_interval": 1.0},  # the probes set mailproxy_upstream_up
    }


def drive_traffic(proxy, certs) -> None:
    with connect(proxy) as client:
        client.sendmail("a@scored.example", ["user@example.test"], b"Subject: kept\r\n\r\nhello\r\n")
        assert client.mail("bulk@spam.example")[0] == 550  # the access plugin
        client.rset()
        with pytest.raises(smtplib.SMTPDataError):  # the faulty plugin, at end-of-data
            client.sendmail("a@sender.example", ["user@example.test"], b"X-Reject-Me: yes\r\n\r\nbody\r\n")
        assert client.mail("hang@test.example")[0] == 451  # past the plugin's timeout
    with submission_client(proxy, certs) as client:
        assert auth_plain(client, USER, "wrong")[0] == 535
        assert auth_plain(client, USER, USERS[USER])[0] == 235
    with pytest.raises(smtplib.SMTPConnectError):  # 421: its upstream is down
        connect(proxy, "relay")


def families_with_samples(scrape: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(scrape) if family.samples}


@pytest.mark.parametrize("workers", [1, 2])
def test_live_scrape_passes_promtool_check_metrics(workers, sink, make_proxy, certs, users_file):
    config = proxy_config(sink, certs, users_file)
    proxy = make_proxy(sink.address, proxy={"workers": workers}, **config)
    drive_traffic(proxy, certs)
    scrape = proxy.scrape()
    assert DRIVEN <= families_with_samples(scrape), DRIVEN - families_with_samples(scrape)

    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60
    )

    problems = lint.stdout + lint.stderr  # one line per metric, naming the problem
    assert (lint.returncode, problems) == (0, ""), problems
