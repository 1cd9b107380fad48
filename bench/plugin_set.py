"""What the mailproxy-plugins target of smtp_throughput.py needs beside a mailproxy.

Every shipped filtering plugin is enabled (but pregreet, which delays every greeting by
design), configured so that each does its full work for every message and lets it
through:
- the DNS its checks ask: a dnsmasq on loopback, authoritative for the zone `example`
  (tests/support/dnsmasq.py), holding the sender domain's SPF record and the HELO
  names' A records; its block list and domain list list neither 127.0.0.1 nor the
  sender domain, and their "no such name" carries the zone's SOA, so it is cached;
- the plugins' settings and `[policy]` (mailproxy-plugins.toml.in, appended to the
  bench's config); `headers` has an `smtp_data` hook, so the proxy takes every message
  whole;
- a greylist that already knows the bench's triplet: `prime` runs sessions until a
  whole pass of them is accepted (the first attempt in each worker is deferred, its
  retry after the short `delay` passes), which also fills every worker's DNS caches;
- the proof that the checks ran: the proxy's /metrics read before and after each run,
  once the workers have added their counts to it (`Evidence`), and dnsmasq's query log, which must stay silent once the caches are warm.
"""

from __future__ import annotations

import re
import smtplib
import string
import sys
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # for tests.support

from mailproxy.deferred_counts import FLUSH_INTERVAL  # noqa: E402
from tests.support.dnsmasq import Dnsmasq, authoritative  # noqa: E402

FRAGMENT = BENCH_DIR / "mailproxy-plugins.toml.in"
PLUGINS = ["access", "spf", "dnsbl", "helo", "greylist", "ratelimit", "headers"]  # in hook order

ZONE = "example"  # every name the checks ask for is in it; any other is refused
BLOCK_LIST = "bl.bench.example"
DOMAIN_LIST = "dbl.bench.example"
DNS_TTL = 3600  # records and "no such name" alike: nothing expires during a run
GREYLIST_DELAY = 1.0  # seconds before a retry passes
RATE_LIMIT = 100_000_000  # events per minute: counted, never reached

PRIME_PASSES = 5  # bounds of the priming: passes, sessions per pass, seconds per reply
PRIME_SESSIONS = 20
PRIME_IO_TIMEOUT = 10.0

# A query in dnsmasq's log (--log-queries): "auth[A] NAME from 127.0.0.1" for a name
# in its zone, "query[A] ..." for any other.
DNS_QUERY = re.compile(r"\b(?:auth|query)\[\w+\] \S+ from ")

# What each message adds to mailproxy_plugin_checks_total: one result of each check
# (one session, one message, one recipient), one that lets the message through. Any
# other result is a failure: a deferral, an SPF fail, a DNS error, a limit reached.
PASSING = {
    ("spf", "mailfrom"): ("pass",),
    ("dnsbl", BLOCK_LIST): ("not_listed",),
    ("dnsbl", DOMAIN_LIST): ("not_listed",),
    ("helo", "helo"): ("valid",),
    # "passed": the first retry after the delay, in a worker the priming's last pass
    # happened to miss.
    ("greylist", "triplet"): ("known", "passed"),
    **{("ratelimit", limit): ("within",) for limit in (
        "client_connections", "client_messages", "client_recipients",
        "sender_domain_messages", "sender_domain_recipients")},
    # The message parsed (with defects or without) and no rule matched: nothing else
    # counted, since a match counts under its symbol and a limit reached under "limit".
    ("headers", "parse"): ("clean", "defects"),
}


class PrimeError(Exception):
    """The greylist could not be primed: a reply other than its deferral, or no pass
    accepted whole within the bounds."""


@dataclass
class Snapshot:
    """The proxy's plugin counters and dnsmasq's query count at one moment."""

    checks: Counter  # (plugin, check, result) -> mailproxy_plugin_checks_total
    calls: Counter  # plugin -> hook calls (mailproxy_plugin_duration_seconds_count)
    errors: Counter  # (plugin, hook, kind) -> mailproxy_plugin_errors_total
    dns_queries: int


@dataclass
class Evidence:
    """What the runs after priming added up to, for the sanity line."""

    runs: int = 0
    messages: int = 0
    passed: Counter = field(default_factory=Counter)  # (plugin, check) -> passing results
    calls: Counter = field(default_factory=Counter)
    dns_queries: int = 0
    failed_runs: int = 0

    def summary(self) -> str:
        checks = ", ".join(f"{plugin} {check} {'/'.join(results)} {self.passed[plugin, check]}"
                           for (plugin, check), results in PASSING.items())
        calls = ", ".join(f"{plugin} {self.calls[plugin]}" for plugin in PLUGINS)
        state = (f"FAILED in {self.failed_runs} run(s): see above" if self.failed_runs
                 else "ok: every check ran once per message and let it through")
        return (f"{self.runs} runs, {self.messages} messages; {state}\n"
                f"    checks: {checks}\n"
                f"    hook calls: {calls}\n"
                f"    DNS queries that reached dnsmasq: {self.dns_queries}")


