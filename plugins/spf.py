"""spf: Sender Policy Framework (RFC 7208) for the envelope sender.

    [plugin.spf]
    on_fail = 2.0           # each result: "reject", "tempfail", "off" or points
    on_softfail = 1.0
    check_timeout = 10.0    # seconds for one whole SPF evaluation
    result_cache_ttl = 60   # seconds a result is reused for the same check; 0: never

At MAIL FROM the client's address is checked against the SPF policy of the sender's
domain, or of its HELO name for the null sender (RFC 7208 2.4). pyspf does the work
and asks the servers of `[dns]`. Each result does what its `on_<result>` option says,
and the message gets `Received-SPF` (RFC 7208 9.1) and `Authentication-Results`
(RFC 8601) header lines. Authenticated sessions are not checked.

pyspf is synchronous: each evaluation runs in one of this plugin's own `threads`
(daemon threads, counted in `mailproxy_plugin_threads_busy{plugin="spf"}`) and keeps
to `check_timeout` by itself, so neither the event loop nor a thread waits longer on a
slow DNS.

A result is reused for `result_cache_ttl` seconds by the checks of the very same client
address, MAIL FROM address (letter case included) and HELO name: the messages of a
mailing list or of a regular correspondent are evaluated once a minute, not once each.
That is sound because a result depends on those three and on the DNS alone, and the DNS
answers would be reused anyway (the resolver keeps them for their TTL); a change of
the sender domain's policy takes effect within `result_cache_ttl`. A temperror is never
reused: the next message asks again. Each message still gets its own header lines and
counts its result; mailproxy_plugin_check_duration_seconds times evaluations only, so
its count against mailproxy_plugin_checks_total shows how many results were reused.
At most `result_cache_entries` results are kept, the least recently used go first.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

import dns.exception
import dns.resolver
import spf as pyspf
from pydantic import Field, ValidationInfo, field_validator

from mailproxy import Envelope, Session, Verdict, hookimpl
from mailproxy.dns import CountedQuery
from mailproxy.threads import ThreadLane

from ._common import (
    Action, ClientCheckSettings, ClientFilter, ExpiringCache, client_ip, count, printable, timed, verdict,
)
from ._dns import blocking_resolver
from ._spf_headers import SpfOutcome, authentication_results, comment, received_spf

PLUGIN = "spf"
# How long a check may run past check_timeout before it counts as temperror: pyspf
# measures its budget between lookups, so its last lookup may end a little late.
_GRACE = 1.0
_RESOLVER_CACHE_ENTRIES = 10000

# --- pyspf asks our resolver --------------------------------------------------------------
# pyspf looks names up through its module-level DNSLookup function. Ours asks the
# resolver set for the check running in this thread, and otherwise does what pyspf's
# own would, so other users of pyspf in the process are not affected.

_resolver: contextvars.ContextVar[dns.resolver.Resolver | None] = contextvars.ContextVar(
    "spf_resolver", default=None
)
_pyspf_lookup = pyspf.DNSLookup


def _value(qtype: str, rdata):
    """A record in the shape pyspf's own dnspython lookup gives it."""
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return (rdata.preference, rdata.exchange)
    if qtype == "PTR":
        return rdata.target.to_text(True)
    return rdata.strings  # TXT


def _lookup(name: str, qtype: str, strict=True, timeout=30):
    resolver = _resolver.get()
    if resolver is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    try:
        with CountedQuery(qtype) as query:
            answer = query.answered(resolver.resolve(name, qtype, lifetime=timeout))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise pyspf.TempError(f"DNS {exc}") from None
    return [((name, qtype), _value(qtype, rdata)) for rdata in answer]


pyspf.DNSLookup = _lookup

# --- the plugin ---------------------------------------------------------------------------

_REFUSALS = {  # result -> (enhanced code of a refusal (RFC 7372), what went wrong)
    "pass": ("7.23", "SPF pass"),
    "fail": ("7.23", "SPF fail"),
    "softfail": ("7.23", "SPF softfail"),
    "neutral": ("7.23", "SPF neutral"),
    "none": ("7.23", "SPF none"),
    "temperror": ("7.24", "SPF temporary error"),
    "permerror": ("7.24", "SPF permanent error"),
}


