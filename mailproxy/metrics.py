"""Every Prometheus metric mailproxy exports, defined in this one module.

Dashboards and alert rules are written against these names; change one only together
with grafana/. Label values come from small closed sets (verbs outside the known list
are counted as OTHER) so that a hostile client cannot grow the series count.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from . import __version__
# First: its collector must precede every metric. Counters bumped several times per
# message or session are counted through `deferred`.
from .deferred_counts import deferred


@dataclass(frozen=True)
class MetricInfo:
    """One exported metric as the reference documentation and the dashboards' tests
    see it: its exposed name, type, help text and label names."""

    name: str
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...]


CATALOGUE: list[MetricInfo] = []


def _describe(kind: str, name: str, documentation: str, labels: list[str]) -> MetricInfo:
    """A metric in the catalogue only: one a custom collector exposes at scrape time."""
    info = MetricInfo(name, kind, documentation, tuple(labels))
    CATALOGUE.append(info)
    return info


def _define(kind: type, name: str, documentation: str, labels: list[str], **options: Any):
    _describe(kind.__name__.lower(), name, documentation, labels)
    return kind(name, documentation, labels, **options)


# Round trips to a local upstream take well under a millisecond; a remote one or a
# content scan may take seconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

KNOWN_SMTP_VERBS = frozenset(
    "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP VRFY EXPN QUIT AUTH STARTTLS HELP".split()
)

connections = _define(
    Counter,
    "mailproxy_connections_total",
    "Client connections accepted.",
    ["protocol", "listener"],
)
connections_refused = _define(
    Counter,
    "mailproxy_connections_refused_total",
    "Client connections turned away with 421 by an admission limit "
    "(reason=per_client: too many from one address; total: the listener is full).",
    ["protocol", "listener", "reason"],
)
sessions_active = _define(
    Gauge,
    "mailproxy_sessions_active",
    "Client sessions open now.",
    ["protocol", "listener"],
    multiprocess_mode="livesum",
)
commands = _define(
    Counter,
    "mailproxy_commands_total",
    "Client commands received, by verb (unknown verbs as OTHER).",
    ["protocol", "listener", "verb"],
)
replies = _define(
    Counter,
    "mailproxy_replies_total",
    "Replies sent to clients, by class (SMTP: 2xx, 3xx, 4xx, 5xx; POP3: ok, err; IMAP, tagged "
    "replies and BYE: ok, no, bad, bye) and origin "
    "(upstream: relayed unchanged; proxy: written by mailproxy or a plugin).",
    ["protocol", "listener", "class", "origin"],
)
tls_handshakes = _define(
    Counter,
    "mailproxy_tls_handshakes_total",
    "TLS handshakes with clients, by mode (starttls, implicit), result (success, failure) "
    "and the protocol version agreed (TLSv1.2, TLSv1.3; none when the handshake failed). "
    "A failed implicit-TLS handshake is not seen: the event loop drops the connection "
    "before a session exists, so implicit failures always read 0.",
    ["protocol", "listener", "mode", "result", "version"],
)
tls_certificate_expiry = _define(
    Gauge,
    "mailproxy_tls_certificate_expiry_timestamp_seconds",
    "When the certificate a listener presents to clients expires (Unix time).",
    ["listener"],
    # Set by the process that loads the configuration; a worker's copy reads 0.
    multiprocess_mode="max",
)
# Symbols are a plugin's words; a plugin that makes them up per message must not make
# the metric grow without bound.
SYMBOLS_PER_PLUGIN = 100
_symbol_children: dict[tuple[str, str, str], Any] = {}
_symbols_seen: dict[str, set[str]] = {}

verdicts = _define(
    Counter,
    "mailproxy_verdicts_total",
    "Plugin verdicts other than continue; enforced=false for observe mode.",
    ["plugin", "hook", "action", "enforced"],
)
symbols = _define(
    Counter,
    "mailproxy_symbols_total",
    "Verdicts that named a symbol (a rule that matched), by plugin and symbol; past "
    f"{SYMBOLS_PER_PLUGIN} distinct symbols of one plugin, the rest count as OTHER.",
    ["plugin", "symbol", "enforced"],
)
plugin_errors = _define(
    Counter,
    "mailproxy_plugin_errors_total",
    "Plugin calls that raised (kind=exception), ran past their timeout (kind=timeout) or "
    "returned something other than a verdict (kind=bad_result).",
    ["plugin", "hook", "kind"],
)
plugin_duration = _define(
    Histogram,
    "mailproxy_plugin_duration_seconds",
    "Time spent in each plugin hook call.",
    ["plugin", "hook"],
    buckets=_LATENCY_BUCKETS,
)
plugin_threads_busy = _define(
    Gauge,
    "mailproxy_plugin_threads_busy",
    "Threads of a blocking plugin running a hook call now, out of its 8; one held by a "
    "call that timed out stays busy until the plugin returns.",
    ["plugin"],
    multiprocess_mode="livesum",
)
# The shipped checks (plugins/): label values come from their code and configuration,
# never from a client (no addresses, no names).
plugin_checks = _define(
    Counter,
    "mailproxy_plugin_checks_total",
    "Results of the shipped checks: plugin=spf (check=mailfrom or helo, result=the SPF "
    "result), dnsbl (check=the list's zone, result=listed, not_listed, error), helo "
    "(check=helo, result=valid, error or the name of the check the HELO name failed), "
    "greylist (check=triplet, result=new, early, passed, known, state_error), ratelimit "
    "(check=the limit, e.g. client_messages, result=within, over).",
    ["plugin", "check", "result"],
)
plugin_check_duration = _define(
    Histogram,
    "mailproxy_plugin_check_duration_seconds",
    "Time one check waited for something outside the process: an SPF evaluation, a DNS "
    "query of a list's or a HELO name's check, a round trip to Redis (answers from a cache "
    "or the memory state are not timed).",
    ["plugin", "check"],
    buckets=_LATENCY_BUCKETS,
)
state_errors = _define(
    Counter,
    "mailproxy_state_errors_total",
    "Shared-state operations that failed (the backend unreachable, timed out or refusing "
    "the command); each caller's fail mode applied instead (operation=incr, get, set, add, "
    "delete, incr_and_get).",
    ["backend", "operation"],
)
auth_attempts = _define(
    Counter,
    "mailproxy_auth_attempts_total",
    "Login attempts (SMTP AUTH; POP3 USER/PASS and AUTH; IMAP LOGIN and AUTHENTICATE) by "
    "result (success, failure, throttled, refused, aborted, error).",
    ["protocol", "listener", "mechanism", "result"],
)
auth_delay = _define(
    Histogram,
    "mailproxy_auth_delay_seconds",
    "Pauses before AUTH answers earned by earlier failures (reason=network: of the "
    "client's network, before checking; account: of the account, before a wrong answer).",
    ["listener", "reason"],
    buckets=(0.5, 1, 2, 4, 8, 15, 30, 60),
)
upstream_duration = _define(
    Histogram,
    "mailproxy_upstream_duration_seconds",
    "Round trip of one command to the upstream, until its complete reply.",
    ["upstream", "command"],
    buckets=_LATENCY_BUCKETS,
)
upstream_connect_duration = _define(
    Histogram,
    "mailproxy_upstream_connect_duration_seconds",
    "Time to open an upstream session: the TCP connection and, for implicit TLS, the "
    "handshake.",
    ["upstream"],
    buckets=_LATENCY_BUCKETS,
)
# Exposed by proxy/health.py's collector from the last probes, at scrape time: the
# probes run in a thread, and a thread must not write a multiprocess metric of a
# process that forks workers.
upstream_up = _describe(
    "gauge",
    "mailproxy_upstream_up",
    "Whether the last readiness probe reached the upstream (1) or not (0); probes run "
    "every metrics.upstream_probe_interval seconds.",
    ["upstream"],
)
upstream_failures = _define(
    Counter,
    "mailproxy_upstream_failures_total",
    "Upstream sessions that failed, by stage: connect, greeting, tls, timeout (no reply in "
    "time), lost (the connection closed), protocol (a reply that breaks the protocol), auth "
    "(the service login, or a login refused for a passing reason), identity (ID refused), "
    "xclient (XCLIENT refused).",
    ["upstream", "stage"],
)
upstream_identity_missing = _define(
    Counter,
    "mailproxy_upstream_identity_missing_total",
    "Upstream sessions that could not be told the client's identity: the upstream does "
    "not offer XCLIENT (SMTP, and POP3 from an untrusted address) or ID (IMAP).",
    ["upstream"],
)
relayed_bytes = _define(
    Counter,
    "mailproxy_relayed_bytes_total",
    "Bytes a POP3 or IMAP session relayed after the login, by direction (to_upstream: "
    "the client's commands and uploads; to_client: the upstream's responses).",
    ["protocol", "listener", "direction"],
)
messages = _define(
    Counter,
    "mailproxy_messages_total",
    "Messages at end-of-data, by outcome (delivered, rejected, tempfailed; unknown: the "
    "upstream never answered the end of the message, it may have taken it).",
    ["listener", "outcome"],
)
message_bytes = _define(
    Histogram,
    "mailproxy_message_size_bytes",
    "Size of the messages received from clients.",
    ["listener"],
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)


spam_score = _define(
    Histogram,
    "mailproxy_spam_score",
    "The final score of each message at the action stage (which runs when a [policy] "
    "threshold is set); negative scores (a welcome list's) fall in the le=0 bucket.",
    ["listener"],
    # No negative bucket: prometheus_client drops _sum from a histogram that has one.
    buckets=(0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30, 50),
)
dns_query_duration = _define(
    Histogram,
    "mailproxy_dns_query_duration_seconds",
    "DNS queries, by record type and result (answer, nxdomain, nodata, error). Answers "
    "the shipped checks take from their cache are not queries (see "
    "mailproxy_dns_cache_lookups_total); client-name lookups the resolver answers from "
    "its own cache are.",
    ["type", "result"],
    buckets=_LATENCY_BUCKETS,
)
dns_cache_lookups = _define(
    Counter,
    "mailproxy_dns_cache_lookups_total",
    "Lookups of the shipped checks' DNS cache, by result (hit, miss).",
    ["result"],
)
build_info = _define(
    Gauge,
    "mailproxy_build_info",
    "Always 1; the labels say which mailproxy and which Python run.",
    ["version", "python"],
    multiprocess_mode="max",
)


UPSTREAM_FAILURE_STAGES = ("connect", "greeting", "tls", "timeout", "lost", "protocol", "auth", "identity", "xclient")
PLUGIN_ERROR_KINDS = ("exception", "timeout", "bad_result")
STATE_OPERATIONS = ("incr", "get", "set", "add", "delete")
MESSAGE_OUTCOMES = ("delivered", "rejected", "tempfailed", "unknown")


def declare_series(
    smtp_listeners: list[str], upstreams: list[str], plugin_hooks: dict[str, list[str]], state_backend: str | None,
) -> None:
    """Create at 0 the counter series that alert rules take rates of. Prometheus sees a
    series from its first sample on, so the first failure of a kind that had no series
    before would not count in rate() or increase(): the first plugin timeout after a
    start would go unnoticed."""
    for listener in smtp_listeners:
        for outcome in MESSAGE_OUTCOMES:
            messages.labels(listener, outcome)
    for upstream in upstreams:
        for stage in UPSTREAM_FAILURE_STAGES:
            upstream_failures.labels(upstream, stage)
    for plugin, hooks in plugin_hooks.items():
        for hook in hooks:
            for kind in PLUGIN_ERROR_KINDS:
                plugin_errors.labels(plugin, hook, kind)
    if state_backend is not None:
        for operation in STATE_OPERATIONS:
            state_errors.labels(state_backend, operation)


def announce_build() -> None:
    build_info.labels(__version__, platform.python_version()).set(1)


def smtp_verb_label(verb: str) -> str:
    return verb if verb in KNOWN_SMTP_VERBS else "OTHER"


KNOWN_POP3_VERBS = frozenset(
    "USER PASS APOP AUTH STLS CAPA STAT LIST RETR DELE NOOP RSET QUIT TOP UIDL".split()
)


def pop3_verb_label(verb: str) -> str:
    return verb if verb in KNOWN_POP3_VERBS else "OTHER"


def pop3_reply_counter(listener: str, ok: bool, origin: str):
    """POP3 replies have no code: their class is "ok" (+OK) or "err" (-ERR)."""
    return deferred(replies, "pop3", listener, "ok" if ok else "err", origin)


KNOWN_IMAP_VERBS = frozenset(
    "CAPABILITY NOOP LOGOUT STARTTLS AUTHENTICATE LOGIN ID ENABLE SELECT EXAMINE CREATE DELETE "
    "RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB NAMESPACE STATUS APPEND IDLE CHECK CLOSE UNSELECT "
    "EXPUNGE SEARCH FETCH STORE COPY MOVE GETQUOTAROOT GETQUOTA SETQUOTA GETACL SETACL MYRIGHTS "
    "GETMETADATA SETMETADATA COMPRESS NOTIFY ESEARCH SORT THREAD".split()
) | {"UID FETCH", "UID STORE", "UID COPY", "UID MOVE", "UID SEARCH", "UID EXPUNGE", "UID SORT", "UID THREAD"}


def imap_verb_label(verb: str) -> str:
    return verb if verb in KNOWN_IMAP_VERBS else "OTHER"


def imap_reply_counter(listener: str, status: str, origin: str):
    """IMAP replies counted are the tagged ones, by status ("ok", "no", "bad"), and BYE."""
    return deferred(replies, "imap", listener, status.lower(), origin)


def reply_class(code: int) -> str:
    return f"{code // 100}xx"


@functools.cache
def child(metric, *label_values: str):
    """`metric.labels(*label_values)`, memoised: label lookup is the costliest part of
    counting on the hot path, and the label sets are small and closed."""
    return metric.labels(*label_values)


@functools.cache
def reply_counter(protocol: str, listener: str, code: int, origin: str):
    """The `replies` child for one reply code: one lookup per reply on the hot path
    (codes are 200..599, a closed set)."""
    return deferred(replies, protocol, listener, reply_class(code), origin)


def symbol_counter(plugin: str, symbol: str, enforced: str):
    """The `symbols` child for this plugin's symbol, or its OTHER child once the
    plugin has shown SYMBOLS_PER_PLUGIN distinct symbols."""
    key = (plugin, symbol, enforced)
    counter = _symbol_children.get(key)
    if counter is None:
        seen = _symbols_seen.setdefault(plugin, set())
        if symbol not in seen and len(seen) >= SYMBOLS_PER_PLUGIN:
            return child(symbols, plugin, "OTHER", enforced)
        seen.add(symbol)
        counter = _symbol_children[key] = symbols.labels(plugin, symbol, enforced)
    return counter
