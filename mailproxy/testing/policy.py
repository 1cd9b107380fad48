"""Play an SMTP session against a plugin through the policy engine, without sockets.

`policy_session(plugin, options)` loads the plugin as the proxy does (its section
checked by its `Config`, registered on a plugin manager, its hooks run by the real
`PolicyEngine` with timeouts, fail modes, observe mode and score thresholds) and returns
a `ScriptedSession`: one client connection whose commands run the hooks in the order
the SMTP session runs them, and return the reply the client would get.

Which replies are the proxy's and which stand in for the upstream's:
- a refusal (by a plugin, a score threshold or a plugin's failure) is rendered as the
  SMTP session renders it; at connect as a greeting, `421 <hostname> text` or `554 text`;
- AUTH, STARTTLS and a message over `max_message_size` are answered as the proxy
  answers them;
- a command that nobody refused goes to the upstream, whose reply the client gets: here
  a willing upstream answers (`220` to the connection, `250` to a command), and the
  result's `origin` is "upstream".
The proxy's own protocol rules (HELO before MAIL, relaying, recipient limits, ESMTP
parameters) are not played: a script says what the client does; the real proxy
(`PluginProxy`) judges the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..config import Config
from ..hookspecs import PROJECT
from ..plugins import (
    PluginContext, PluginSettings, hookimpl, instantiate, load_plugins, new_plugin_manager, register,
)
from ..policy import PolicyEngine
from ..protocol.smtp_headers import header_block
from ..protocol.smtp_message import WireReceiver
from ..proxy.smtp_data import TOO_BIG
from ..session import Envelope, Session
from ..state import MemoryState, SharedState
from ..verdict import Action, Reply, Verdict
from .loading import HOSTNAME, LOCAL_DOMAINS, config_for, locate, validated

# What `session.ssl` holds after a TLS handshake, for scripts that say `tls=True`.
TLS_FACTS = {"cipher": ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256), "version": "TLSv1.3"}
# Made-up addresses for the listener and upstream a plugin's context describes; nothing
# listens there.
_LISTEN, _UPSTREAM = "127.0.0.1:2525", "127.0.0.1:2526"


class ScriptError(Exception):
    """A script no client could play: a command after the session ended, DATA before a
    recipient was accepted, ..."""


class SessionClosed(ScriptError):
    """The session has ended: QUIT, a disconnect verdict, a refused connection."""


@dataclass(frozen=True)
class Result:
    """What one command came to.

    `reply` is what the client is sent (None: nothing, as for a refusal a plugin gave
    without a reply). `verdict` is the policy's decision for the command. `origin` is
    "proxy" for a reply the proxy sends itself, refusals included, exactly as it sends
    it; "upstream" where the upstream would answer, here a willing one. `closes`: the
    session ends after this reply. `message`: after `data()`, the message as the
    upstream receives it (added header lines first).
    """

    reply: Reply | None
    verdict: Verdict
    origin: str
    closes: bool = False
    message: bytes | None = None

    @property
    def code(self) -> int | None:
        return self.reply.code if self.reply else None

    @property
    def enhanced(self) -> str | None:
        return self.reply.enhanced if self.reply else None

    @property
    def text(self) -> str:
        return self.reply.text if self.reply else ""

    @property
    def refused(self) -> bool:
        return self.verdict.action.is_refusal

    @property
    def lines(self) -> list[str]:
        """The reply as it goes on the wire, one string per line without CRLF."""
        return self.reply.lines() if self.reply else []

    def __str__(self) -> str:
        return "\n".join(self.lines)


class ScriptedSession:
    """One client connection to a proxy running the plugin.

    Every command is a coroutine returning a `Result`. A command sent before `connect()`
    connects first, from 192.0.2.1. `session` and `envelope` are the objects the hooks
    see; `plugin` is the plugin's instance.
    """

    def __init__(self, engine: PolicyEngine, config: Config, plugin: Any) -> None:
        self.engine = engine
        self.plugin = plugin
        self._config = config
        self._hostname = config.proxy.hostname
        listener = config.listeners[0]
        self._max_message_size = listener.max_message_size
        self.session = Session("smtp", listener.name, listener.mode)
        self.envelope = Envelope()
        self._connected = False
        self._ended: str | None = None  # why the session ended, once it has

    def new_session(self) -> ScriptedSession:
        """Another connection to the same proxy: the same plugin instance (and so its
        state and counters), a new Session."""
        return ScriptedSession(self.engine, self._config, self.plugin)

    # --- the connection ------------------------------------------------------------------

    async def connect(
        self, client: str = "192.0.2.1", port: int = 40000, *, client_name: str | None = None, tls: bool = False
    ) -> Result:
        """The client connects from `client`; `client_name` is its verified host name
        (the proxy looks it up with `resolve_client_names`); `tls`: implicit TLS."""
        if self._connected or self._ended:
            raise ScriptError("connect() comes once, first; new_session() is another connection")
        self._connected = True
        session = self.session
        session.peer = (client, port)
        session.client_name = client_name
        if tls:
            session.ssl = dict(TLS_FACTS)
        verdict = await self.engine.run("smtp_connect", session, self.envelope)
        if verdict.action.is_refusal:
            return await self._refused(verdict.as_greeting(self._hostname))
        return self._upstream(verdict, 220, None, f"{self._hostname} ESMTP")

    async def quit(self) -> Result:
        if refused := await self._command("QUIT"):
            return refused
        return await self._end(Result(Reply(221, "2.0.0", "Bye"), Verdict.cont(), "upstream"))

    async def disconnect(self) -> None:
        """The client goes away without QUIT."""
        if self._ended:
            return
        if self._connected:
            await self._end(None)
        self._ended = "the client disconnected"

    # --- commands ------------------------------------------------------------------------

    async def ehlo(self, hostname: str) -> Result:
        return await self._greet(hostname, extended=True)

    async def helo(self, hostname: str) -> Result:
        return await self._greet(hostname, extended=False)

    async def _greet(self, hostname: str, extended: bool) -> Result:
        if refused := await self._command("EHLO" if extended else "HELO", hostname):
            return refused
        await self._reset_transaction()
        session = self.session
        session.extended_smtp = extended
        verdict = await self.engine.run("smtp_helo", session, self.envelope, hostname=hostname)
        if verdict.action.is_refusal:
            return await self._refused(verdict)
        session.host_name = hostname
        return self._upstream(verdict, 250, None, self._hostname)

    async def starttls(self) -> Result:
        """STARTTLS and a successful handshake: what the client said before is forgotten
        (RFC 3207 4.2), its EHLO and any login included."""
        if refused := await self._command("STARTTLS"):
            return refused
        await self._reset_transaction()
        session = self.session
        session.ssl = dict(TLS_FACTS)
        session.host_name, session.extended_smtp = None, False
        session.authenticated, session.username, session.login_data = False, None, None
        return Result(Reply(220, "2.0.0", "Ready to start TLS"), Verdict.cont(), "proxy")

    async def auth(self, username: str, password: str, mechanism: str = "PLAIN") -> Result:
        """AUTH with these credentials: the `smtp_auth` policy, then `authenticate`,
        asked of the `users` given to `policy_session` first and then the plugin."""
        if refused := await self._command("AUTH", mechanism):
            return refused
        session = self.session
        verdict = await self.engine.run("smtp_auth", session, self.envelope, mechanism=mechanism, username=username)
        if verdict.action.is_refusal:
            return await self._refused(verdict)
        valid, failures = await self.engine.first_result(
            "authenticate", session=session, mechanism=mechanism, username=username, password=password
        )
        if valid is True:
            session.authenticated = True
            session.username = session.login_data = username
            return Result(Reply(235, "2.7.0", "Authentication successful"), verdict, "proxy")
        if valid is None and failures:
            return Result(Reply(454, "4.7.0", "Temporary authentication failure"), verdict, "proxy")
        return Result(Reply(535, "5.7.8", "Authentication credentials invalid"), verdict, "proxy")

    async def mail(self, address: str, params: dict[str, str | bool] | None = None) -> Result:
        """MAIL FROM:<address>; `params` are ESMTP parameters ({"SIZE": "1000"})."""
        await self._open()
        if self.envelope.mail_from is not None:
            raise ScriptError("mail() inside a transaction: data() or rset() ends it first")
        return await self._path("MAIL", "FROM", address, params)

    async def rcpt(self, address: str, params: dict[str, str | bool] | None = None) -> Result:
        await self._open()
        if self.envelope.mail_from is None:
            raise ScriptError("rcpt() needs a mail() that passed first")
        return await self._path("RCPT", "TO", address, params)

    async def _path(self, verb: str, keyword: str, address: str, params: dict | None) -> Result:
        params = {name.upper(): value for name, value in (params or {}).items()}
        shown = "".join(f" {name}" if value is True else f" {name}={value}" for name, value in params.items())
        if refused := await self._command(verb, f"{keyword}:<{address}>{shown}"):
            return refused
        envelope = self.envelope
        # Header lines added for a refused MAIL or RCPT do not belong to the message.
        kept = len(envelope.added_headers)
        verdict = await self.engine.run(
            f"smtp_{verb.lower()}", self.session, envelope, address=address, params=params
        )
        if verdict.action.is_refusal:
            del envelope.added_headers[kept:]
            return await self._refused(verdict)
        if verb == "MAIL":
            envelope.mail_from, envelope.mail_params = address, params
            envelope.smtp_utf8 = "SMTPUTF8" in params
            return self._upstream(verdict, 250, "2.1.0", "Ok")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append([name if value is True else f"{name}={value}" for name, value in params.items()])
        return self._upstream(verdict, 250, "2.1.5", "Ok")

    async def data(self, message: bytes) -> Result:
        """DATA and `message`, as a client such as smtplib sends it (not dot-stuffed;
        any line ends). The data hooks read it as the proxy passes it: CRLF line ends,
        no dot-stuffing."""
        await self._open()
        envelope = self.envelope
        if envelope.mail_from is None or not envelope.rcpt_tos:
            raise ScriptError("data() needs a mail() and a rcpt() that passed first")
        if refused := await self._command("DATA"):
            return refused
        received = _receive(message, self._max_message_size)
        if received.overflow:
            return await self._refuse_message(TOO_BIG)
        envelope.content = received.content
        verdict = await self.engine.run("smtp_data", self.session, envelope, message=envelope.content)
        if verdict.action.is_refusal:
            return await self._refuse_message(verdict)
        # The action stage, as the proxy runs it once the score is final: the score's
        # refusal, or the X-Spam-* (and X-Mailproxy-Trace) lines added.
        final = self.engine.act(self.session, envelope)
        if final.action.is_refusal:
            return await self._refuse_message(final)
        forwarded = header_block(envelope.added_headers) + envelope.content
        self.session.transactions += 1
        self.envelope = Envelope()  # delivered: a new transaction, no smtp_reset
        return dataclasses.replace(self._upstream(verdict, 250, "2.0.0", "Ok: queued"), message=forwarded)

    async def rset(self) -> Result:
        if refused := await self._command("RSET"):
            return refused
        await self._reset_transaction()
        return self._upstream(Verdict.cont(), 250, "2.0.0", "Ok")

    async def command(self, verb: str, argument: str = "") -> Result:
        """Any other command line (NOOP, VRFY, XFOO ...): only `smtp_command` judges it."""
        if refused := await self._command(verb.upper(), argument):
            return refused
        return self._upstream(Verdict.cont(), 250, "2.0.0", "Ok")

    # --- as the SMTP session does it ---------------------------------------------------------

    async def _open(self) -> None:
        if self._ended:
            raise SessionClosed(f"the session has ended: {self._ended}")
        if not self._connected:
            greeting = await self.connect()
            if greeting.refused:
                raise SessionClosed(f"the connection was refused: {greeting}")

    async def _command(self, verb: str, argument: str = "") -> Result | None:
        """The `smtp_command` hook, which every command line meets first; its refusal
        answers the command."""
        await self._open()
        if not self.engine.has("smtp_command"):
            return None
        verdict = await self.engine.run("smtp_command", self.session, self.envelope, verb=verb, argument=argument)
        return await self._refused(verdict) if verdict.action.is_refusal else None

    async def _refused(self, verdict: Verdict) -> Result:
        result = Result(verdict.reply, verdict, "proxy")
        if verdict.action is Action.DISCONNECT:
            return await self._end(result)
        return result

    async def _refuse_message(self, verdict: Verdict) -> Result:
        await self._reset_transaction()
        return await self._refused(verdict)

    async def _reset_transaction(self) -> None:
        if self.envelope.mail_from is not None:
            await self.engine.notify("smtp_reset", session=self.session, envelope=self.envelope)
        self.envelope = Envelope()

    async def _end(self, result: Result | None) -> Result | None:
        """The session is over: the hooks hear of it as the proxy tells them."""
        self._ended = str(result) if result is not None and result.reply else "the session ended"
        await self._reset_transaction()
        await self.engine.notify("smtp_disconnect", session=self.session)
        return dataclasses.replace(result, closes=True) if result else None

    def _upstream(self, verdict: Verdict, code: int, enhanced: str | None, text: str) -> Result:
        return Result(Reply(code, enhanced, text), verdict, "upstream")


def _receive(message: bytes, limit: int) -> WireReceiver:
    """`message` through the proxy's own receiver, sent as a careful client sends it:
    every line ended with CRLF, leading dots doubled, then the end marker."""
    wire = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    wire = re.sub(rb"(?m)^\.", b"..", wire)
    receiver = WireReceiver(limit, content=True)
    if not receiver.feed(wire + b".\r\n"):
        raise AssertionError("the end marker was not seen")  # a bug here, not in the script
    return receiver


class _Users:
    """The logins given as `users`, asked before the plugin, as `[auth] backends` are."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = dict(users)

    @hookimpl
    def authenticate(self, username: str, password: str) -> bool | None:
        known = self._users.get(username)
        return None if known is None else known == password


