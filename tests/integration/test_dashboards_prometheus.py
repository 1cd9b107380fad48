"""Every panel of the committed dashboards shows data, in a real Prometheus scraping a
real proxy that carried SMTP (to smtp-sink), POP3 and IMAP (to Dovecot) traffic.

One proxy and one Prometheus serve the whole module. The proxy has every kind of
trouble a panel shows: refusals by a plugin and by an admission limit, a plugin that
times out, a wrong password, an unreachable upstream, an unreachable Redis behind the
shared state, DNS checks answered by dnsmasq, and a plugin in observe mode. The traffic
runs twice with a scrape between, so every counter rises within the rate window and
every quantile has observations to work on. Each panel query is then evaluated as
Grafana would, with each variable's "All" and $__rate_interval as 1m, and must give at
least one series with a number (not NaN): what Grafana draws.
"""

from __future__ import annotations

import imaplib
import math
import poplib
import smtplib
import time
from typing import NamedTuple

import pytest

from tests.integration.conftest import DROPINS
from tests.support import dashboards
from tests.support.clients import auth_plain, submission_client
from tests.support.configs import base_config
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.dovecot import Dovecot
from tests.support.prometheus import Prometheus
from tests.support.proxy import ProxyProcess
from tests.support.servers import SmtpSink, free_port
from tests.support.tls import client_context

pytestmark = pytest.mark.integration

USERS = {"alice@example.test": "alice-secret"}
STORED = b"From: carol@example.test\r\nSubject: stored\r\n\r\nin the mailbox\r\n"
MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"
DNS_RECORDS = ["--txt-record=pass.test,v=spf1 ip4:127.0.0.0/8 -all"]  # the senders' SPF passes
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__range": "1m"}

BOARDS = dashboards.load()
TARGETS = dashboards.targets(BOARDS)
VARIABLES = [(name, variable) for name, board in BOARDS.items() for variable in dashboards.query_variables(board)]


def proxy_config(sink, dovecot, dns, certs, users_file) -> dict:
    _, cert, key = certs
    tls = {"cert_file": str(cert), "key_file": str(key)}
    store = {"source_address": "127.0.0.5", "connect_timeout": 3.0, "reply_timeout": 10.0}
    config = base_config(
        sink.address, certs, users_file,
        auth={"max_failures": 100},  # the wrong passwords of both rounds must not throttle the right ones
        dns={"servers": [dns.address], "timeout": 2.0},
        # Nothing listens there: every state operation fails, and counts.
        state={"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "timeout": 0.5},
        policy={"reject_score": 15.0},  # an action stage, which observes each message's final score
        metrics={"upstream_probe_interval": 1.0},  # the readiness probes set mailproxy_upstream_up
        plugins={"enabled": ["access", "dnsbl", "spf", "faulty", "sender_symbols", "client_symbols"],
                 "directories": [str(DROPINS)]},
        plugin={
            "dnsbl": {"skip_clients": [], "client_lists": ["bl.test"]},
            "spf": {"skip_clients": [], "result_cache_ttl": 0},  # DNS queries in both rounds
            "faulty": {"timeout": 0.5},
            "sender_symbols": {"senders": {"scored": {"SENDER_SCORED": 3.0}}},
            "client_symbols": {"observe": True, "symbol": "CLIENT_WATCHED", "points": 1.0},
        },
    )
    config["upstreams"].update({
        "pop3_store": {"address": f"127.0.0.2:{dovecot.pop3_port}", **store},
        "imap_store": {"address": f"127.0.0.2:{dovecot.imap_port}", **store},
        "nowhere": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 3.0},
    })
    mx = {"mode": "mx", "upstream": "sink", "local_domains": ["example.test"]}
    config["listeners"] += [
        {"name": "pop3", "protocol": "pop3", "tls": "starttls", "upstream": "pop3_store", **tls},
        {"name": "imap", "protocol": "imap", "tls": "starttls", "upstream": "imap_store", **tls},
        {"name": "limited", **mx, "max_connections": 1},
        {"name": "unreachable", **mx, "upstream": "nowhere"},
    ]
    return config


