"""A shipped plugin loaded as the proxy loads it (entry point, validated section,
context), with `[dns]` pointing at a test DNS server, and sessions to call it with."""

from __future__ import annotations

import logging
from typing import Any

from mailproxy import Envelope, PluginContext, Session
from mailproxy.config import Config
from mailproxy.plugins import discover, instantiate
from mailproxy.state import MemoryState

HOSTNAME = "proxy.test"
LISTEN = "127.0.0.1:2525"  # the proxy's own address, as far as the plugins know


def load_plugin(name: str, dns_server: str, **options: Any) -> Any:
    """The plugin `name` with `options` as its section; raises ConfigError as `check` would."""
    config = Config.model_validate({
        "proxy": {"hostname": HOSTNAME},
        "dns": {"servers": [dns_server], "timeout": 2.0},
        "upstreams": {"sink": {"address": "127.0.0.1:2526"}},
        "listeners": [{"name": "mx", "mode": "mx", "address": LISTEN, "upstream": "sink",
                       "local_domains": ["example.test"]}],
        "plugins": {"enabled": [name]},
        "plugin": {name: options},
    })
    context = PluginContext(MemoryState(), config, logging.getLogger("mailproxy.plugin"))
    instance, _settings = instantiate(name, discover([])[name].load(), options, context)
    return instance


def client_session(address: str = "192.0.2.1", mode: str = "mx", helo: str | None = None) -> Session:
    session = Session("smtp", mode, mode=mode)
    session.peer = (address, 40000)
    session.host_name = helo
    return session


def sender_envelope(address: str) -> Envelope:
    envelope = Envelope()
    envelope.mail_from = address
    return envelope