# A module without a Plugin class: its section may hold only what every plugin's does.
_SETTINGS_ONLY = ModuleType(f"{PROJECT}_settings_only")


def policy_session(
    plugin: Any,
    options: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    mode: str = "mx",
    hostname: str = HOSTNAME,
    local_domains: tuple[str, ...] | list[str] = LOCAL_DOMAINS,
    listener: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    users: dict[str, str] | None = None,
    state: SharedState | None = None,
    config: dict[str, Any] | None = None,
) -> ScriptedSession:
    """Load `plugin` as the proxy would and return a session to script against it.

    `plugin`: a module or a `Plugin` class (as imported by the test), an instance, the
    path of a drop-in file, or the name of an installed plugin. `options`: its
    `[plugin.NAME]` section, checked by its `Config` (a `ConfigError` as `mailproxy
    check` words it). `name`: the plugin's name, for a module, class or instance (a
    drop-in's is its file name, an installed plugin's its entry point's). `mode`: the
    listener's, "mx" or "submission"; `listener`: more of its settings, such as
    `max_message_size`. `policy`: the `[policy]` section (score thresholds). `users`:
    logins and passwords that AUTH accepts. `state`: the plugin context's shared state
    (in memory by default). `config`: further sections of the configuration the
    plugin's context holds, such as `{"dns": {...}}`.
    """
    instance = None
    if not isinstance(plugin, (str, os.PathLike, ModuleType, type)):
        instance, plugin = plugin, type(plugin)
    located = locate(plugin)
    if name is not None:
        if located.target is None:
            raise ValueError("name= is for a module, class or instance: a drop-in's name is its file name")
        located = dataclasses.replace(located, name=name)
    settings = config_for(
        located, options, mode=mode, hostname=hostname, local_domains=local_domains,
        listen=_LISTEN, upstream=_UPSTREAM, policy=policy, listener=listener, extra=config,
    )
    checked = validated(settings)
    context = PluginContext(state or MemoryState(), checked, logging.getLogger("mailproxy.plugin"))
    manager = new_plugin_manager()
    loaded = []
    if users:
        loaded.append(register(manager, "auth:users", "mailproxy.testing users", _Users(users), PluginSettings()))
    options = dict(options or {})
    if instance is not None:
        _, plugin_settings = instantiate(located.name, _SETTINGS_ONLY, options, context)
        loaded.append(register(manager, located.name, "an instance", instance, plugin_settings))
    elif located.target is not None:
        built, plugin_settings = instantiate(located.name, located.target, options, context)
        loaded.append(register(manager, located.name, repr(located.target), built, plugin_settings))
    else:  # a drop-in file or an installed plugin's name: the proxy's own loader
        loaded += load_plugins(checked, context, manager)
    return ScriptedSession(PolicyEngine(manager, loaded, checked.policy), checked, loaded[-1].instance)