def smtp_traffic(proxy, certs) -> None:
    with smtplib.SMTP("127.0.0.1", proxy.port("mx"), timeout=15) as client:
        client.ehlo("client.test")
        client.sendmail("someone@pass.test", ["user@example.test"], MESSAGE)
        client.sendmail("scored@pass.test", ["user@example.test"], MESSAGE)  # a spam score above 0
        assert client.mail("bulk@spam.example")[0] == 550  # refused by access
        client.rset()
        assert client.mail("hang@test.example")[0] == 451  # faulty timed out: its fail mode
        client.rset()
        with pytest.raises(smtplib.SMTPDataError):  # refused by faulty at end of data
            client.sendmail("someone@pass.test", ["user@example.test"], b"X-Reject-Me: yes\r\n\r\nno\r\n")
    with submission_client(proxy, certs) as client:  # STARTTLS
        assert auth_plain(client, "alice@example.test", "wrong")[0] == 535
        assert auth_plain(client, "alice@example.test", "alice-secret")[0] == 235
        client.sendmail("alice@example.test", ["someone@elsewhere.test"], MESSAGE)
    with smtplib.SMTP("127.0.0.1", proxy.port("limited"), timeout=15) as holder:
        with pytest.raises(smtplib.SMTPConnectError):  # the listener is full: 421
            smtplib.SMTP("127.0.0.1", proxy.port("limited"), timeout=15)
        holder.noop()
    with pytest.raises(smtplib.SMTPConnectError):  # the upstream is unreachable: 421
        smtplib.SMTP("127.0.0.1", proxy.port("unreachable"), timeout=15)


def pop3_traffic(proxy, certs) -> None:
    client = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=15)
    client.stls(client_context(certs[0]))
    client.user("alice@example.test")
    with pytest.raises(poplib.error_proto):
        client.pass_("wrong")
    client.close()
    client = poplib.POP3("127.0.0.1", proxy.port("pop3"), timeout=15)
    client.stls(client_context(certs[0]))
    client.user("alice@example.test")
    client.pass_("alice-secret")
    assert client.stat()[0] == 1
    assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == STORED
    client.quit()


def imap_traffic(proxy, certs) -> None:
    client = imaplib.IMAP4("127.0.0.1", proxy.port("imap"), timeout=15)
    client.starttls(client_context(certs[0]))
    with pytest.raises(imaplib.IMAP4.error):
        client.login("alice@example.test", "wrong")
    client.login("alice@example.test", "alice-secret")
    assert client.select("INBOX") == ("OK", [b"1"])
    status, data = client.fetch("1", "(BODY.PEEK[])")
    assert status == "OK" and data[0][1] == STORED
    client.logout()


def traffic(proxy, certs) -> None:
    smtp_traffic(proxy, certs)
    pop3_traffic(proxy, certs)
    imap_traffic(proxy, certs)


@pytest.fixture(scope="module")
def prometheus(certs, users_file, tmp_path_factory):
    """A Prometheus that has scraped two rounds of traffic through the proxy."""
    with (SmtpSink() as sink, Dnsmasq([*authoritative(), *DNS_RECORDS], zones=()) as dns,
          Dovecot(USERS, listen="127.0.0.2", trusted_networks="127.0.0.5/32") as dovecot):
        dovecot.seed("alice@example.test", [STORED])
        proxy = ProxyProcess(proxy_config(sink, dovecot, dns, certs, users_file), tmp_path_factory.mktemp("proxy"))
        proxy.start()
        try:
            with Prometheus([f"127.0.0.1:{proxy.metrics_port}"]) as server:
                traffic(proxy, certs)
                server.wait_for_scrapes(1, after=time.time())
                traffic(proxy, certs)
                server.wait_for_scrapes(2, after=time.time())
                yield server
        finally:
            code = proxy.stop()
            log = proxy.log()
        assert code == 0, f"proxy exited with {code}\n{log}"
        assert "Traceback" not in log, log


class Choices(NamedTuple):
    """A dashboard's variables as Grafana fills them in with "All" chosen."""

    substitutions: dict[str, str]  # $name -> what Grafana puts in the queries
    options: dict[str, list[str]]  # query variable -> the values its query found


@pytest.fixture(scope="module")
def choices(prometheus) -> dict[str, Choices]:
    found = {}
    for name, board in BOARDS.items():
        chosen = Choices(dict(GRAFANA_INTERVALS), {})
        for variable in dashboards.query_variables(board):  # in order: a later one may use an earlier one
            series, label = dashboards.label_values_query(variable)
            options = prometheus.label_values(label, dashboards.substitute(series, chosen.substitutions))
            chosen.options[variable["name"]] = options
            chosen.substitutions[variable["name"]] = dashboards.all_of(variable, options)
        found[name] = chosen
    return found


@pytest.mark.parametrize("dashboard, variable", VARIABLES,
                         ids=[f"{name.removesuffix('.json')}: ${v['name']}" for name, v in VARIABLES])
def test_a_variable_query_finds_values(choices, dashboard, variable):
    assert choices[dashboard].options[variable["name"]], variable["query"]


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.id)
def test_a_panel_query_shows_data(prometheus, choices, target):
    expr = dashboards.substitute(target.expr, choices[target.dashboard].substitutions)
    series = prometheus.query(expr)  # a query Prometheus refuses raises, with its error
    numbers = [s for s in series if math.isfinite(float(s["value"][1]))]
    assert numbers, f"no data: {expr} gave {series}"
