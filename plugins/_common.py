"""What the shipped checks share: which sessions they judge, how an administrator says
what a finding does, and how each check is timed and counted."""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from collections import OrderedDict
from typing import Annotated, Awaitable, Callable, Generic, Hashable, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator

from mailproxy import PluginSettings, Session, Verdict
from mailproxy import metrics
from mailproxy.deferred_counts import deferred

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Value = TypeVar("Value")

# Clients that are never judged unless the administrator says otherwise: loopback,
# private, shared (carrier-grade NAT) and link-local networks. Public lists know
# nothing of them, and a host there is one of the site's own.
PRIVATE_NETWORKS = [
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10",
]


def networks(values: list[str]) -> list[str]:
    """Validates a list of IP networks."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (like 192.0.2.0/24)") from None
    return values


def addresses(values: list[str]) -> list[str]:
    """Validates a list of IP addresses."""
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    return values


def _action(value: object) -> str | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value in ("reject", "tempfail", "off"):
        return value
    raise ValueError(f"{value!r} is not an action: use \"reject\", \"tempfail\", \"off\" or a number of points")


# What a finding does: refuse ("reject", "tempfail"), nothing ("off"), or add points
# to the score (a number; negative for a good sign).
Action = Annotated[str | float, BeforeValidator(_action)]


class ClientCheckSettings(PluginSettings):
    """Options every shipped check takes: which sessions it judges."""

    # Listener modes whose sessions are checked. Submission clients are users' own
    # programs, on home and mobile networks, with whatever HELO they like.
    modes: list[Literal["mx", "submission"]] = ["mx"]
    # Client networks never checked.
    skip_clients: Annotated[list[str], AfterValidator(networks)] = PRIVATE_NETWORKS


class DnsCheckSettings(ClientCheckSettings):
    """Options of a check that asks the DNS (the servers of `[dns]`)."""

    # Seconds for one name's lookups; checked against `timeout` when left out too
    # (`timeout = 1` alone must not leave the default 2 s wait inside a 1 s hook).
    lookup_timeout: float = Field(2.0, gt=0, le=30, validate_default=True)
    cache_entries: int = Field(10000, ge=0)  # answers kept, the least recently used go
    # Answers are kept for their TTL, at most max_ttl; "no such name" for the negative
    # TTL of its zone's SOA, at most max_negative_ttl.
    max_ttl: float = Field(3600.0, ge=0)
    max_negative_ttl: float = Field(900.0, ge=0)

    @field_validator("lookup_timeout")
    @classmethod
    def _fits_in_timeout(cls, value: float, info: ValidationInfo) -> float:
        return within_hook_timeout(value, info)


def within_hook_timeout(value: float, info: ValidationInfo) -> float:
    """Validates a wait that happens inside a hook: it must end before the hook's own
    `timeout`, or every call would fail."""
    limit = info.data.get("timeout")
    if limit is not None and value >= limit:
        raise ValueError(f"must be less than timeout ({limit:g}), the limit of the whole hook")
    return value


# Bounds of the memos below: enough for the clients of a busy minute; a client that
# comes back after its entry went costs one parse more, nothing else.
_MEMO_ENTRIES = 4096


class ClientFilter:
    def __init__(self, settings: ClientCheckSettings) -> None:
        self._modes = frozenset(settings.modes)
        self._skip = [ipaddress.ip_network(n, strict=False) for n in settings.skip_clients]
        # Every hook of a check asks, for the same few clients: each answer is kept.
        self._skips_address = functools.lru_cache(_MEMO_ENTRIES)(self._skips_address)

    def skips(self, session: Session) -> bool:
        """Whether `session` is none of this check's business: an authenticated user, a
        listener mode not checked, a client in `skip_clients` (or no address at all)."""
        if session.authenticated or session.mode not in self._modes:
            return True
        return self._skips_address(session.client_address)

    def _skips_address(self, address: str) -> bool:
        ip = _parse_ip(address)
        return ip is None or any(ip in network for network in self._skip)


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@functools.lru_cache(_MEMO_ENTRIES)  # the same senders and HELO names, hook after hook
def host_name(text: str) -> str | None:
    """`text` as a lower-case ASCII host name (an internationalised one in its A-label
    form, a trailing dot dropped), or None when it cannot be one. Underscores are
    allowed, as Postfix allows them: real hosts have them."""
    name = text.removesuffix(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if labels[-1].isdigit():  # a numeric top-level label: an address, or nonsense
        return None
    return name.lower()


def client_ip(session: Session) -> IPAddress | None:
    """The real client's address (an IPv4-mapped IPv6 address as the IPv4 one)."""
    return _parse_ip(session.client_address)


