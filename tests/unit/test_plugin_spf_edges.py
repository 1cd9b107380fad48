"""The spf plugin at its edges: the widest settings it takes and the first it refuses,
the documented defaults as a plugin built without those keys behaves, the ptr
mechanism, the longest texts a refusal and the header lines carry, the bounds of its
two caches, and the check as the proxy reaches it, through the policy engine.

The SPF records are served by dnsmasq on loopback, as in tests/unit/test_plugin_spf.py:
this module's server holds that module's records and a few of its own, and is
authoritative for the reverse zone of 192.0.2.0/24 as well, for the ptr mechanism."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mailproxy import Action
from mailproxy.config import ConfigError
from mailproxy.testing import policy_session
from tests.support.dnsmasq import Dnsmasq, authoritative
from tests.support.plugins import client_session, load_plugin, sender_envelope
from tests.support.clock import Clock
from tests.unit.test_plugin_spf import CLIENT, OTHER, RECORDS, mail, timings

NOWHERE = "127.0.0.1:53"  # never asked: the tests that only load the plugin make no queries
PTR_CLIENT = "192.0.2.25"  # its PTR name is mail.ptr.test, whose address it is
# A domain of 253 characters, the longest a domain can be.
LONG_DOMAIN = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 56, "test"])
EXPLANATION = ("Mail from this domain leaves only through its own servers and this one is not among them"
               " so the message was most likely forged")  # one TXT string: no comma, no macro
ZONE = [
    *RECORDS,
    "--txt-record=ptr.test,v=spf1 ptr -all",
    f"--host-record=mail.ptr.test,{PTR_CLIENT}",  # and the PTR record of its address
    f"--txt-record={LONG_DOMAIN},v=spf1 -all exp=explain.test",
    f"--txt-record=explain.test,{EXPLANATION}",
]


def zone_options(ttl: int = 300) -> list[str]:
    """authoritative(), for the reverse zone of 192.0.2.0/24 too (PTR records)."""
    return [f"{option},192.0.2.0/24" if option.startswith("--auth-zone=") else option
            for option in authoritative(ttl=ttl)]


@pytest.fixture(scope="module")
def dns():
    with Dnsmasq([*zone_options(), *ZONE], zones=()) as server:
        yield server


def refused(**options) -> str:
    with pytest.raises(ConfigError) as error:
        load_plugin("spf", NOWHERE, **options)
    return str(error.value)


def result_of(headers: dict[str, str]) -> str:
    return headers["Received-SPF"].split(" ", 1)[0]


def settings_id(options: dict) -> str:
    return ",".join(f"{key}={value}" for key, value in options.items())


# -- settings: the last value accepted, and the first refused, with the key named ----------

@pytest.mark.parametrize("options", [
    {"timeout": 300},
    {"timeout": 300, "check_timeout": 120},
    {"threads": 1},
    {"threads": 64},
    {"result_cache_ttl": 0},
    {"result_cache_ttl": 3600},
    {"result_cache_entries": 1},
], ids=settings_id)
def test_the_widest_settings_are_accepted(options):
    # A configuration that writes out a documented extreme (a five-minute hook for a
    # resolver that is slow on purpose, a single thread, a cache of one result or of an
    # hour) must load, not stop the proxy at start-up.
    load_plugin("spf", NOWHERE, **options)  # raises ConfigError if refused


BEYOND = [
    ({"timeout": 301}, "Input should be less than or equal to 300"),
    ({"timeout": 0}, "Input should be greater than 0"),
    ({"timeout": 300, "check_timeout": 121}, "Input should be less than or equal to 120"),
    ({"check_timeout": 0}, "Input should be greater than 0"),
    ({"threads": 0}, "Input should be greater than or equal to 1"),
    ({"threads": 65}, "Input should be less than or equal to 64"),
    ({"result_cache_ttl": 3601}, "Input should be less than or equal to 3600"),
    ({"result_cache_entries": 0}, "Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize("options, message", BEYOND, ids=[settings_id(options) for options, _ in BEYOND])
def test_settings_just_beyond_them_are_refused(options, message):
    # No thread to run a check in, an evaluation of no time, or a cache of no results
    # is a typo: `mailproxy check` must say which key is wrong rather than load a check
    # that can never answer.
    key = list(options)[-1]  # the key refused; any other is one the refused value needs
    assert refused(**options) == f"config: plugin.spf.{key}: {message}"


@pytest.mark.parametrize("options, timeout", [
    ({"check_timeout": 9.0, "timeout": 10.0}, "10"),  # exactly one second before: not enough
    ({"check_timeout": 0.5, "timeout": 1.0}, "1"),  # a one-second hook has no room for any
    ({"check_timeout": 14.0}, "15"),  # the hook's own limit is 15 s when not set
], ids=["9-of-10", "0.5-of-1", "14-of-default"])
def test_check_timeout_must_end_more_than_a_second_before_timeout(options, timeout):
    # The second is the grace a slow last lookup gets before the check counts as a
    # temperror; a check_timeout without it would let the hook's timeout cut the check
    # off, and the message would get the plugin's fail_mode instead of on_temperror.
    assert refused(**options) == (
        f"config: plugin.spf.check_timeout: must end at least 1s before timeout ({timeout})"
    )


@pytest.mark.parametrize("options", [
    {"check_timeout": 8.9, "timeout": 10.0},
    {"check_timeout": 13.9},  # under the default timeout of 15 s
], ids=settings_id)
def test_a_check_timeout_more_than_a_second_before_timeout_is_accepted(options):
    load_plugin("spf", NOWHERE, **options)  # raises ConfigError if refused


# -- the documented defaults --------------------------------------------------------------

def test_without_on_softfail_a_softfail_scores_1_point(dns):
    # docs/plugins.md: on_softfail = 1.0. A softfail is a domain saying "probably not
    # us": a point toward reject_score, half of a fail's, never a refusal by itself.
    plugin = load_plugin("spf", dns.address)
    verdict, _ = mail(plugin, "a@soft.test", OTHER)
    assert (verdict.action, verdict.symbol, verdict.points) == (Action.SCORE, "SPF_SOFTFAIL", 1.0)


def test_without_result_cache_ttl_a_result_is_reused_for_60_seconds(dns):
    # docs/plugins.md: result_cache_ttl = 60. A change of a sender domain's policy
    # takes effect within a minute; the messages of that minute cost one evaluation.
    plugin = load_plugin("spf", dns.address)
    plugin.clock = clock = Clock()
    mail(plugin, "a@pass.test", CLIENT)
    timed = timings("mailfrom")
    clock.now += 59.5
    mail(plugin, "a@pass.test", CLIENT)
    assert timings("mailfrom") == timed  # reused
    clock.now += 0.5  # 60 s after the evaluation: evaluated again
    mail(plugin, "a@pass.test", CLIENT)
    assert timings("mailfrom") == timed + 1


@pytest.fixture
def silent_dns():
    """The address of a DNS server that never answers: a UDP socket nobody reads."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield "127.0.0.1:%d" % sock.getsockname()[1]


