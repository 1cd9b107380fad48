"""Load and validate the TOML configuration.

Validation is declarative (pydantic models); `load_config` turns every problem into a
`ConfigError` whose lines read `FILE: key.path: what is wrong`, never a traceback.
Relative paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

TlsMode = Literal["none", "starttls", "implicit"]


class ConfigError(Exception):
    """A configuration problem, already phrased for the administrator."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_endpoint(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string like 127.0.0.1:25 or [::1]:25")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (IPv6 as [addr]:port, port 1-65535)")
    return Endpoint(host, int(port))


def _parse_ip_endpoint(value: Any) -> Endpoint:
    endpoint = _parse_endpoint(value)
    try:
        ip = ipaddress.ip_address(endpoint.host)
    except ValueError:
        raise ValueError(f"{endpoint.host!r} is not an IP address to listen on") from None
    # Canonical spelling, so that [::1] and [0:0::1] are seen as the same listen address.
    return Endpoint(str(ip), endpoint.port)


def _parse_dns_server(value: Any) -> Endpoint:
    if isinstance(value, str):
        try:  # a bare address means the standard port
            ipaddress.ip_address(value)
            value = f"[{value}]:53" if ":" in value else f"{value}:53"
        except ValueError:
            pass
    return _parse_ip_endpoint(value)


AnyEndpoint = Annotated[Endpoint, BeforeValidator(_parse_endpoint)]
DnsServer = Annotated[Endpoint, BeforeValidator(_parse_dns_server)]
# Sections are strict (`workers = true` is an error, not 1), except that paths come
# from TOML as strings.
FilePath = Annotated[Path, Field(strict=False)]
ListenEndpoint = Annotated[Endpoint, BeforeValidator(_parse_ip_endpoint)]


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    if path is None:
        return None
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else (base / path)


