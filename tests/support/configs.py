"""The configuration most integration tests start from, as nested dicts."""

from __future__ import annotations

# The smallest valid configuration file, for tests of one section: append or prepend
# the section under test (TOML tables may come in any order).
MINIMAL_TOML = """
[upstreams.local]
address = "127.0.0.1:2526"

[[listeners]]
name = "mx"
mode = "mx"
address = "127.0.0.1:2525"
upstream = "local"
local_domains = ["example.test"]
"""


def base_config(sink_address: str, certs, users_file, **overrides) -> dict:
    """An mx and a submission listener (both STARTTLS) in front of one upstream."""
    _, cert, key = certs
    config = {
        # Name lookups would depend on the machine's resolver; tests that need them
        # start their own DNS server.
        "proxy": {"hostname": "proxy.test", "resolve_client_names": False},
        "auth": {
            "backends": ["file"],
            "users_file": str(users_file),
            "max_failures": 3,
            "throttle": "delay",
            "throttle_delay": 0.0,
        },
        "upstreams": {"sink": {"address": sink_address, "connect_timeout": 3.0, "reply_timeout": 5.0}},
        "listeners": [
            {
                "name": "mx",
                "mode": "mx",
                "tls": "starttls",
                "cert_file": str(cert),
                "key_file": str(key),
                "upstream": "sink",
                "local_domains": ["example.test"],
            },
            {
                "name": "submission",
                "mode": "submission",
                "tls": "starttls",
                "cert_file": str(cert),
                "key_file": str(key),
                "upstream": "sink",
            },
        ],
        "plugins": {"enabled": ["access"]},
        "plugin": {"access": {"deny_senders": ["*@spam.example"]}},
    }
    # `listener={...}`: settings for every listener (e.g. data_mode).
    every_listener = overrides.pop("listener", None) or {}
    for listener in config["listeners"]:
        listener.update(every_listener)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
