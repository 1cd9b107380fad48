"""The shipped plugins' settings as their documentation states them: every documented
default is what a section that leaves the key out gets, and every bound takes its
widest value and refuses the next one with a message that names the key.

The defaults come from the tables in docs/plugins.md, and for `headers` and `pregreet`
from the example section in the module's docstring (the one place their options are
documented); the bounds are written out here, because the code's own are what is
under test."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mailproxy.config import ConfigError
from mailproxy.plugins import discover
from tests.support.plugins import load_plugin

ROOT = Path(__file__).resolve().parents[2]
DNS = "127.0.0.1:53"  # never asked: building a plugin makes no DNS queries
DAY = 86400

# Sections of docs/plugins.md whose tables hold a plugin's options, and the plugins
# each applies to.
DOCUMENTED_SECTIONS = {
    "What the DNS checks share": ("spf", "dnsbl", "helo"),
    "spf": ("spf",),
    "dnsbl": ("dnsbl",),
    "helo": ("helo",),
    "greylist": ("greylist",),
    "ratelimit": ("ratelimit",),
}
DOCSTRING_SECTIONS = ("headers", "pregreet")
_ROW = re.compile(r"^\| ([^|]+) \| ([^|]+) \|", re.MULTILINE)
_CODE = re.compile(r"`([^`]+)`")


def plugin_class(name: str) -> type:
    target = discover([])[name].load()
    return target if isinstance(target, type) else target.Plugin


def literal(text: str):
    """A TOML value, or None for prose ("unset", "[proxy] hostname")."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return None


def from_docs() -> list[tuple[str, str, object]]:
    """(plugin, key, default) for each default the tables of docs/plugins.md state."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    found = []
    for heading, plugins in DOCUMENTED_SECTIONS.items():
        section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
        for key_cell, default_cell in _ROW.findall(section):
            keys, values = _CODE.findall(key_cell), [literal(v) for v in _CODE.findall(default_cell)]
            if not keys or not values or None in values:
                continue  # the header row, or a default given in words
            if len(values) == 1:
                values *= len(keys)  # `on_neutral`, `on_none` | `"off"`
            assert len(values) == len(keys), f"{heading}: {key_cell} | {default_cell}"
            found += [(plugin, key, value) for plugin in plugins for key, value in zip(keys, values)]
    return found


def from_docstrings() -> list[tuple[str, str, object]]:
    """(plugin, key, default) for each key of the `[plugin.NAME]` example in the
    module's docstring, up to its first array of tables (the rules, which are examples)."""
    found = []
    for name in DOCSTRING_SECTIONS:
        doc = discover([])[name].load().__doc__
        block = doc.split(f"    [plugin.{name}]\n", 1)[1].split("\n\n", 1)[0]
        found += [(name, key, value) for key, value in tomllib.loads(block).items()]
    return found


DEFAULTS = from_docs() + from_docstrings()


def test_the_documentation_states_defaults_for_every_shipped_check():
    # A table reshaped so that the parser above finds nothing would turn the test below
    # into no test at all.
    assert {plugin for plugin, _key, _value in DEFAULTS} == {
        "spf", "dnsbl", "helo", "greylist", "ratelimit", "headers", "pregreet"}
    assert len(DEFAULTS) >= 60


@pytest.mark.parametrize("plugin, key, documented", DEFAULTS, ids=[f"{p}.{k}" for p, k, _v in DEFAULTS])
def test_a_key_left_out_takes_its_documented_default(plugin, key, documented):
    # An administrator reads the documentation to know what a section that leaves a key
    # out does; a default that drifted from it (a softer SPF fail, a shorter greylisting
    # delay) changes what the proxy lets through without anyone having asked for it.
    value = getattr(plugin_class(plugin).Config(), key)
    if isinstance(value, (tuple, frozenset, set)):
        value = sorted(value)
    assert value == documented


