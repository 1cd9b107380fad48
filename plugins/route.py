"""route: which mail store serves each user, for POP3 and IMAP logins.

    [plugin.route]
    map = {"bob@example.test" = "store2", "@legacy.example.test" = "old", "*" = "store1"}
    map_file = "route.map"        # more entries, read again whenever it changes
    upstream_name = "{name}"      # "{name}-{protocol}": store2 -> store2-pop3, store2-imap

A login is looked up by its username, without regard to case: the entry for exactly
that name, else the "@domain" entry for its domain, else "*". The entry names the
upstream (an `[upstreams.NAME]` section) that checks the password, with the `upstream`
credential backend, and serves the session; without one the login goes to the
listener's own `upstream`.

`map_file` holds one `key name` per line; a word that starts with `#` begins a comment,
and blank lines are skipped. Its entries win over `map`'s for the same key. A relative
path is taken from the configuration file's directory. The file is looked at (one
stat) at each login and read again when its modification time, size or inode changed:
replace it with a rename, so that no login reads half a file. The file is read in the
event loop, within a login: a file over 8 MiB is refused. A version with a mistake
(a line that is not `key name`, a key twice, a name that is no upstream) is refused as
a whole, logged once, and the last good version stays in use; at start-up any mistake
stops the proxy, as a configuration error.

An upstream has one address, so it speaks one protocol. Where POP3 and IMAP listeners
share one map, `upstream_name` turns each name in the map into the upstream for the
login's protocol: `{name}` is the map's name, `{protocol}` is `pop3` or `imap`. Every
name is checked at start-up, for the protocol of every POP3 and IMAP listener: it must
be an upstream, and not one that a listener of another protocol uses.

Each login is counted in `mailproxy_plugin_checks_total{plugin="route", check="lookup",
result="routed"}` (an entry matched) or `result="default"` (the listener's upstream);
each version of the file in `check="map_file"`, `result="loaded"` or `"rejected"`.
"""

from __future__ import annotations

import functools
import logging
import string
from pathlib import Path
from typing import Callable

from pydantic import field_validator

from mailproxy import PluginSettings, Session, hookimpl
from mailproxy.config import Config as ProxyConfig, ConfigError

from ._common import count

PLUGIN = "route"
MAILSTORE_PROTOCOLS = ("pop3", "imap")
TEMPLATE_FIELDS = frozenset({"name", "protocol"})
MAX_MAP_BYTES = 8 * 2**20  # about 200,000 entries

log = logging.getLogger("mailproxy.plugin.route")

Entry = dict[str, str]  # protocol -> the upstream of that protocol's logins
Resolve = Callable[[str], Entry]


def entry_key(text: str) -> str:
    """A map key as it is looked up: a username (usually an address), "@domain" or "*"."""
    if not text or text == "@" or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not an address, an @domain or *")
    return text.lower()


def parse_map(text: str, source: str, resolve: Resolve) -> dict[str, Entry]:
    """The entries of a map file: `key name` lines, `#` comments and blank lines."""
    entries: dict[str, Entry] = {}
    lines: dict[str, int] = {}  # key -> the line it is on
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        words = words[: next((i for i, word in enumerate(words) if word.startswith("#")), len(words))]
        if not words:
            continue
        try:
            key, entry = _entry(words, resolve)
            if key in lines:
                raise ValueError(f"{key} is already on line {lines[key]}")
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: {exc}") from None
        entries[key], lines[key] = entry, number
    return entries


def _entry(words: list[str], resolve: Resolve) -> tuple[str, Entry]:
    """The key and the entry of one line's words."""
    if len(words) != 2:
        raise ValueError("expected 'key upstream'")
    key = entry_key(words[0])
    try:
        return key, resolve(words[1])
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


class UpstreamNames:
    """How a name in the map becomes the upstream of each protocol's logins, checked
    against the configured upstreams and the listeners that use them."""

    def __init__(self, template: str, config: ProxyConfig) -> None:
        self._template = template
        self._known = frozenset(config.upstreams)
        self._listeners = config.listeners  # an upstream a listener uses speaks its protocol
        self._protocols = sorted({l.protocol for l in config.listeners} & set(MAILSTORE_PROTOCOLS))

    def resolve(self, name: str) -> Entry:
        """protocol -> upstream for `name`; a ValueError says what is wrong with it."""
        entry = {}
        for protocol in self._protocols:
            upstream = self._template.format(name=name, protocol=protocol)
            logins = "" if upstream == name else f" for {protocol} logins"
            if upstream not in self._known:
                known = ", ".join(sorted(self._known))
                raise ValueError(f"no upstream named {upstream!r}{logins} ({known})")
            listener = next((l for l in self._listeners if l.upstream == upstream and l.protocol != protocol), None)
            if listener is not None:
                raise ValueError(
                    f"upstream {upstream!r}{logins} is the {listener.protocol} listener "
                    f"{listener.name!r}'s; name one upstream per protocol with upstream_name"
                )
            entry[protocol] = upstream
        return entry