class PluginSet:
    """The DNS server, the configuration and the evidence of the mailproxy-plugins target."""

    def __init__(self) -> None:
        self.evidence = Evidence()
        self._dns: Dnsmasq | None = None
        self._resources = ExitStack()

    def start_dns(self, sender_domain: str, helo_names: tuple[str, ...]) -> None:
        for name in (sender_domain, *helo_names):
            if not name.endswith(f".{ZONE}"):
                raise ValueError(f"{name} is outside the bench's DNS zone {ZONE}")
        records = [
            f"--txt-record={sender_domain},v=spf1 ip4:127.0.0.1 -all",
            *(f"--host-record={name},127.0.0.1" for name in helo_names),
        ]
        options = [*authoritative(ZONE, ttl=DNS_TTL), *records, "--log-queries"]
        server = Dnsmasq(options, zones=())
        # Stopped even if it starts but never answers (stopping twice is harmless).
        self._resources.callback(server.stop)
        self._dns = self._resources.enter_context(server)

    @property
    def dns_address(self) -> str:
        return self._dns.address if self._dns else "-"

    def config(self) -> str:
        """The plugins' sections, to append to the bench's mailproxy config."""
        return string.Template(FRAGMENT.read_text()).substitute(
            dns_server=self._dns.address, block_list=BLOCK_LIST, domain_list=DOMAIN_LIST,
            greylist_delay=GREYLIST_DELAY, rate_limit=RATE_LIMIT,
        )

    def prime(self, port: int, sender: str, recipient: str, helo_names: tuple[str, ...],
              message: bytes) -> str:
        """Sessions until a whole pass is accepted; what it took, in words. Each session
        says EHLO with every HELO name, so its worker caches the lookups of them all."""
        deferred = 0
        for attempt in range(1, PRIME_PASSES + 1):
            refused = sum(not _delivered(port, sender, recipient, helo_names, message)
                          for _ in range(PRIME_SESSIONS))
            if not refused:
                return (f"{attempt} pass{'es' * (attempt > 1)} of {PRIME_SESSIONS} sessions, "
                        f"{deferred} deferred by the greylist before every worker knew the triplet")
            deferred += refused
            time.sleep(GREYLIST_DELAY + 0.2)
        raise PrimeError(f"still greylisted after {PRIME_PASSES} passes of {PRIME_SESSIONS} sessions")

    def snapshot(self, metrics_port: int) -> Snapshot:
        # A worker adds its checks' counts to the scrape once a second: wait for the
        # last run's to be in, or they would count for the next run.
        time.sleep(FLUSH_INTERVAL + 0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        checks, calls, errors = Counter(), Counter(), Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                value = int(sample.value)  # counts, which the text format writes as 3.0
                if sample.name == "mailproxy_plugin_checks_total":
                    checks[labels["plugin"], labels["check"], labels["result"]] += value
                elif sample.name == "mailproxy_plugin_duration_seconds_count":
                    calls[labels["plugin"]] += value
                elif sample.name == "mailproxy_plugin_errors_total":
                    errors[labels["plugin"], labels["hook"], labels["kind"]] += value
        return Snapshot(checks, calls, errors, len(DNS_QUERY.findall(self._dns.log())))

    def check_run(self, before: Snapshot, after: Snapshot, messages: int) -> str:
        """Why a run of `messages` sessions does not count ('' if every plugin did its
        work once per message, let it through, and no lookup left the caches)."""
        checks, calls = after.checks - before.checks, after.calls - before.calls
        errors = after.errors - before.errors
        queries = after.dns_queries - before.dns_queries
        passed, problems = Counter(), []
        for (plugin, check, result), n in checks.items():
            if result in PASSING.get((plugin, check), ()):
                passed[plugin, check] += n
            else:
                problems.append(f"{plugin} {check} {result} +{n}")
        problems += [f"{plugin} {check} {'/'.join(results)} +{passed[plugin, check]} of {messages}"
                     for (plugin, check), results in PASSING.items() if passed[plugin, check] < messages]
        problems += [f"{plugin}: {calls[plugin]} hook calls for {messages} messages"
                     for plugin in PLUGINS if calls[plugin] < messages]
        problems += [f"plugin {' '.join(key)} errors +{n}" for key, n in errors.items()]
        if queries:
            problems.append(f"{queries} DNS queries reached dnsmasq: the caches were not warm")
        evidence = self.evidence
        evidence.runs += 1
        evidence.messages += messages
        evidence.passed.update(passed)
        evidence.calls.update(calls)
        evidence.dns_queries += queries
        if problems:
            evidence.failed_runs += 1
            return "the plugins did not all run and pass: " + "; ".join(problems)
        return ""

    def stop(self) -> None:
        self._resources.close()


def _delivered(port: int, sender: str, recipient: str, helo_names: tuple[str, ...],
               message: bytes) -> bool:
    """One session; False when the greylist deferred the recipient."""
    with smtplib.SMTP("127.0.0.1", port, timeout=PRIME_IO_TIMEOUT) as client:
        for name in helo_names:  # the last one stays the session's HELO name
            code, text = client.ehlo(name)
            if code != 250:
                raise PrimeError(f"EHLO {name}: {code} {text.decode(errors='replace')}")
        try:
            client.sendmail(sender, [recipient], message)
        except smtplib.SMTPRecipientsRefused as exc:
            [(code, text)] = exc.recipients.values()
            if code == 450 and b"Greylisted" in text:
                return False
            raise PrimeError(f"RCPT: {code} {text.decode(errors='replace')}") from None
        except smtplib.SMTPException as exc:
            raise PrimeError(f"{type(exc).__name__}: {exc}") from None
    return True
