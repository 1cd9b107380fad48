"""Assemble a running proxy from a validated configuration: shared state, plugins
(credential backends first), the policy engine and one runtime per listener.

`mailproxy check` builds exactly this and stops, so whatever `check` accepts, `run`
can start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import metrics
from .auth.file import FileBackend
from .auth.throttle import AuthThrottle
from .auth.upstream import UpstreamBackend
from .config import Config, ConfigError
from .dns import Resolver
from .plugins import LoadedPlugin, PluginContext, PluginSettings, load_plugins, new_plugin_manager, register
from .policy import PolicyEngine
from .proxy.runtime import ListenerRuntime, server_tls_context
from .proxy.upstream_link import client_tls_context
from .state import SharedState, make_state, with_local_fallback


@dataclass
class Application:
    config: Config
    state: SharedState
    plugins: list[LoadedPlugin]
    policy: PolicyEngine
    listeners: list[ListenerRuntime]


def _auth_backends(config: Config) -> list[tuple[str, object, PluginSettings]]:
    backends = []
    for name in config.auth.backends:
        if name == "file":
            try:
                backends.append(("auth:file", FileBackend(config.auth.users_file), PluginSettings()))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{config.path}: auth.users_file: {exc}") from None
        else:
            backends.append(("auth:upstream", UpstreamBackend(), PluginSettings(timeout=_upstream_login_time(config))))
    return backends


def _upstream_login_time(config: Config) -> float:
    """How long the `upstream` backend may take: opening an upstream session and logging
    in there, each step within the upstream's own deadlines. A plugin's default of 5 s
    would cut off a store that delays wrong answers (Dovecot: 2 s, plus up to 15 s of
    penalty per address), and turn correct passwords into temporary failures."""
    longest = max(u.connect_timeout + 3 * u.reply_timeout for u in config.upstreams.values())
    return min(longest, 300.0)


def build(config: Config) -> Application:
    state = make_state(config.state)
    manager = new_plugin_manager()
    loaded = [
        register(manager, name, "built-in credential backend", backend, settings)
        for name, backend, settings in _auth_backends(config)
    ]
    context = PluginContext(state=state, config=config, logger=logging.getLogger("mailproxy.plugin"))
    loaded += load_plugins(config, context, manager)
    policy = PolicyEngine(manager, loaded, config.policy)
    # While a networked state backend is unavailable, AUTH failures are counted per
    # process: guessing stays limited and correct passwords keep working.
    throttle = AuthThrottle(config.auth, with_local_fallback(state))
    resolver = Resolver(config.dns) if config.proxy.resolve_client_names else None
    upstreams = {}
    for name, upstream in config.upstreams.items():
        try:
            upstreams[name] = (upstream, client_tls_context(upstream))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"{config.path}: upstreams.{name}: TLS setup failed: {exc}") from None
    listeners = []
    for index, settings in enumerate(config.listeners):
        upstream, upstream_tls = upstreams[settings.upstream]
        try:
            server_tls = server_tls_context(settings)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"{config.path}: listeners[{index}]: TLS setup failed: {exc}") from None
        listeners.append(
            ListenerRuntime(
                settings=settings,
                hostname=config.proxy.hostname,
                upstream_name=settings.upstream,
                upstream=upstream,
                upstream_tls=upstream_tls,
                server_tls=server_tls,
                policy=policy,
                auth=config.auth,
                throttle=throttle,
                resolver=resolver,
                upstreams=upstreams,
            )
        )
    metrics.declare_series(
        smtp_listeners=[s.name for s in config.listeners if s.protocol == "smtp"],
        upstreams=list(config.upstreams),
        plugin_hooks={plugin.name: plugin.hooks for plugin in loaded},
        # Only a networked backend can fail; its label is the backend's name.
        state_backend=config.state.backend if config.state.backend != "memory" else None,
    )
    return Application(config, state, loaded, policy, listeners)