async def mail_at_once(first, senders: list[str]) -> list:
    """MAIL FROM each of `senders` at once, each on a connection of its own to the proxy
    of session `first`; the replies."""
    sessions = [first, *(first.new_session() for _ in senders[1:])]

    async def mail_from(session, sender):
        await session.connect(CLIENT)
        await session.ehlo("helo.test")
        return await session.mail(sender)

    return await asyncio.gather(*(mail_from(s, sender) for s, sender in zip(sessions, senders)))


def test_without_threads_eight_checks_run_at_once_and_a_ninth_waits_within_check_timeout(silent_dns):
    # docs/plugins.md: threads = 8, "more wait for a thread, within their
    # check_timeout". While a sender's DNS does not answer, eight evaluations wait on it
    # at once, each a temperror of pyspf's after check_timeout. A ninth waits for a
    # thread, and when none comes free within its check_timeout (and the second of
    # grace) it is a temperror of the plugin's own: still the on_temperror action
    # (tempfail here), never a failure of the plugin.
    first = policy_session("spf", {"on_temperror": "tempfail", "check_timeout": 2.0},
                           config={"dns": {"servers": [silent_dns]}})
    replies = asyncio.run(mail_at_once(first, [f"a{n}@pass.test" for n in range(9)]))
    assert [(r.code, r.enhanced) for r in replies] == [(451, "4.7.24")] * 9, [r.lines for r in replies]
    waited = [r.text for r in replies if "(no answer within" in r.text]  # the others: pyspf's text
    assert waited == ["SPF temporary error: error in processing during lookup of pass.test (no answer within 2s)"]


def test_without_check_timeout_a_check_waits_ten_seconds_for_a_thread(silent_dns):
    # docs/plugins.md: check_timeout = 10.0. With one thread held by a check whose DNS
    # does not answer, the next check waits for it 10 s (and the second of grace), and
    # then the message gets on_temperror. This takes 11 seconds.
    first = policy_session("spf", {"on_temperror": "tempfail", "threads": 1},
                           config={"dns": {"servers": [silent_dns]}})
    _, waiting = asyncio.run(mail_at_once(first, ["a@pass.test", "b@pass.test"]))
    assert waiting.lines == [
        "451 4.7.24 SPF temporary error: error in processing during lookup of pass.test (no answer within 10s)"
    ]