def _existing_file(path: Path | None, info: ValidationInfo) -> Path | None:
    path = _resolve(path, info)
    if path is not None and not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ProxySettings(_Section):
    hostname: str = Field(default_factory=socket.gethostname, min_length=1)
    workers: int = Field(1, ge=1, le=64)
    shutdown_grace: FiniteFloat = Field(10.0, ge=0)
    # Seconds between SIGTERM and closing the listeners, while /readyz already says
    # "stopping": time for a load balancer's health checks to notice.
    shutdown_delay: FiniteFloat = Field(0.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Look up each client's verified (forward-confirmed) host name at connect: plugins
    # see it as session.client_name and XCLIENT passes it as NAME. On by default, as
    # Postfix itself does: without it the upstream can only be told [UNAVAILABLE], and
    # its reject_unknown_client_hostname would then refuse every client.
    resolve_client_names: bool = True


class DnsSettings(_Section):
    servers: list[DnsServer] = []  # empty: the system's resolv.conf
    timeout: float = Field(3.0, gt=0, le=30)


class MetricsSettings(_Section):
    listen: ListenEndpoint | None = None
    # Readiness (/readyz): each upstream a listener uses gets a TCP connection this
    # often, in seconds; 0 turns the probes off, and upstreams then count as reachable.
    upstream_probe_interval: FiniteFloat = Field(15.0, ge=0)
    upstream_probe_timeout: FiniteFloat = Field(2.0, gt=0)


def _redis_url(value: str) -> str:
    """Checks the form of a Redis URL without repeating it: it may hold a password."""
    usage = "use redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH"
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # raises for a port that is no number or out of range
    except ValueError:
        raise ValueError(f"not a Redis URL: {usage}") from None
    if parts.scheme in ("redis", "rediss"):
        database = parts.path.strip("/")
        if not parts.hostname or not (database == "" or database.isdigit()):
            raise ValueError(f"not a Redis URL: {usage}")
    elif parts.scheme != "unix" or not parts.path:
        raise ValueError(f"not a Redis URL: {usage}")
    return value


class StateSettings(_Section):
    # "memory": per process. "redis": one Redis server shared by every worker process
    # (and every proxy instance pointed at it), so throttles and plugin counters hold
    # globally.
    backend: Literal["memory", "redis"] = "memory"
    # The rest is for backend = "redis".
    url: Annotated[str, AfterValidator(_redis_url)] = "redis://127.0.0.1:6379/0"
    # Put before every key, so several proxies (or other programs) can share a server.
    key_prefix: str = Field("mailproxy:", max_length=64)
    # Seconds for one operation, connecting included. Past it the operation fails and
    # each caller's fail mode applies (docs/plugins.md, "Shared state").
    timeout: float = Field(1.0, gt=0, le=30)


class AuthSettings(_Section):
    backends: list[Literal["file", "upstream"]] = ["file"]
    users_file: FilePath | None = None
    max_failures: int = Field(5, ge=1)
    failure_window: FiniteFloat = Field(300.0, gt=0)
    throttle: Literal["delay", "disconnect"] = "delay"
    # The pause before an AUTH attempt is checked: throttle_delay after one failure from
    # the client's network, doubling with each further one, at most throttle_delay_max
    # (Dovecot's auth_penalty: 2 s doubling up to 15 s).
    throttle_delay: float = Field(2.0, ge=0, le=60)
    throttle_delay_max: float = Field(15.0, ge=0, le=300)
    # Failures are counted per network of this prefix length: one host in IPv4, one
    # subnet (an end site's /64) in IPv6, where a client picks from many addresses.
    ipv4_prefix: int = Field(32, ge=8, le=32)
    ipv6_prefix: int = Field(64, ge=16, le=128)

    _check_users_file = field_validator("users_file")(_existing_file)

    @field_validator("throttle_delay_max")
    @classmethod
    def _cap_not_below_start(cls, cap: float, info: ValidationInfo) -> float:
        start = info.data.get("throttle_delay")
        if start is not None and cap < start:
            raise ValueError(f"must be at least throttle_delay ({start})")
        return cap

    @model_validator(mode="after")
    def _file_backend_needs_users(self) -> AuthSettings:
        if "file" in self.backends and self.users_file is None:
            raise ValueError("backend 'file' needs users_file")
        return self


class UpstreamSettings(_Section):
    address: AnyEndpoint
    tls: TlsMode = "none"
    verify: bool = True
    ca_file: FilePath | None = None
    connect_timeout: FiniteFloat = Field(10.0, gt=0)
    reply_timeout: FiniteFloat = Field(120.0, gt=0)
    # Handing over the rest of a message and the reply to its end share their own,
    # longer limit (RFC 5321 4.5.3.2.6 allows 10 minutes for the reply): giving up early
    # on an upstream that has taken the message makes the client send it again, and it
    # is delivered twice.
    data_timeout: FiniteFloat = Field(600.0, gt=0)
    # While a client uploads a message, a NOOP this often keeps the upstream session
    # from timing out (Postfix allows 300 s, and only 10 s under stress).
    keepalive: FiniteFloat = Field(5.0, gt=0)
    # How the upstream learns the client's address: "auto" is the protocol's own way
    # (XCLIENT for SMTP and POP3, ID for IMAP); "proxy" sends a PROXY protocol v2
    # header first (POP3 and IMAP, for Dovecot's haproxy listeners); "none" tells it nothing.
    client_identity: Literal["auto", "xclient", "id", "proxy", "none"] = "auto"
    # The local address of connections to this upstream: lets the upstream trust the
    # proxy by address (Dovecot's login_trusted_networks) without trusting its host.
    source_address: str | None = None
    # A service credential: the proxy authenticates to the upstream as itself.
    username: str | None = None
    password: str | None = None

    _check_ca_file = field_validator("ca_file")(_existing_file)

    @field_validator("source_address")
    @classmethod
    def _ip_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None

    def identity_for(self, protocol: str) -> str | None:
        """The client identity this upstream gets from a session of `protocol`:
        "xclient", "id", "proxy" or "none"; None if `client_identity` is not for that
        protocol. SMTP upstreams get no PROXY header: Postfix takes XCLIENT."""
        own = "id" if protocol == "imap" else "xclient"
        if self.client_identity == "auto":
            return own
        suitable = (own, "none") if protocol == "smtp" else (own, "proxy", "none")
        return self.client_identity if self.client_identity in suitable else None

    @model_validator(mode="after")
    def _credential_pair(self) -> UpstreamSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class ListenerSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    protocol: Literal["smtp", "pop3", "imap"] = "smtp"
    mode: Literal["mx", "submission"] | None = None  # SMTP only, and required there
    address: ListenEndpoint
    tls: TlsMode = "none"
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    upstream: str
    local_domains: list[str] = []
    allow_plaintext_auth: bool = False
    # POP3 and IMAP: "hooks" runs the command hooks on every command after the login;
    # "pipe" makes the session a byte pipe once logged in (nginx's way), for sites that
    # want only the login policy: the least memory per session, no command hooks.
    after_login: Literal["hooks", "pipe"] = "hooks"
    # POP3 and IMAP: the time from connect to a successful login, whatever the client
    # sends meanwhile (nginx's mail proxy allows 60 s; idle_timeout applies after it).
    login_timeout: FiniteFloat = Field(60.0, gt=0)
    max_message_size: int = Field(10 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(100, ge=1)
    idle_timeout: FiniteFloat = Field(300.0, gt=0)
    # A whole command line must arrive within this many seconds, however it trickles
    # in (Postfix: smtpd_timeout as a per-record deadline).
    command_timeout: FiniteFloat = Field(300.0, gt=0)
    # DATA gets `command_timeout` plus one second per `min_data_rate` bytes received
    # (Postfix: smtpd_min_data_rate); 0 turns the rate floor off.
    min_data_rate: int = Field(500, ge=0)
    # "stream": DATA goes to the upstream at once and the message passes through as it
    # arrives, unless a plugin's smtp_data hook needs it whole. "whole": every message
    # is received completely before the upstream hears DATA (the upstream kept alive
    # with NOOPs), which shields an upstream with short timeouts from slow clients
    # (Postfix: smtpd_proxy_options = speed_adjust).
    data_mode: Literal["stream", "whole"] = "stream"
    # Errors (refused commands, bad syntax, cancelled AUTH, ...) per session: from
    # `soft_error_limit` on, every reply waits `error_sleep` seconds; at `max_errors`
    # the session ends with 421 (Postfix: smtpd_soft_error_limit, smtpd_error_sleep_time,
    # smtpd_hard_error_limit).
    soft_error_limit: int = Field(10, ge=1)
    error_sleep: float = Field(1.0, ge=0, le=60)
    max_errors: int = Field(20, ge=1)
    # Admission: simultaneous sessions per client address and in all (Postfix:
    # smtpd_client_connection_count_limit; behind a proxy Postfix sees one address, so
    # the proxy has to count). Counted per worker process.
    max_connections_per_client: int = Field(50, ge=1)
    max_connections: int = Field(1000, ge=1)

    _check_files = field_validator("cert_file", "key_file")(_existing_file)

    @property
    def kind(self) -> str:
        """"smtp mx", "smtp submission", "pop3": for logs."""
        return f"{self.protocol} {self.mode}" if self.mode else self.protocol

    @model_validator(mode="before")
    @classmethod
    def _protocol_defaults(cls, raw: Any) -> Any:
        # A mail store session may sit idle far longer than an SMTP one: RFC 1939 3
        # sets at least 10 minutes for POP3's autologout timer, RFC 9051 5.4 at least
        # 30 minutes for an IMAP session (IDLE included).
        idle = {"pop3": 600.0, "imap": 1800.0}.get(raw.get("protocol")) if isinstance(raw, dict) else None
        if idle is not None and "idle_timeout" not in raw:
            raw = {**raw, "idle_timeout": idle}
        return raw

    @field_validator("local_domains")
    @classmethod
    def _lowercase_domains(cls, domains: list[str]) -> list[str]:
        return [d.lower().rstrip(".") for d in domains]

    @model_validator(mode="after")
    def _consistent(self) -> ListenerSettings:
        if self.tls != "none" and (self.cert_file is None or self.key_file is None):
            raise ValueError(f"tls = {self.tls!r} needs cert_file and key_file")
        if self.protocol == "smtp":
            if self.mode is None:
                raise ValueError("an smtp listener needs mode (\"mx\" or \"submission\")")
            if self.mode == "mx" and not self.local_domains:
                raise ValueError("an mx listener needs local_domains (it refuses relaying)")
        else:
            for key in ("mode", "local_domains"):
                if getattr(self, key):
                    raise ValueError(f"{key} is for smtp listeners, not {self.protocol}")
        if self.protocol == "smtp" and self.after_login != "hooks":
            raise ValueError("after_login is for pop3 and imap listeners")
        return self


class PluginsSettings(_Section):
    enabled: list[str] = []
    directories: list[FilePath] = []

    @field_validator("directories")
    @classmethod
    def _existing_dirs(cls, paths: list[Path], info: ValidationInfo) -> list[Path]:
        resolved = [_resolve(p, info) for p in paths]
        for path in resolved:
            if not path.is_dir():
                raise ValueError(f"directory not found: {path}")
        return resolved

    @field_validator("enabled")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"listed twice: {', '.join(sorted(duplicates))}")
        return names


class ScoreSettings(_Section):
    # What the session's plus the message's points lead to (Rspamd's actions): a 5xx at
    # `reject_score`, a 4xx at `tempfail_score`, `X-Spam-Flag: YES` on the delivered
    # message at `add_header_score`. Unset: that action never happens, and with none set
    # scores are only recorded (logged and counted). Declared in the order they are
    # checked against each other.
    reject_score: FiniteFloat | None = None
    tempfail_score: FiniteFloat | None = None
    add_header_score: FiniteFloat | None = None
    # X-Spam-Score, X-Spam-Status and X-Spam-Symbols on every delivered message; unset
    # means on when add_header_score is set.
    spam_headers: bool | None = None

    @field_validator("tempfail_score", "add_header_score")
    @classmethod
    def _not_above_a_refusal(cls, value: float | None, info: ValidationInfo) -> float | None:
        # A lower action's threshold above a higher one's could never be reached.
        for higher in ("reject_score", "tempfail_score"):
            limit = info.data.get(higher)
            if higher != info.field_name and value is not None and limit is not None and value > limit:
                raise ValueError(f"{value:g} is above {higher} ({limit:g}), so it could never apply")
        return value


class PolicySettings(ScoreSettings):
    # X-Mailproxy-Trace on every delivered message: what each plugin said, in short.
    trace_header: bool = False
    # `[policy.authenticated]`: the score settings for sessions that logged in, instead
    # of the ones above; a threshold it leaves out does not apply to them.
    authenticated: ScoreSettings | None = None


class Config(_Section):
    proxy: ProxySettings = ProxySettings()
    metrics: MetricsSettings = MetricsSettings()
    dns: DnsSettings = DnsSettings()
    state: StateSettings = StateSettings()
    auth: AuthSettings = AuthSettings(backends=[])
    upstreams: dict[str, UpstreamSettings]
    listeners: list[ListenerSettings] = Field(min_length=1)
    plugins: PluginsSettings = PluginsSettings()
    policy: PolicySettings = PolicySettings()
    # Each plugin's own section; checked against the plugin's model when it is loaded.
    plugin: dict[str, dict[str, Any]] = {}
    path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> Config:
        names: set[str] = set()
        addresses: set[Endpoint] = set()
        for index, listener in enumerate(self.listeners):
            where = f"listeners[{index}]"
            if listener.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none defined"
                raise ValueError(
                    f"{where}.upstream: no upstream named {listener.upstream!r} ({known})"
                )
            if listener.name in names:
                raise ValueError(f"{where}.name: {listener.name!r} is used twice")
            if listener.address in addresses:
                raise ValueError(f"{where}.address: {listener.address} is used twice")
            upstream = self.upstreams[listener.upstream]
            if upstream.identity_for(listener.protocol) is None:
                raise ValueError(
                    f"upstreams.{listener.upstream}.client_identity: {upstream.client_identity!r} "
                    f"is not for {listener.protocol} listeners"
                )
            if listener.protocol != "smtp" and upstream.username is not None:
                raise ValueError(
                    f"upstreams.{listener.upstream}.username: a {listener.protocol} upstream logs "
                    "in as each user, with a service credential only for smtp"
                )
            names.add(listener.name)
            addresses.add(listener.address)
        for name in self.plugin:
            if name not in self.plugins.enabled:
                raise ValueError(f"plugin.{name}: section for a plugin that is not enabled")
        return self

    def upstream_for(self, listener: ListenerSettings) -> UpstreamSettings:
        return self.upstreams[listener.upstream]

    @property
    def longest_delivery(self) -> float:
        """The longest an upstream may take to take and answer a message (one
        data_timeout for both, see UpstreamConnection.send), with a margin: how long a
        shutdown waits, past `shutdown_grace`, for messages being handed over."""
        return max((u.data_timeout + u.reply_timeout for u in self.upstreams.values()), default=0.0)


def format_location(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        # Skip pydantic's internal step names ("function-after[...]") in the key path.
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and "[" in p))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        where = f"{format_location(loc)}: " if loc else ""
        lines.append(f"{source}: {where}{message}")
    return "\n".join(lines)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(raw, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(str(path), exc)) from None
    return config.model_copy(update={"path": path})