def _version(path: Path) -> tuple[int, int, int]:
    """What tells one version of a file from the next, from one stat."""
    status = path.stat()
    return status.st_mtime_ns, status.st_size, status.st_ino


def _describe(exc: Exception, path: Path) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {path}"
    if isinstance(exc, OSError):
        return f"{path}: {exc.strerror}"
    return str(exc)


class MapFile:
    """The entries of `map_file`: the last good version, read again when it changed."""

    def __init__(self, path: Path, resolve: Resolve) -> None:
        self.path = path
        self._resolve = functools.lru_cache(maxsize=4096)(resolve)  # a map names few upstreams
        self._version = _version(path)  # OSError and ValueError: the caller's to report
        self.entries = self._read()
        self._rejected: object = None  # the last version refused, logged once

    def _read(self) -> dict[str, Entry]:
        # It is read within a login, in the event loop: a file far beyond any real map
        # is a mistake, refused before it stalls every session.
        if self.path.stat().st_size > MAX_MAP_BYTES:
            raise ValueError(f"{self.path}: larger than {MAX_MAP_BYTES // 2**20} MiB")
        return parse_map(self.path.read_text(encoding="utf-8"), str(self.path), self._resolve)

    def refresh(self) -> bool:
        """Read the file again if it changed; True when a new version is in use."""
        try:
            version = _version(self.path)
        except OSError as exc:
            return self._keep_last_good(("unreadable", exc.errno), _describe(exc, self.path))
        if version == self._version:
            self._rejected = None  # a refused version replaced by the good one again
            return False
        if version == self._rejected:
            return False
        try:
            entries = self._read()
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            return self._keep_last_good(version, _describe(exc, self.path))
        self.entries, self._version, self._rejected = entries, version, None
        count(PLUGIN, "map_file", "loaded")
        log.info("map_file %s: %d entries in use", self.path, len(entries))
        return True

    def _keep_last_good(self, version: object, problem: str) -> bool:
        if version != self._rejected:
            self._rejected = version
            count(PLUGIN, "map_file", "rejected")
            log.error("map_file: %s; the last good version stays in use", problem)
        return False


class Plugin:
    class Config(PluginSettings):
        map: dict[str, str] = {}
        map_file: Path | None = None
        upstream_name: str = "{name}"

        @field_validator("map")
        @classmethod
        def _keys(cls, entries: dict[str, str]) -> dict[str, str]:
            written: dict[str, str] = {}  # key as looked up -> as written
            for key in entries:
                if (same := written.setdefault(entry_key(key), key)) != key:
                    raise ValueError(f"{same!r} and {key!r} are the same key")
            return entries

        @field_validator("upstream_name")
        @classmethod
        def _template(cls, template: str) -> str:
            try:
                fields = [part[1:] for part in string.Formatter().parse(template) if part[1] is not None]
            except ValueError as exc:  # an unmatched brace
                raise ValueError(f"{template!r}: {exc}") from None
            names = {name for name, _, _ in fields}
            plain = not any(spec or conversion for _, spec, conversion in fields)
            if "name" not in names or not names <= TEMPLATE_FIELDS or not plain:
                raise ValueError(f"{template!r} must have {{name}}, may have {{protocol}}, and nothing else in braces")
            return template

    def __init__(self, settings: Config, context) -> None:
        config = context.config
        source = str(config.path or "config")
        names = UpstreamNames(settings.upstream_name, config)
        self._inline: dict[str, Entry] = {}
        for key, name in settings.map.items():
            try:
                self._inline[entry_key(key)] = names.resolve(name)
            except ValueError as exc:
                raise ConfigError(f"{source}: plugin.{PLUGIN}.map.{key}: {exc}") from None
        self._file: MapFile | None = None
        if settings.map_file is not None:
            path = settings.map_file
            if not path.is_absolute() and config.path is not None:
                path = config.path.resolve().parent / path
            try:
                self._file = MapFile(path, names.resolve)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{source}: plugin.{PLUGIN}.map_file: {_describe(exc, path)}") from None
        self._routes = self._merged()

    def _merged(self) -> dict[str, Entry]:
        return {**self._inline, **self._file.entries} if self._file else self._inline

    def upstream_for(self, protocol: str, username: str) -> str | None:
        """The upstream of the first entry that matches, or None for the listener's own.
        A final dot of the domain is no other domain (`bob@example.test.` is bob)."""
        name = username.strip().lower()
        local, at, domain = name.rpartition("@")
        if at and domain.endswith("."):
            domain = domain.rstrip(".")
            name = f"{local}@{domain}"
        domain = domain if at else None
        entry = self._routes.get(name) or (domain and self._routes.get(f"@{domain}")) or self._routes.get("*")
        return entry.get(protocol) if entry else None

    @hookimpl
    def route(self, session: Session, username: str) -> str | None:
        if self._file is not None and self._file.refresh():
            self._routes = self._merged()
        upstream = self.upstream_for(session.protocol, username)
        count(PLUGIN, "lookup", "default" if upstream is None else "routed")
        return upstream