# (plugin, key, the bound, its limit): the limit itself is taken (for `gt`, a little
# more), one past it refused.
BOUNDS = [
    ("greylist", "retry_window", "le", 30 * DAY),
    ("greylist", "expiry", "le", 366 * DAY),
    ("greylist", "ipv4_prefix", "ge", 8),
    ("greylist", "ipv6_prefix", "ge", 16),
    ("greylist", "ipv6_prefix", "le", 128),
    ("ratelimit", "window", "le", DAY),
    # 0 turns a limit off: written out, not only left to the default.
    *[("ratelimit", limit, "ge", 0) for limit in (
        "client_connections", "client_messages", "client_recipients", "user_messages", "user_recipients",
        "sender_domain_messages", "sender_domain_recipients")],
    ("ratelimit", "ipv4_prefix", "ge", 8),
    ("ratelimit", "ipv4_prefix", "le", 32),
    ("ratelimit", "ipv6_prefix", "ge", 16),
    ("ratelimit", "ipv6_prefix", "le", 128),
    ("headers", "max_parts", "ge", 1),
    ("headers", "max_parts", "le", 1000),
    ("headers", "max_depth", "ge", 1),
    ("headers", "max_depth", "le", 100),
    ("headers", "max_text_bytes", "ge", 1),
    ("headers", "max_archive_bytes", "ge", 0),
    ("headers", "max_archive_members", "ge", 1),
    ("headers", "thread_bytes", "ge", 0),
    ("headers", "threads", "ge", 1),
    ("headers", "threads", "le", 64),
    ("headers", "timeout", "gt", 0),
    ("headers", "timeout", "le", 300),
    ("pregreet", "greet_wait", "gt", 0),
    ("pregreet", "greet_wait", "le", 60),
]
# What a key's widest value needs beside it: pregreet waits within its hook's timeout.
ALONGSIDE = {("pregreet", "greet_wait"): {"timeout": 61.0}}
_EDGE = {  # bound -> (widest taken, first refused, pydantic's refusal)
    "ge": (lambda n: n, lambda n: n - 1, "Input should be greater than or equal to {}"),
    "gt": (lambda n: n + 0.001, lambda n: n, "Input should be greater than {}"),
    "le": (lambda n: n, lambda n: n + 1, "Input should be less than or equal to {}"),
}


@pytest.mark.parametrize("plugin, key, bound, limit", BOUNDS, ids=[f"{p}.{k}-{b}-{n}" for p, k, b, n in BOUNDS])
def test_a_bound_takes_its_widest_value_and_refuses_the_next_naming_the_key(plugin, key, bound, limit):
    # A documented extreme must load, and a value past it must stop `mailproxy check`
    # with the key named, not load a limit that parses nothing or everything.
    widest, refused, refusal = _EDGE[bound]
    alongside = ALONGSIDE.get((plugin, key), {})
    load_plugin(plugin, DNS, **alongside, **{key: widest(limit)})
    with pytest.raises(ConfigError) as error:
        load_plugin(plugin, DNS, **alongside, **{key: refused(limit)})
    assert str(error.value) == f"config: plugin.{plugin}.{key}: {refusal.format(limit)}"


# (plugin, the hook's timeout alone, the wait inside the hook left at its default, the refusal)
INNER_WAITS = [
    ("spf", 10.0, "check_timeout", "must end at least 1s before timeout (10)"),
    ("dnsbl", 2.0, "lookup_timeout", "must be less than timeout (2), the limit of the whole hook"),
    ("helo", 1.5, "lookup_timeout", "must be less than timeout (1.5), the limit of the whole hook"),
    ("pregreet", 3.0, "greet_wait", "must be less than timeout (3), the limit of the whole hook"),
]


@pytest.mark.parametrize("plugin, timeout, inner, refusal", INNER_WAITS, ids=[p for p, *_rest in INNER_WAITS])
def test_a_hook_timeout_below_a_default_wait_inside_it_is_refused(plugin, timeout, inner, refusal):
    # `timeout = 10` alone, with SPF's check_timeout left at its default 10 s, would cut
    # every check off at the hook's limit: a sender whose DNS is down would get the
    # plugin-failure 451 instead of its configured temperror action, for every message.
    # The default wait is held to the timeout as a written-out one is.
    with pytest.raises(ConfigError) as error:
        load_plugin(plugin, DNS, timeout=timeout)
    assert str(error.value) == f"config: plugin.{plugin}.{inner}: {refusal}"
