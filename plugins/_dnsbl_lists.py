"""DNS lists written as Postfix's postscreen_dnsbl_sites writes them.

    zone[=filter][*weight]

    zen.spamhaus.org=127.0.0.[2..11]*3     listed if it answers 127.0.0.2 to 127.0.0.11
    list.dnswl.org=127.0.[0..255].[1;2;3]*-2   an allow list: a negative weight
    bl.example                             any answer in 127.0.0.0/8, weight 1

Each of the filter's four octets is a number or a bracketed list of numbers and
`low..high` ranges, separated by `;`. Without a filter, any answer in 127.0.0.0/8 lists,
except 127.255.255.0/24, where lists such as Spamhaus's say that the query itself was
refused (too many queries, or asked through a public resolver): that must not refuse
every client. An answer outside 127.0.0.0/8 never lists: a resolver that rewrites
"no such name" into an address of its own says nothing about the client.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

_SPEC = re.compile(r"(?P<zone>[^=*\s]+)(?:=(?P<filter>[^*\s]+))?(?:\*(?P<weight>-?\d+(?:\.\d+)?))?")
_ZONE = re.compile(r"(?:(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\.)+[A-Za-z0-9-]{1,63}")
_OCTET = r"(\d{1,3}|\[[0-9.;]+\])"
_FILTER = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_ITEM = re.compile(r"(\d{1,3})(?:\.\.(\d{1,3}))?")

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
REFUSED_QUERIES = ipaddress.ip_network("127.255.255.0/24")


def _octet(text: str) -> frozenset[int]:
    items = text[1:-1].split(";") if text.startswith("[") else [text]
    values: set[int] = set()
    for item in items:
        match = _ITEM.fullmatch(item)
        low, high = (int(match[1]), int(match[2] or match[1])) if match else (1, 0)
        if not match or not low <= high <= 255:
            raise ValueError(f"{text!r} is not a number 0-255 or a list like [2;4..7]")
        values.update(range(low, high + 1))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class DnsList:
    zone: str
    weight: float
    octets: tuple[frozenset[int], ...] | None  # the filter; None for the default

    @classmethod
    def parse(cls, spec: str) -> DnsList:
        example = "like zen.example=127.0.0.[2..11]*3"
        match = _SPEC.fullmatch(spec.strip())
        if not match or not _ZONE.fullmatch(match["zone"]):
            raise ValueError(f"{spec!r} is not zone[=filter][*weight] ({example})")
        octets = None
        if match["filter"] is not None:
            parts = _FILTER.fullmatch(match["filter"])
            if not parts:
                raise ValueError(f"{spec!r}: the filter is not four octets ({example})")
            try:
                octets = tuple(_octet(part) for part in parts.groups())
            except ValueError as exc:
                raise ValueError(f"{spec!r}: {exc}") from None
        weight = float(match["weight"]) if match["weight"] is not None else 1.0
        return cls(match["zone"].lower(), weight, octets)

    def lists(self, answer: str) -> bool:
        """Whether an A record the list answered puts the looked-up key on it."""
        try:
            ip = ipaddress.IPv4Address(answer)
        except ValueError:
            return False
        if ip not in LOOPBACK:
            return False
        if self.octets is None:
            return ip not in REFUSED_QUERIES
        return all(octet in allowed for octet, allowed in zip(ip.packed, self.octets))


def outside_loopback(answer: str) -> bool:
    """Whether an answer is one no DNS list gives (not an address in 127.0.0.0/8)."""
    try:
        return ipaddress.IPv4Address(answer) not in LOOPBACK
    except ValueError:
        return True


def valid_spec(spec: str) -> str:
    DnsList.parse(spec)
    return spec


@functools.lru_cache(4096)  # the same clients, session after session
def reversed_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The key a DNS list is asked for an address: IPv4 octets, or IPv6 nibbles, in
    reverse order (1.2.3.4 -> 4.3.2.1)."""
    return ip.reverse_pointer.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
