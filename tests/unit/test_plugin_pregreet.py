"""The pregreet plugin's hook, called with real Session objects whose `wait_for_client`
answers as the proxy's would (the proxy's side is in tests/integration/test_pregreet.py):
what each answer comes to, how long it asks the session to wait, who never waits, and
its section's rules."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from mailproxy import Action
from mailproxy.config import ConfigError
from tests.support.plugins import HOSTNAME, client_session, load_plugin

UNUSED_DNS = "127.0.0.1"  # the plugin asks no DNS
TEXT = "Protocol error: talked before the greeting"


class Client:
    """Stands in for the proxy's `wait_for_client`: answers `heard`, records each wait."""

    def __init__(self, heard: str) -> None:
        self.heard = heard
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> str:
        self.waits.append(seconds)
        return self.heard


def connect(plugin, heard: str = "spoke", address: str = "192.0.2.1", mode: str = "mx", started_ago: float = 0.0):
    """(the hook's verdict, the client's recorded waits) for a session from `address`."""
    session = client_session(address, mode=mode)
    session.started = time.monotonic() - started_ago
    client = session.wait_for_client = Client(heard)
    return asyncio.run(plugin.smtp_connect(session=session)), client.waits


def pregreet(**options):
    return load_plugin("pregreet", UNUSED_DNS, **{"skip_clients": [], **options})


def checks(result: str) -> float:
    labels = {"plugin": "pregreet", "check": "pregreet", "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


def test_an_early_talker_is_refused_by_default_with_a_protocol_error():
    verdict, _ = connect(pregreet())
    assert verdict.action is Action.REJECT
    # What the client gets in place of the greeting (see Verdict.as_greeting).
    assert verdict.as_greeting(HOSTNAME).reply.lines() == [f"554 5.5.1 {TEXT}"]


def test_an_early_talker_can_be_tempfailed_or_scored_instead():
    verdict, _ = connect(pregreet(early_talker="tempfail"))
    assert verdict.action is Action.TEMPFAIL
    assert verdict.as_greeting(HOSTNAME).reply.lines() == [f"421 4.5.1 {HOSTNAME} {TEXT}"]
    verdict, _ = connect(pregreet(early_talker=2.5))
    assert (verdict.action, verdict.symbol, verdict.points) == (Action.SCORE, "PREGREET", 2.5)


def test_a_patient_client_and_one_that_left_have_no_finding_and_every_result_is_counted():
    plugin = pregreet()
    before = {result: checks(result) for result in ("early_talker", "patient", "left")}
    assert connect(plugin, "silent")[0] is None
    assert connect(plugin, "left")[0] is None
    connect(plugin, "spoke")
    assert {result: checks(result) - before[result] for result in before} == {
        "early_talker": 1, "patient": 1, "left": 1,
    }


def test_the_wait_runs_from_the_connection_so_earlier_hooks_overlap_it():
    plugin = pregreet(greet_wait=3.0)
    _, waits = connect(plugin, "silent")
    assert 2.5 < waits[0] <= 3.0
    _, waits = connect(plugin, "silent", started_ago=2.0)  # the name lookup and dnsbl took 2 s
    assert 0.5 < waits[0] <= 1.0
    _, waits = connect(plugin, "silent", started_ago=5.0)  # already longer than the wait
    assert waits == [0.0]  # still looks: the client may have spoken meanwhile


def test_sessions_it_does_not_judge_never_wait():
    private = load_plugin("pregreet", UNUSED_DNS)  # skip_clients: private networks by default
    assert connect(private, address="10.1.2.3") == (None, [])
    assert connect(private, address="127.0.0.1") == (None, [])
    assert connect(pregreet(), mode="submission") == (None, [])  # modes: ["mx"] by default
    assert connect(pregreet(early_talker="off")) == (None, [])
    # Outside a proxy session (mailproxy.testing's scripts) nobody can wait.
    session = client_session("192.0.2.1")
    assert asyncio.run(pregreet().smtp_connect(session=session)) is None


@pytest.mark.parametrize("options, message", [
    ({"greet_wait": 5.0}, "plugin.pregreet.greet_wait: must be less than timeout (5), the limit of the whole hook"),
    ({"greet_wait": 8.0, "timeout": 7.5},
     "plugin.pregreet.greet_wait: must be less than timeout (7.5), the limit of the whole hook"),
    ({"greet_wait": 0}, "plugin.pregreet.greet_wait: Input should be greater than 0"),
    ({"early_talker": "drop"},
     'plugin.pregreet.early_talker: \'drop\' is not an action: use "reject", "tempfail", "off" or a number of points'),
])
def test_bad_settings_name_the_key(options, message):
    with pytest.raises(ConfigError) as error:
        load_plugin("pregreet", UNUSED_DNS, **options)
    assert str(error.value) == f"config: {message}"


def test_a_longer_wait_fits_with_a_longer_timeout():
    _, waits = connect(pregreet(greet_wait=6.0, timeout=10.0), "silent")
    assert 5.5 < waits[0] <= 6.0
