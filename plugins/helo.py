"""helo: judge the name a client gives in HELO/EHLO.

    [plugin.helo]
    invalid_name = "reject"   # each check: "reject", "tempfail", "off" or points
    bare_ip = 2.0
    not_fqdn = 1.0
    not_resolving = 1.0
    own_names = ["mx.example.org"]

The checks, in order; the first that finds something and is not "off" decides:

- invalid_name: neither a host name nor an address literal like `[192.0.2.1]` or
  `[IPv6:2001:db8::1]` (RFC 5321 4.1.3);
- own_address: an address of the proxy (its listeners', `own_addresses`), unless the
  client really connects from it;
- bare_ip: an address without the brackets;
- own_name: the proxy's `[proxy] hostname` or one of `own_names`, unless the client
  connects from one of the proxy's own addresses;
- not_fqdn: a name of one label, like `localhost` or `DESKTOP-4F2`;
- not_resolving: a name with no A, AAAA or MX record (a DNS failure is no finding).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from typing import Annotated

from pydantic import AfterValidator

from mailproxy import Session, Verdict, hookimpl

from ._common import (
    _MEMO_ENTRIES, Action, ClientFilter, DnsCheckSettings, IPAddress, addresses, client_ip, count, host_name,
    verdict,
)
from ._dns import LookupFailed, cached_lookups

PLUGIN = "helo"
_CHECK = (PLUGIN, "helo")  # its queries to the DNS are timed, not answers from the cache

# check -> (reject code, enhanced code, text); a tempfail says the same with 450 4.x.x
_REPLIES = {
    "invalid_name": (501, "5.5.2", "Helo command rejected: Invalid name"),
    "own_address": (550, "5.7.1", "Helo command rejected: That address is mine"),
    "bare_ip": (501, "5.5.2", "Helo command rejected: An address must be given as [address]"),
    "own_name": (550, "5.7.1", "Helo command rejected: That name is mine"),
    "not_fqdn": (504, "5.5.2", "Helo command rejected: Need fully-qualified hostname"),
    "not_resolving": (550, "5.7.1", "Helo command rejected: Host not found"),
}


def _literal(name: str) -> IPAddress | None:
    """The address of an address literal, or None when `name` is not a valid one."""
    inner = name[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            return ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None


# Memoised, bounded as the other memos of client-chosen names: the same few names come
# connection after connection, and a name that is no address costs two ValueErrors.
@functools.lru_cache(_MEMO_ENTRIES)
def _bare_ip(name: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class Plugin:
    class Config(DnsCheckSettings):
        invalid_name: Action = "reject"
        own_address: Action = "reject"
        bare_ip: Action = 2.0
        own_name: Action = "reject"
        not_fqdn: Action = 1.0
        not_resolving: Action = 1.0
        # The proxy's names and addresses besides [proxy] hostname and the listeners'
        # addresses, e.g. its public name and address behind NAT.
        own_names: list[str] = []
        own_addresses: Annotated[list[str], AfterValidator(addresses)] = []

    def __init__(self, settings: Config, context) -> None:
        self._settings = settings
        self._filter = ClientFilter(settings)
        config = context.config
        self._own_names = {n.lower().removesuffix(".") for n in [config.proxy.hostname, *settings.own_names]}
        # Listeners on 0.0.0.0 or [::] have no address of their own to compare with.
        listening = [_bare_ip(listener.address.host) for listener in config.listeners]
        self._own_addresses = {ip for ip in listening if not ip.is_unspecified}
        self._own_addresses |= {_bare_ip(a) for a in settings.own_addresses}
        self._dns = cached_lookups(settings, config.dns)

    @hookimpl
    async def smtp_helo(self, session: Session, hostname: str) -> Verdict | None:
        if self._filter.skips(session):
            return None
        finding = await self._first_finding(hostname, client_ip(session))
        count(PLUGIN, "helo", finding)
        if finding not in _REPLIES:  # "valid", or "error" when the DNS could not say
            return None
        code, enhanced, text = _REPLIES[finding]
        return verdict(
            getattr(self._settings, finding),
            f"HELO_{finding.upper()}",
            reject=Verdict.reject(code, enhanced, text),
            tempfail=Verdict.tempfail(450, "4" + enhanced[1:], text),
        )

    def _acts_on(self, check: str) -> bool:
        return getattr(self._settings, check) != "off"

    async def _first_finding(self, hostname: str, client: IPAddress | None) -> str:
        """The first check that `hostname` fails and that is not "off"; else "valid" (or
        "error" when its lookup failed)."""
        is_literal = hostname.startswith("[") and hostname.endswith("]")
        address = _literal(hostname) if is_literal else _bare_ip(hostname)
        name = None if is_literal or address is not None else host_name(hostname)
        mine = client in self._own_addresses
        findings = [
            ("invalid_name", address is None and name is None),
            ("own_address", address is not None and address in self._own_addresses and address != client),
            ("bare_ip", address is not None and not is_literal),
            ("own_name", name is not None and name in self._own_names and not mine),
            ("not_fqdn", name is not None and "." not in name),
        ]
        for check, found in findings:
            if found and self._acts_on(check):
                return check
        if name is None or "." not in name or not self._acts_on("not_resolving"):
            return "valid"
        try:
            resolves = await self._resolves(name)
        except LookupFailed:
            return "error"
        return "valid" if resolves else "not_resolving"

    async def _resolves(self, name: str) -> bool:
        """Whether `name` has an A, AAAA or MX record. LookupFailed when none was found
        and a lookup failed: the name may exist after all.

        The A record first, alone: nearly every mail server's name has one, so one
        lookup (most often from the cache) usually settles it. Then AAAA and MX at once,
        in what is left of `lookup_timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.lookup_timeout
        failure = None
        try:
            if await self._dns.lookup(name, "A", self._settings.lookup_timeout, _CHECK):
                return True
        except LookupFailed as exc:
            failure = exc
        left = deadline - loop.time()
        if left <= 0:
            raise failure or LookupFailed(f"{name}: no time left for AAAA and MX")
        answers = await asyncio.gather(
            *(self._dns.lookup(name, rdtype, left, _CHECK) for rdtype in ("AAAA", "MX")),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, LookupFailed):
                failure = answer
            elif isinstance(answer, BaseException):
                raise answer
            elif answer:
                return True
        if failure is not None:
            raise failure
        return False
