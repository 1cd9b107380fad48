"""dnsbl: the client's address on DNS block and allow lists, the sender's domain on
domain lists.

    [plugin.dnsbl]
    client_lists = ["zen.spamhaus.org=127.0.0.[2..11]*3", "list.dnswl.org=127.0.[0..255].[1..3]*-2"]
    domain_lists = ["dbl.spamhaus.org=127.0.1.[2..99]*3"]
    reject_threshold = 3    # unset: the weights only score

Lists are written as Postfix's postscreen_dnsbl_sites writes them (see _dnsbl_lists).
At connect the client's address (IPv4, or IPv6 as reversed nibbles) is looked up on
every client list at once; at MAIL FROM, the sender's domain on every domain list. The
weights of the lists that list it add up: at `reject_threshold` or more the client (or
the sender) is refused, with the text the heaviest list gives in its TXT record;
otherwise each list's weight is scored under its zone's name. A list that does not
answer in `lookup_timeout` counts as not listing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from mailproxy import Envelope, Session, Verdict, hookimpl

from ._common import ClientFilter, DnsCheckSettings, checks_counter, client_ip, host_name, printable
from ._dns import LookupFailed, cached_lookups, txt_text
from ._dnsbl_lists import DnsList, outside_loopback, reversed_address, valid_spec

PLUGIN = "dnsbl"
log = logging.getLogger("mailproxy.plugin.dnsbl")

ListSpec = Annotated[str, AfterValidator(valid_spec)]


@dataclass(frozen=True, slots=True)
class Listing:
    dns_list: DnsList
    reason: str  # the list's TXT record, printable; "" when it has none


class Plugin:
    class Config(DnsCheckSettings):
        client_lists: list[ListSpec] = []
        domain_lists: list[ListSpec] = []
        # Refuse at this sum of weights or more; unset, lists only score.
        reject_threshold: float | None = Field(None, gt=0)

    def __init__(self, settings: Config, context) -> None:
        self._settings = settings
        self._filter = ClientFilter(settings)
        self._client_lists = [DnsList.parse(spec) for spec in settings.client_lists]
        self._domain_lists = [DnsList.parse(spec) for spec in settings.domain_lists]
        self._dns = cached_lookups(settings, context.config.dns)
        # Each list's counter of each result, at hand: every message counts one or two.
        self._results = {(dns_list.zone, result): checks_counter(PLUGIN, dns_list.zone, result)
                         for dns_list in self._client_lists + self._domain_lists
                         for result in ("listed", "not_listed", "error")}

    @hookimpl
    async def smtp_connect(self, session: Session) -> Verdict | None:
        if not self._client_lists or self._filter.skips(session):
            return None
        ip = client_ip(session)
        listings = await self._look_up(self._client_lists, reversed_address(ip))
        refusal = self._refusal(listings)
        if refusal is not None:
            return Verdict.reject(554, "5.7.1", f"Service unavailable; client [{ip}] blocked using {refusal}")
        self._score(session, listings, "smtp_connect")
        return None

    @hookimpl
    async def smtp_mail(self, session: Session, envelope: Envelope, address: str) -> Verdict | None:
        domain = host_name(address.rpartition("@")[2]) if "@" in address else None
        if not self._domain_lists or domain is None or self._filter.skips(session):
            return None
        listings = await self._look_up(self._domain_lists, domain)
        refusal = self._refusal(listings)
        if refusal is not None:
            return Verdict.reject(550, "5.7.1", f"Sender address rejected: {domain} blocked using {refusal}")
        self._score(envelope, listings, "smtp_mail")
        return None

    async def _look_up(self, lists: list[DnsList], key: str) -> list[Listing]:
        if len(lists) == 1:  # no task needed: most answers come from the cache at once
            listing = await self._listing(lists[0], key)
            return [] if listing is None else [listing]
        found = await asyncio.gather(*(self._listing(dns_list, key) for dns_list in lists))
        return [listing for listing in found if listing is not None]

    async def _listing(self, dns_list: DnsList, key: str) -> Listing | None:
        """Whether `dns_list` lists `key`, with its reason; None for "no" and for "it did
        not say" (logged and counted as error)."""
        name = f"{key}.{dns_list.zone}"
        timeout = self._settings.lookup_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        check = (PLUGIN, dns_list.zone)  # each query to the list is timed, not the cache
        try:
            records = await self._dns.lookup(name, "A", timeout, check)
        except LookupFailed as exc:
            log.info("%s did not answer: %s", dns_list.zone, exc)
            self._results[dns_list.zone, "error"].inc()
            return None
        if not records:  # "no such name": most keys of most lookups
            self._results[dns_list.zone, "not_listed"].inc()
            return None
        answers = [r.address for r in records]
        if not any(dns_list.lists(a) for a in answers):
            strange = [a for a in answers if outside_loopback(a)]
            if strange:  # the list never answers so; a resolver rewriting NXDOMAIN does
                log.warning("%s answered %s for %s, outside 127.0.0.0/8: ignored",
                            dns_list.zone, ", ".join(strange), name)
            self._results[dns_list.zone, "error" if strange else "not_listed"].inc()
            return None
        reason = await self._reason(name, deadline - loop.time(), check)
        self._results[dns_list.zone, "listed"].inc()
        return Listing(dns_list, reason)

    async def _reason(self, name: str, timeout: float, check: tuple[str, str]) -> str:
        """The list's TXT record for a listed key, if it answers within what is left of
        the lookup's time; a listing stands without it."""
        if timeout <= 0:
            return ""
        try:
            return printable(txt_text(await self._dns.lookup(name, "TXT", timeout, check)))
        except LookupFailed:
            return ""

    def _refusal(self, listings: list[Listing]) -> str | None:
        """What to tell a client whose listings reach reject_threshold, else None."""
        threshold = self._settings.reject_threshold
        if threshold is None or not listings or sum(listing.dns_list.weight for listing in listings) < threshold:
            return None
        heaviest = max(listings, key=lambda listing: listing.dns_list.weight)
        zone = heaviest.dns_list.zone
        return f"{zone}; {heaviest.reason}" if heaviest.reason else zone

    def _score(self, scores, listings: list[Listing], hook: str) -> None:
        """Each list's weight under its own symbol, the zone (a verdict carries one symbol
        only, so they are added here). In observe mode they are only logged."""
        for listing in listings:
            dns_list = listing.dns_list
            log.info("%s: listed by %s (%+g)%s%s", hook, dns_list.zone, dns_list.weight,
                     ": " if listing.reason else "", listing.reason)
            if not self._settings.observe:
                scores.add_score(dns_list.zone, dns_list.weight, PLUGIN, hook)
