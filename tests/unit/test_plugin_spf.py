"""The spf plugin's hooks, called with real Session and Envelope objects, its SPF
records served by a real DNS server (dnsmasq on loopback): nothing else is asked."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from mailproxy import Action
from mailproxy.config import ConfigError
from tests.support.clock import Clock
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.plugins import client_session, load_plugin, sender_envelope
from tests.support.servers import free_port
from tests.support.ticks import counting_ticks

CLIENT = "192.0.2.1"
OTHER = "192.0.2.9"
RECORDS = [
    f"--txt-record=pass.test,v=spf1 ip4:{CLIENT} -all",
    f"--txt-record=soft.test,v=spf1 ip4:{CLIENT} ~all",
    "--txt-record=neutral.test,v=spf1 ?all",
    "--txt-record=broken.test,v=spf1 nosuchmechanism -all",
    # The include's name is outside the server's zone: it answers REFUSED, an error.
    "--txt-record=unreachable.test,v=spf1 include:spf.example.invalid -all",
    # mx: the policy names hosts that the check must look up, on the same server
    "--txt-record=viamx.test,v=spf1 mx -all",
    "--mx-host=viamx.test,mail.viamx.test,10",
    f"--host-record=mail.viamx.test,{CLIENT}",
    "--txt-record=six.test,v=spf1 ip6:2001:db8::25 -all",
    "--txt-record=helo.test,v=spf1 a -all",
    f"--host-record=helo.test,{CLIENT}",
]
NOT_AN_ACTION = 'is not an action: use "reject", "tempfail", "off" or a number of points'
# A distinct action per result, so that each test sees which result was found.
ACTIONS = {
    "on_pass": -0.5, "on_fail": "reject", "on_softfail": "tempfail", "on_neutral": 0.25,
    "on_none": "off", "on_permerror": "reject", "on_temperror": "tempfail",
}


@pytest.fixture(scope="module")
def dns():
    with Dnsmasq([*authoritative(), *RECORDS], zones=()) as server:
        yield server


@pytest.fixture(scope="module")
def spf(dns):
    # Every check evaluated: these tests are about the evaluation (the result cache has
    # its own tests below).
    return load_plugin("spf", dns.address, result_cache_ttl=0, **ACTIONS)


def mail(plugin, sender: str, client: str = CLIENT, helo: str = "helo.test", **session):
    """MAIL FROM; returns its verdict and the headers added for the message."""
    session = client_session(client, helo=helo, **session)
    envelope = sender_envelope(sender)
    verdict = asyncio.run(plugin.smtp_mail(session=session, envelope=envelope, address=sender))
    return verdict, dict(envelope.added_headers)


def checks(identity: str, result: str) -> float:
    labels = {"plugin": "spf", "check": identity, "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


def timings(identity: str) -> float:
    labels = {"plugin": "spf", "check": identity}
    return REGISTRY.get_sample_value("mailproxy_plugin_check_duration_seconds_count", labels) or 0.0


@pytest.mark.parametrize("sender, client, result", [
    ("a@pass.test", CLIENT, "pass"),
    ("a@pass.test", OTHER, "fail"),  # the same sender from another client
    ("a@soft.test", OTHER, "softfail"),
    ("a@neutral.test", CLIENT, "neutral"),
    ("a@nospf.test", CLIENT, "none"),  # no such domain
    ("a@broken.test", CLIENT, "permerror"),
    ("a@unreachable.test", CLIENT, "temperror"),
    ("a@viamx.test", CLIENT, "pass"),
    ("a@viamx.test", OTHER, "fail"),
    ("a@six.test", "2001:db8::25", "pass"),
    ("a@six.test", "2001:db8::26", "fail"),
    ("a@pass.test", f"::ffff:{CLIENT}", "pass"),  # an IPv4 client on an IPv6 socket
])
def test_the_result_for_the_client_address_is_recorded(spf, sender, client, result):
    before, timed = checks("mailfrom", result), timings("mailfrom")
    _, headers = mail(spf, sender, client)
    assert headers["Received-SPF"].startswith(f"{result} (proxy.test: ")
    assert headers["Authentication-Results"] == f"proxy.test; spf={result} smtp.mailfrom={sender}"
    assert checks("mailfrom", result) == before + 1
    assert timings("mailfrom") == timed + 1


def test_each_result_does_what_its_option_says(spf):
    verdicts = {
        result: mail(spf, sender, client)[0]
        for result, sender, client in [
            ("pass", "a@pass.test", CLIENT), ("fail", "a@pass.test", OTHER),
            ("softfail", "a@soft.test", OTHER), ("neutral", "a@neutral.test", CLIENT),
            ("none", "a@nospf.test", CLIENT), ("permerror", "a@broken.test", CLIENT),
            ("temperror", "a@unreachable.test", CLIENT),
        ]
    }
    passed = verdicts["pass"]
    assert (passed.action, passed.symbol, passed.points) == (Action.SCORE, "SPF_PASS", -0.5)
    assert (verdicts["neutral"].symbol, verdicts["neutral"].points) == ("SPF_NEUTRAL", 0.25)
    assert verdicts["none"] is None
    fail = verdicts["fail"].reply
    assert (fail.code, fail.enhanced) == (550, "5.7.23")
    assert fail.text == (f"SPF fail: domain of pass.test does not designate {OTHER} as permitted sender "
                         "(SPF fail - not authorized)")
    assert (verdicts["softfail"].action, verdicts["softfail"].reply.code) == (Action.TEMPFAIL, 451)
    assert (verdicts["permerror"].reply.code, verdicts["permerror"].reply.enhanced) == (550, "5.7.24")
    assert (verdicts["temperror"].reply.code, verdicts["temperror"].reply.enhanced) == (451, "4.7.24")


def test_the_defaults_score_a_fail_and_never_refuse(dns):
    plugin = load_plugin("spf", dns.address)
    verdict, _ = mail(plugin, "a@pass.test", OTHER)
    assert (verdict.action, verdict.symbol, verdict.points) == (Action.SCORE, "SPF_FAIL", 2.0)
    for sender in ("a@pass.test", "a@broken.test", "a@unreachable.test", "a@nospf.test"):
        verdict, _ = mail(plugin, sender, CLIENT)
        assert verdict is None


def test_the_headers_say_what_was_checked(spf):
    _, headers = mail(spf, "a@pass.test", OTHER)
    assert headers == {
        "Received-SPF": (
            f"fail (proxy.test: domain of pass.test does not designate {OTHER} as permitted sender) "
            f"client-ip={OTHER}; envelope-from=a@pass.test; helo=helo.test; receiver=proxy.test; "
            "identity=mailfrom"
        ),
        "Authentication-Results": "proxy.test; spf=fail smtp.mailfrom=a@pass.test",
    }


def test_the_null_sender_is_checked_by_its_helo_name(spf):
    before = checks("helo", "pass")
    verdict, headers = mail(spf, "", CLIENT, helo="helo.test")
    assert (verdict.symbol, verdict.points) == ("SPF_PASS", -0.5)
    assert headers["Received-SPF"] == (
        f"pass (proxy.test: domain of helo.test designates {CLIENT} as permitted sender) "
        f"client-ip={CLIENT}; helo=helo.test; receiver=proxy.test; identity=helo"
    )
    assert headers["Authentication-Results"] == "proxy.test; spf=pass smtp.helo=helo.test"
    assert checks("helo", "pass") == before + 1
    verdict, _ = mail(spf, "", OTHER, helo="helo.test")
    assert verdict.reply.code == 550


def test_what_the_client_sent_cannot_forge_the_headers(spf):
    sender = 'x"y;z=(1)@nospf.test'
    _, headers = mail(spf, sender, CLIENT, helo="evil; identity=pass")
    assert headers["Received-SPF"] == (
        "none (proxy.test: domain of nospf.test does not designate permitted sender hosts) "
        f'client-ip={CLIENT}; envelope-from="x\\"y;z=(1)@nospf.test"; helo="evil; identity=pass"; '
        "receiver=proxy.test; identity=mailfrom"
    )
    assert headers["Authentication-Results"] == 'proxy.test; spf=none smtp.mailfrom="x\\"y;z=(1)@nospf.test"'


@pytest.mark.parametrize("session", [
    {"mode": "submission"},  # a listener mode not checked by default
    {"client": "10.1.2.3"},  # a private client
])
def test_sessions_it_does_not_judge_get_nothing(spf, session):
    client = session.pop("client", OTHER)
    verdict, headers = mail(spf, "a@pass.test", client, **session)
    assert verdict is None and headers == {}


def test_an_authenticated_user_is_not_checked(spf):
    session = client_session(OTHER, helo="helo.test")
    session.authenticated = True
    envelope = sender_envelope("a@pass.test")
    assert asyncio.run(spf.smtp_mail(session=session, envelope=envelope, address="a@pass.test")) is None
    assert envelope.added_headers == []


def test_submission_is_checked_when_configured(dns):
    plugin = load_plugin("spf", dns.address, modes=["mx", "submission"], on_fail="reject")
    verdict, _ = mail(plugin, "a@pass.test", OTHER, mode="submission")
    assert verdict.reply.code == 550


def test_headers_can_be_left_out_and_named_for_another_host(dns):
    plugin = load_plugin("spf", dns.address, add_headers=False)
    assert mail(plugin, "a@pass.test", CLIENT)[1] == {}
    plugin = load_plugin("spf", dns.address, authserv_id="mx.example.org")
    headers = mail(plugin, "a@pass.test", CLIENT)[1]
    assert headers["Authentication-Results"] == "mx.example.org; spf=pass smtp.mailfrom=a@pass.test"


def test_a_dns_server_that_never_answers_is_a_temperror_and_the_loop_runs_on():
    silent = f"127.0.0.1:{free_port()}"  # nothing listens there
    plugin = load_plugin("spf", silent, check_timeout=1.0, timeout=5.0, on_temperror="tempfail")

    session, envelope = client_session(CLIENT, helo="helo.test"), sender_envelope("a@pass.test")
    started = time.monotonic()
    check = plugin.smtp_mail(session=session, envelope=envelope, address="a@pass.test")
    verdict, ticks = asyncio.run(counting_ticks(check, interval=0.01))
    elapsed = time.monotonic() - started
    assert verdict.reply.code == 451
    assert elapsed >= 1.0  # it did wait for the DNS ...
    assert ticks >= 10  # ... and other coroutines ran meanwhile: pyspf blocked no loop


# --- the result cache ---------------------------------------------------------------------


@pytest.fixture
def uncached_dns():
    """A DNS server whose answers may not be cached (TTL 0), logging every query: a check
    that evaluates asks it again, one whose result is reused does not."""
    with Dnsmasq([*authoritative(ttl=0), *RECORDS, "--log-queries"], zones=()) as server:
        yield server


def test_a_repeated_check_reuses_the_result_without_asking_the_dns(uncached_dns):
    plugin = load_plugin("spf", uncached_dns.address, **ACTIONS)
    before, timed = checks("mailfrom", "pass"), timings("mailfrom")
    first = mail(plugin, "a@pass.test", CLIENT)
    asked = uncached_dns.queries("pass.test")
    assert asked >= 1
    second = mail(plugin, "a@pass.test", CLIENT)
    assert uncached_dns.queries("pass.test") == asked
    # The same verdict, and the second message has its own header lines.
    assert second == first and second[1]["Authentication-Results"] == (
        "proxy.test; spf=pass smtp.mailfrom=a@pass.test")
    assert checks("mailfrom", "pass") == before + 2  # each message counts its result
    assert timings("mailfrom") == timed + 1  # one evaluation


@pytest.mark.parametrize("sender, client, helo", [
    ("A@pass.test", CLIENT, "helo.test"),  # letter case: an exp= text may quote the sender
    ("a@pass.test", OTHER, "helo.test"),
    ("a@pass.test", CLIENT, "other.test"),
])
def test_a_check_differing_in_anything_is_evaluated(uncached_dns, sender, client, helo):
    plugin = load_plugin("spf", uncached_dns.address, **ACTIONS)
    mail(plugin, "a@pass.test", CLIENT, helo="helo.test")
    timed = timings("mailfrom")
    mail(plugin, sender, client, helo=helo)
    assert timings("mailfrom") == timed + 1


def test_a_temperror_is_never_reused(uncached_dns):
    plugin = load_plugin("spf", uncached_dns.address, **ACTIONS)
    timed = timings("mailfrom")
    for _ in range(2):
        verdict, _ = mail(plugin, "a@unreachable.test", CLIENT)
        assert verdict.reply.enhanced == "4.7.24"
    assert timings("mailfrom") == timed + 2
    assert uncached_dns.queries("spf.example.invalid") >= 2


def test_a_result_is_reused_for_result_cache_ttl_seconds(uncached_dns):
    plugin = load_plugin("spf", uncached_dns.address, result_cache_ttl=60, **ACTIONS)
    plugin.clock = clock = Clock()
    mail(plugin, "a@pass.test", CLIENT)
    timed = timings("mailfrom")
    clock.now += 59
    mail(plugin, "a@pass.test", CLIENT)
    assert timings("mailfrom") == timed
    clock.now += 2  # 61 s after the evaluation: evaluated again
    mail(plugin, "a@pass.test", CLIENT)
    assert timings("mailfrom") == timed + 1


def test_at_most_result_cache_entries_are_kept_the_least_recently_used_go(uncached_dns):
    plugin = load_plugin("spf", uncached_dns.address, result_cache_entries=2, **ACTIONS)

    def evaluated(sender: str) -> bool:
        timed = timings("mailfrom")
        mail(plugin, sender, CLIENT)
        return timings("mailfrom") == timed + 1

    assert [evaluated(s) for s in ("a@pass.test", "b@pass.test", "a@pass.test", "c@pass.test")] == [
        True, True, False, True]
    # c came in, b went: a was used after it
    assert [evaluated(s) for s in ("a@pass.test", "c@pass.test", "b@pass.test")] == [False, False, True]


def test_a_result_cache_ttl_of_0_evaluates_every_check(uncached_dns):
    plugin = load_plugin("spf", uncached_dns.address, result_cache_ttl=0, **ACTIONS)
    timed = timings("mailfrom")
    mail(plugin, "a@pass.test", CLIENT)
    mail(plugin, "a@pass.test", CLIENT)
    assert timings("mailfrom") == timed + 2
    assert uncached_dns.queries("pass.test") == 2


@pytest.mark.parametrize("options, message", [
    ({"result_cache_ttl": -1}, "plugin.spf.result_cache_ttl: Input should be greater than or equal to 0"),
    ({"on_fail": "rejct"}, f"plugin.spf.on_fail: 'rejct' {NOT_AN_ACTION}"),
    ({"on_pass": "score"}, f"plugin.spf.on_pass: 'score' {NOT_AN_ACTION}"),
    ({"check_timeout": 10.0, "timeout": 10.0},
     "plugin.spf.check_timeout: must end at least 1s before timeout (10)"),
    ({"modes": ["smtp"]}, "plugin.spf.modes[0]: Input should be 'mx' or 'submission'"),
    ({"skip_clients": ["10.0.0.0/33"]},
     "plugin.spf.skip_clients: '10.0.0.0/33' is not an IP network (like 192.0.2.0/24)"),
])
def test_config_errors_name_the_key(dns, options, message):
    with pytest.raises(ConfigError) as error:
        load_plugin("spf", dns.address, **options)
    assert str(error.value) == f"config: {message}"
