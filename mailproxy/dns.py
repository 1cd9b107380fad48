"""DNS lookups the proxy and its plugins share, with one configured resolver.

`client_name` is forward-confirmed reverse DNS (FCrDNS): the PTR name of the client's
address counts only if that name resolves back to the address. That is what Postfix
means by a client's verified name, and what XCLIENT's NAME attribute carries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import dns.reversename

from . import metrics
from .config import DnsSettings

log = logging.getLogger("mailproxy.dns")

UNAVAILABLE = "[UNAVAILABLE]"  # no name, for certain (XCLIENT's spelling)
TEMPUNAVAIL = "[TEMPUNAVAIL]"  # could not find out now
MAX_PTR_NAMES = 10  # a hostile PTR set must not cost unbounded lookups
CACHE_ENTRIES = 10000


class CountedQuery:
    """Times one DNS query and counts it by record type and result in the DNS metrics:

        with CountedQuery("TXT") as query:
            query.answered(await resolver.resolve(name, "TXT", raise_on_no_answer=False))
    """

    def __init__(self, rdtype: str) -> None:
        self.rdtype = rdtype
        self.result = "error"  # unless answered() is reached

    def __enter__(self) -> CountedQuery:
        self.started = time.perf_counter()
        return self

    def answered(self, answer: dns.resolver.Answer) -> dns.resolver.Answer:
        self.result = "answer" if answer.rrset is not None else "nodata"
        return answer

    def __exit__(self, kind, exc, traceback) -> None:
        if isinstance(exc, asyncio.CancelledError):
            return  # nobody waited for the answer any more (the client left): no result
        if isinstance(exc, dns.resolver.NXDOMAIN):
            self.result = "nxdomain"
        elif isinstance(exc, dns.resolver.NoAnswer):
            self.result = "nodata"
        elapsed = time.perf_counter() - self.started
        metrics.child(metrics.dns_query_duration, self.rdtype, self.result).observe(elapsed)


class Resolver:
    def __init__(self, settings: DnsSettings) -> None:
        if settings.servers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(server.host, server.port) for server in settings.servers
            ]
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = settings.timeout
        # Answers are kept for their TTL (bounded in number): a client that connects
        # again costs no lookup, and a DNS server that is slow costs it once.
        self._resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)

    async def client_name(self, address: str) -> str:
        """The verified host name of `address`, or UNAVAILABLE / TEMPUNAVAIL."""
        try:
            ip = ipaddress.ip_address(address)
            with CountedQuery("PTR") as query:
                answer = query.answered(await self._resolver.resolve(dns.reversename.from_address(str(ip)), "PTR"))
            names = [r.target.to_text(omit_final_dot=True) for r in answer][:MAX_PTR_NAMES]
            for name in names:
                if await self._resolves_to(name, ip):
                    return name.lower()
            return UNAVAILABLE
        except ValueError:
            return UNAVAILABLE
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return UNAVAILABLE
        except dns.exception.DNSException as exc:
            log.info("reverse lookup of %s failed: %s", address, exc)
            return TEMPUNAVAIL

    async def _resolves_to(self, name: str, ip) -> bool:
        rdtype = "AAAA" if ip.version == 6 else "A"
        try:
            with CountedQuery(rdtype) as query:
                answer = query.answered(await self._resolver.resolve(name, rdtype))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return False
        return any(ipaddress.ip_address(r.address) == ip for r in answer)