# Memoised: each hook of each check asks again for the session's client, and parsing
# an address is dozens of calls. Addresses are immutable, so sharing one is safe.
@functools.lru_cache(_MEMO_ENTRIES)
def _parse_ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(_MEMO_ENTRIES)
def network_of(ip: IPAddress, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The network `ip` is in, of the prefix length for its version: `192.0.2.0/24`."""
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network((ip, prefix), strict=False))


def domain_of(address: str) -> str | None:
    """The domain of a mail address as a host name (see host_name); None for the null
    sender, an address without a domain, or an address literal."""
    local, at, domain = address.rpartition("@")
    return host_name(domain) if at and local else None


def verdict(action: str | float, symbol: str, reject: Verdict, tempfail: Verdict) -> Verdict | None:
    """What `action` means for a finding: its refusal, its points, or nothing."""
    if action == "reject":
        return reject
    if action == "tempfail":
        return tempfail
    if action == "off":
        return None
    return Verdict.score(symbol, action, reason=reject.reason)


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def printable(text: str, limit: int = 200) -> str:
    """`text` fit for a reply or a log line: printable ASCII, at most `limit` characters.
    Texts from the DNS belong to whoever runs the zone."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def count(plugin: str, check: str, result: str) -> None:
    checks_counter(plugin, check, result).inc()


def checks_counter(plugin: str, check: str, result: str):
    """The counter of `check`'s `result`, for a plugin that keeps it at hand: counted
    in batches (deferred_counts.py), as checks run several times per message."""
    return deferred(metrics.plugin_checks, plugin, check, result)


class timed:
    """`with timed(plugin, check):` observes how long the block took. A class, not a
    generator context manager: it is entered for every check of every message."""

    __slots__ = ("_histogram", "_started")

    def __init__(self, plugin: str, check: str) -> None:
        self._histogram = metrics.child(metrics.plugin_check_duration, plugin, check)

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc_info) -> None:
        self._histogram.observe(time.perf_counter() - self._started)


def timed_wait(awaitable: Awaitable[Value], check: tuple[str, str] | None) -> Awaitable[Value]:
    """`awaitable`, its wait timed under `check` (plugin, check); as it is when `check`
    is None (an answer from inside the process: nothing worth a timer, and no coroutine
    more for it)."""
    return awaitable if check is None else _timed(awaitable, check)


async def _timed(awaitable: Awaitable[Value], check: tuple[str, str]) -> Value:
    with timed(*check):
        return await awaitable


class ExpiringCache(Generic[Value]):
    """Values kept for a time each, at most `entries` of them: the least recently used
    go first. `clock` is monotonic seconds."""

    def __init__(self, entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries = entries
        self._clock = clock
        self._values: OrderedDict[Hashable, tuple[float, Value]] = OrderedDict()

    def get(self, key: Hashable) -> Value | None:
        """The value kept under `key`, or None when there is none or it expired."""
        kept = self._values.get(key)
        if kept is None:
            return None
        expires, value = kept
        if expires <= self._clock():
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Value, ttl: float) -> None:
        """Keep `value` under `key` for `ttl` seconds (not at all when `ttl` is 0)."""
        if ttl <= 0 or self._entries <= 0:
            return
        self._values[key] = (self._clock() + ttl, value)
        self._values.move_to_end(key)
        while len(self._values) > self._entries:
            self._values.popitem(last=False)

    def __len__(self) -> int:
        return len(self._values)
