"""DNS for the shipped plugins: resolvers on the servers of `[dns]`, and a lookup cache
that keeps each answer for its TTL.

A name that does not exist (NXDOMAIN), or has no record of the type asked for, is
cached as well, for its zone's negative TTL: the smaller of the SOA record's TTL and its
minimum field (RFC 2308). An answer without an SOA is not cached, as RFC 2308 asks.
Failures (timeouts, SERVFAIL, REFUSED) are never cached: the next session asks again.
Both kinds of TTL are capped by the plugin's settings, so a listing or delisting takes
effect within a bounded time whatever the zone says.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailproxy import metrics
from mailproxy.deferred_counts import deferred
from mailproxy.dns import CountedQuery

from ._common import ExpiringCache, timed_wait


class LookupFailed(Exception):
    """The DNS could not answer now (timeout, SERVFAIL, REFUSED, no server reachable)."""


def configured(resolver: dns.resolver.BaseResolver, settings: Any) -> dns.resolver.BaseResolver:
    """`resolver` asking the servers of `[dns]` (settings: a DnsSettings), or the system's
    when none are configured."""
    if settings.servers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(s.host, s.port) for s in settings.servers]
    resolver.lifetime = settings.timeout
    return resolver


def async_resolver(settings: Any) -> dns.asyncresolver.Resolver:
    return configured(dns.asyncresolver.Resolver(configure=not settings.servers), settings)


def blocking_resolver(settings: Any) -> dns.resolver.Resolver:
    return configured(dns.resolver.Resolver(configure=not settings.servers), settings)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """How long a "no such name" or "no such record" answer may be kept: its SOA's
    negative TTL, or 0 without an SOA."""
    if response is None:
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0


class CachedLookups:
    """Asynchronous lookups through one resolver, answers kept for their TTL.

    `lookup` returns the records found (dnspython rdata), an empty tuple when the name
    or the record type does not exist, and raises LookupFailed when the DNS could not
    say. At most `entries` answers are kept; the least recently used go first.
    """

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        max_ttl: float,
        max_negative_ttl: float,
        entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._max_ttl = max_ttl
        self._max_negative_ttl = max_negative_ttl
        self._cache: ExpiringCache[tuple[Any, ...]] = ExpiringCache(entries, clock)
        self._queries: dict[tuple[str, str], asyncio.Task] = {}
        self._hits = deferred(metrics.dns_cache_lookups, "hit")
        self._misses = deferred(metrics.dns_cache_lookups, "miss")

    async def lookup(
        self, name: str, rdtype: str, timeout: float, check: tuple[str, str] | None = None
    ) -> tuple[Any, ...]:
        """`check` (plugin, check): times the wait for the DNS under that check, when
        there is one (mailproxy_plugin_check_duration_seconds); an answer from the cache
        takes microseconds, and is not timed."""
        key = (name.lower().removesuffix("."), rdtype)
        records = self._cache.get(key)
        if records is not None:
            self._hits.inc()
            return records
        self._misses.inc()
        # Callers that ask for the same name at once (one zone under several filters, a
        # client in many sessions) share one query; one that gives up (its hook timed
        # out) does not cancel it for the others.
        query = self._queries.get(key)
        if query is None:
            query = asyncio.create_task(self._ask_and_keep(key, timeout))
            self._queries[key] = query
            query.add_done_callback(lambda done: self._forget_query(key, done))
        return await timed_wait(asyncio.shield(query), check)

    def _forget_query(self, key: tuple[str, str], query: asyncio.Task) -> None:
        del self._queries[key]
        if not query.cancelled():
            query.exception()  # seen: no "never retrieved" warning when every caller gave up

    async def _ask_and_keep(self, key: tuple[str, str], timeout: float) -> tuple[Any, ...]:
        records, ttl = await self._ask(*key, timeout)
        self._cache.put(key, records, ttl)
        return records

    async def _ask(self, name: str, rdtype: str, timeout: float) -> tuple[tuple[Any, ...], float]:
        try:
            qname = dns.name.from_text(name)  # absolute: no search domains are tried
            with CountedQuery(rdtype) as query:
                answer = query.answered(
                    await self._resolver.resolve(qname, rdtype, lifetime=timeout, raise_on_no_answer=False)
                )
        except dns.resolver.NXDOMAIN as exc:
            response = next(iter(exc.responses().values()), None)
            return (), min(_negative_ttl(response), self._max_negative_ttl)
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{rdtype} {name}: {exc}") from None
        if answer.rrset is None:  # the name exists, without records of this type
            return (), min(_negative_ttl(answer.response), self._max_negative_ttl)
        ttl = min(max(0.0, answer.expiration - time.time()), self._max_ttl)
        return tuple(answer.rrset), ttl


def txt_text(records: tuple[Any, ...]) -> str:
    """The text of TXT records: each record's strings joined, records separated by a space."""
    return " ".join(b"".join(r.strings).decode("utf-8", "replace") for r in records)


def cached_lookups(settings: Any, dns_settings: Any) -> CachedLookups:
    """The lookups of a check with DnsCheckSettings, on the servers of `[dns]`."""
    return CachedLookups(
        async_resolver(dns_settings), settings.max_ttl, settings.max_negative_ttl, settings.cache_entries
    )