def test_without_settings_the_caches_keep_10000_results_and_10000_dns_answers():
    # docs/plugins.md: result_cache_entries = 10000, the least recently used going
    # first; and the plugin's resolver keeps 10000 DNS answers the same way. A busy
    # minute of mail from many senders must neither grow the proxy without bound nor
    # drop what the next message needs. This makes 10,006 evaluations (about 12 s).
    entries = 10000
    with Dnsmasq(zone_options(), zones=()) as server:  # every dN.test: NXDOMAIN, cached 300 s
        plugin = load_plugin("spf", server.address, check_timeout=1.0)  # temperrors come soon
        plugin.clock = Clock()  # no result expires

        async def check(sender: str) -> tuple[bool, str]:
            """Whether the check was evaluated (not reused), and its result."""
            timed = timings("mailfrom")
            envelope = sender_envelope(sender)
            await plugin.smtp_mail(session=client_session(CLIENT, helo="helo.test"), envelope=envelope,
                                   address=sender)
            return timings("mailfrom") == timed + 1, result_of(dict(envelope.added_headers))

        async def steps():
            timed = timings("mailfrom")
            for number in range(entries):  # both caches full: d0 the least recently used
                sender = f"a@d{number}.test"
                await plugin.smtp_mail(session=client_session(CLIENT, helo="helo.test"),
                                       envelope=sender_envelope(sender), address=sender)
            assert timings("mailfrom") == timed + entries
            # A new check: evaluated, its result pushes out a@d0's; d0's answer is used.
            assert await check("b@d0.test") == (True, "none")
            assert await check("a@d1.test") == (False, "none")  # the 10000th result back: kept
            assert await check("a@d0.test") == (True, "none")  # the one pushed out
            # A new domain's answer pushes out the least recently used one, d1's.
            assert await check(f"a@d{entries}.test") == (True, "none")
            server.stop()
            assert await check("b@d1.test") == (True, "temperror")  # asked again: no answer now
            assert await check("b@d2.test") == (True, "none")  # the answer kept

        asyncio.run(steps())


# -- what the DNS says, as pyspf needs it ------------------------------------------------------

def test_the_ptr_mechanism_passes_a_client_whose_name_is_in_the_domain(dns):
    # "v=spf1 ptr -all": the client's PTR name, confirmed by its address, must be the
    # domain or a name under it. A name handed to pyspf with the DNS's final dot would
    # never match, and every such domain's mail would fail.
    plugin = load_plugin("spf", dns.address, result_cache_ttl=0)
    assert result_of(mail(plugin, "a@ptr.test", PTR_CLIENT)[1]) == "pass"
    assert result_of(mail(plugin, "a@ptr.test", OTHER)[1]) == "fail"  # no PTR name at all


# -- the longest texts ------------------------------------------------------------------------

def test_a_refusal_text_is_cut_at_400_characters(dns):
    # The reply names the domain and quotes its exp= text, both the domain owner's: cut
    # to 400 characters (with "..."), the reply line stays within SMTP's 512.
    plugin = load_plugin("spf", dns.address, on_fail="reject", result_cache_ttl=0)
    verdict, _ = mail(plugin, f"a@{LONG_DOMAIN}", OTHER)
    whole = (f"SPF fail: domain of {LONG_DOMAIN} does not designate {OTHER} as permitted sender "
             f"({EXPLANATION})")
    assert len(whole) > 400
    assert verdict.reply.text == whole[:397] + "..."
    assert verdict.reply.lines() == [f"550 5.7.23 {whole[:397]}..."]


def test_the_header_values_are_cut_at_255_characters(dns):
    # The sender and the domain come from the client and the DNS: a value, and the
    # comment, are cut to 255 characters (a domain's limit) so the header lines stay
    # short, and what is left is still shown unquoted when it is a plain address.
    plugin = load_plugin("spf", dns.address, result_cache_ttl=0)
    sender = f"postmaster@{LONG_DOMAIN}"
    assert len(sender) == 264
    _, headers = mail(plugin, sender, CLIENT)
    comment = f"domain of {LONG_DOMAIN} does not designate {CLIENT} as permitted sender"
    assert headers == {
        "Received-SPF": (f"fail (proxy.test: {comment[:255]}) client-ip={CLIENT}; envelope-from={sender[:255]}; "
                         "helo=helo.test; receiver=proxy.test; identity=mailfrom"),
        "Authentication-Results": f"proxy.test; spf=fail smtp.mailfrom={sender[:255]}",
    }
    assert sender[:255].endswith("d")  # cut inside the last label, not after a dot


# -- the proxy calls it ------------------------------------------------------------------------

def test_the_proxy_checks_spf_at_mail_from(dns):
    # The tests call the hook's method directly; the proxy knows it only through the
    # hook, as the policy engine runs it: a refused MAIL FROM, and the header lines on
    # the message that passed.
    first = policy_session("spf", {"on_fail": "reject"}, config={"dns": {"servers": [dns.address]}})

    async def steps():
        await first.connect(OTHER)
        await first.ehlo("helo.test")
        refusal = await first.mail("a@pass.test")
        session = first.new_session()
        await session.connect(CLIENT)
        await session.ehlo("helo.test")
        await session.mail("a@pass.test")
        await session.rcpt("bob@example.test")
        return refusal, await session.data(b"Subject: hello\r\n\r\nHello.\r\n")

    refusal, delivered = asyncio.run(steps())
    assert refusal.lines == [f"550 5.7.23 SPF fail: domain of pass.test does not designate {OTHER} as "
                             "permitted sender (SPF fail - not authorized)"]
    assert delivered.code == 250
    assert delivered.message.startswith(
        f"Received-SPF: pass (proxy.test: domain of pass.test designates {CLIENT} as permitted sender) "
        f"client-ip={CLIENT}; envelope-from=a@pass.test; helo=helo.test; ".encode()
    )
    assert b"\r\nAuthentication-Results: proxy.test; spf=pass smtp.mailfrom=a@pass.test\r\n" in delivered.message