class Plugin:
    class Config(ClientCheckSettings):
        # The whole hook: one SPF evaluation and a little more.
        timeout: float = Field(15.0, gt=0, le=300)
        # Checked against `timeout` when left out too: `timeout = 10` alone is refused.
        check_timeout: float = Field(10.0, gt=0, le=120, validate_default=True)
        threads: int = Field(8, ge=1, le=64)  # evaluations at once; more wait their turn
        result_cache_ttl: float = Field(60.0, ge=0, le=3600)  # 0: every check is evaluated
        result_cache_entries: int = Field(10000, ge=1)
        add_headers: bool = True
        # Who did the check, in the headers: the [proxy] hostname unless set.
        authserv_id: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+$")
        # Forwarded mail fails SPF although nobody forged it: a score is the safe default.
        on_pass: Action = "off"
        on_fail: Action = 2.0
        on_softfail: Action = 1.0
        on_neutral: Action = "off"
        on_none: Action = "off"
        on_temperror: Action = "off"
        on_permerror: Action = "off"

        @field_validator("check_timeout")
        @classmethod
        def _fits_in_timeout(cls, value: float, info: ValidationInfo) -> float:
            limit = info.data.get("timeout")
            if limit is not None and value + _GRACE >= limit:
                raise ValueError(f"must end at least {_GRACE:g}s before timeout ({limit:g})")
            return value

    def __init__(self, settings: Config, context) -> None:
        self._filter = ClientFilter(settings)
        self._settings = settings
        self._authserv_id = settings.authserv_id or context.config.proxy.hostname
        self._resolver = blocking_resolver(context.config.dns)
        self._resolver.cache = dns.resolver.LRUCache(_RESOLVER_CACHE_ENTRIES)
        self._lane = ThreadLane(PLUGIN, settings.threads)  # daemon threads, counted busy
        self._results: ExpiringCache[tuple[SpfOutcome, tuple[tuple[str, str], ...]]] = ExpiringCache(
            settings.result_cache_entries, lambda: self.clock()
        )

    # Monotonic seconds, for the result cache.
    clock = staticmethod(time.monotonic)

    @hookimpl
    async def smtp_mail(self, session: Session, envelope: Envelope, address: str) -> Verdict | None:
        if self._filter.skips(session) or not (address or session.host_name):
            return None
        outcome, header_lines = await self._check(str(client_ip(session)), address, session.host_name or "")
        # Added now, not in an smtp_data hook: one of those would make the proxy take
        # every message whole instead of streaming it. The envelope ends with the
        # transaction, so the lines go with this message only.
        for name, value in header_lines:
            envelope.add_header(name, value)
        return self._verdict(outcome)

    async def _check(self, ip: str, sender: str, helo: str) -> tuple[SpfOutcome, tuple[tuple[str, str], ...]]:
        """The outcome, and the header lines that record it (the same for every message
        of the same check, so they are kept with it)."""
        identity = "mailfrom" if sender else "helo"
        key = (ip, sender, helo)
        checked = self._results.get(key)
        if checked is None:
            result, explanation = await self._evaluated(identity, ip, sender, helo)
            outcome = SpfOutcome(result, identity, ip, sender, helo, explanation)
            checked = (outcome, self._header_lines(outcome))
            if result != "temperror":  # the DNS may answer the next time
                self._results.put(key, checked, self._settings.result_cache_ttl)
        count(PLUGIN, identity, checked[0].result)
        return checked

    def _header_lines(self, outcome: SpfOutcome) -> tuple[tuple[str, str], ...]:
        if not self._settings.add_headers:
            return ()
        return (("Received-SPF", received_spf(outcome, self._authserv_id)),
                ("Authentication-Results", authentication_results(outcome, self._authserv_id)))

    async def _evaluated(self, identity: str, ip: str, sender: str, helo: str) -> tuple[str, str]:
        """The result and its explanation (printable) of one evaluation in a thread."""
        limit = self._settings.check_timeout
        with timed(PLUGIN, identity):
            try:
                async with asyncio.timeout(limit + _GRACE):
                    result, explanation = await self._lane.call(self._evaluate, (ip, sender, helo))
            except TimeoutError:
                result, explanation = "temperror", f"no answer within {limit:g}s"
        return result, printable(explanation)

    def _evaluate(self, ip: str, sender: str, helo: str) -> tuple[str, str]:
        """One evaluation, in a thread of the lane."""
        token = _resolver.set(self._resolver)
        try:
            query = pyspf.query(i=ip, s=sender, h=helo, receiver=self._authserv_id,
                                querytime=self._settings.check_timeout)
            result, _code, explanation = query.check()
        finally:
            _resolver.reset(token)
        return result, explanation

    def _verdict(self, outcome: SpfOutcome) -> Verdict | None:
        action = getattr(self._settings, f"on_{outcome.result}")
        if action == "off":  # the usual answer for a pass: no reply text to write
            return None
        enhanced, what = _REFUSALS[outcome.result]
        explanation = f" ({outcome.explanation})" if outcome.explanation else ""
        text = printable(f"{what}: {comment(outcome)}{explanation}", 400)
        return verdict(
            action,
            f"SPF_{outcome.result.upper()}",
            reject=Verdict.reject(550, f"5.{enhanced}", text),
            tempfail=Verdict.tempfail(451, f"4.{enhanced}", text),
        )
