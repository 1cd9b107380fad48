"""The route plugin loaded as the proxy loads it (entry point, validated section, the
whole configuration as its context), its hook called with real Sessions, its map file
on disk."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from mailproxy import PluginContext, Session
from mailproxy.app import build
from mailproxy.config import Config, ConfigError
from mailproxy.plugins import discover, instantiate
from mailproxy.state import MemoryState
from mailproxy_plugins.route import MAX_MAP_BYTES

SINK = {"address": "127.0.0.1:2526"}
# One POP3 listener in front of "one"; "two" and "three" are further mail stores.
POP3_ONLY = {
    "upstreams": {"main": SINK, "one": {"address": "127.0.0.1:1101"}, "two": {"address": "127.0.0.1:1102"},
                  "three": {"address": "127.0.0.1:1103"}},
    "listeners": [
        {"name": "mx", "mode": "mx", "address": "127.0.0.1:2525", "upstream": "main", "local_domains": ["example.test"]},
        {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1:1100", "upstream": "one"},
    ],
}
# POP3 and IMAP listeners, and each mail store's upstream per protocol.
BOTH = {
    "upstreams": {"main": SINK, **{f"{store}-{protocol}": {"address": f"127.0.0.1:{port}"}
                                   for store, base in (("one", 1100), ("two", 1200))
                                   for protocol, port in (("pop3", base + 10), ("imap", base + 43))}},
    "listeners": [
        {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1:1110", "upstream": "one-pop3"},
        {"name": "imap", "protocol": "imap", "address": "127.0.0.1:1143", "upstream": "one-imap"},
    ],
}
LOGGER = "mailproxy.plugin.route"


def load(options: dict, sections: dict = POP3_ONLY, path: Path | None = None):
    """The plugin with `options` as its section; raises ConfigError as `check` would."""
    config = Config.model_validate({**sections, "plugins": {"enabled": ["route"]}, "plugin": {"route": options}})
    config = config.model_copy(update={"path": path})
    context = PluginContext(MemoryState(), config, logging.getLogger("mailproxy.plugin"))
    instance, _settings = instantiate("route", discover([])["route"].load(), options, context)
    return instance


def route(plugin, username: str, protocol: str = "pop3") -> str | None:
    return plugin.route(session=Session(protocol, protocol), username=username)


def checks(check: str, result: str) -> float:
    labels = {"plugin": "route", "check": check, "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


def rewrite(path: Path, text: str) -> None:
    """Replace the file's text and move its mtime on by a second, whatever the file
    system's timestamp resolution."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


# --- lookups -------------------------------------------------------------------------------


def test_exact_address_then_domain_then_star():
    plugin = load({"map": {"bob@example.test": "two", "@example.test": "three", "*": "one"}})
    assert route(plugin, "bob@example.test") == "two"
    assert route(plugin, "Bob@Example.TEST") == "two"  # without regard to case
    assert route(plugin, "carol@EXAMPLE.test") == "three"
    assert route(plugin, "carol@sub.example.test") == "one"  # a subdomain is a domain of its own
    assert route(plugin, "dave@example.org") == "one"


def test_no_entry_means_the_listeners_own_upstream():
    plugin = load({"map": {"Bob@Example.test": "two", "@example.org": "three"}})
    assert route(plugin, "bob@example.test") == "two"
    assert route(plugin, "carol@example.test") is None
    assert route(plugin, "bob") is None  # a name without a domain matches no @domain entry


def test_a_username_without_a_domain_has_its_own_entry():
    plugin = load({"map": {"bob": "two", "@example.test": "three"}})
    assert route(plugin, "BOB") == "two"
    assert route(plugin, "bob@example.test") == "three"


def test_lookups_are_counted_by_result():
    plugin = load({"map": {"bob@example.test": "two"}})
    routed, default = checks("lookup", "routed"), checks("lookup", "default")
    route(plugin, "bob@example.test")
    route(plugin, "carol@example.test")
    route(plugin, "dave@example.test")
    assert (checks("lookup", "routed") - routed, checks("lookup", "default") - default) == (1, 2)


def test_the_policy_engine_asks_it_at_a_login():
    options = {"map": {"bob@example.test": "two"}}
    app = build(Config.model_validate({**POP3_ONLY, "plugins": {"enabled": ["route"]}, "plugin": {"route": options}}))
    ask = app.policy.first_result
    assert asyncio.run(ask("route", session=Session("pop3", "pop3"), username="bob@example.test")) == ("two", 0)
    assert asyncio.run(ask("route", session=Session("pop3", "pop3"), username="carol@example.test")) == (None, 0)


def test_upstream_name_gives_each_protocol_its_own_upstream():
    plugin = load({"map": {"bob@example.test": "two", "*": "one"}, "upstream_name": "{name}-{protocol}"}, BOTH)
    assert route(plugin, "bob@example.test", "pop3") == "two-pop3"
    assert route(plugin, "bob@example.test", "imap") == "two-imap"
    assert route(plugin, "alice@example.test", "imap") == "one-imap"


# --- start-up checks ----------------------------------------------------------------------


@pytest.mark.parametrize("options, sections, message", [
    pytest.param(
        {"map": {"bob@example.test": "nosuch"}}, POP3_ONLY,
        "config: plugin.route.map.bob@example.test: no upstream named 'nosuch' (main, one, three, two)",
        id="unknown-upstream",
    ),
    pytest.param(
        {"map": {"*": "two"}, "upstream_name": "{name}-{protocol}"}, {**BOTH, "upstreams": {
            k: v for k, v in BOTH["upstreams"].items() if k != "two-imap"}},
        "config: plugin.route.map.*: no upstream named 'two-imap' for imap logins (main, one-imap, one-pop3, two-pop3)",
        id="unknown-upstream-for-one-protocol",
    ),
    pytest.param(
        {"map": {"@example.test": "one-pop3"}}, BOTH,
        "config: plugin.route.map.@example.test: upstream 'one-pop3' is the pop3 listener 'pop3''s; "
        "name one upstream per protocol with upstream_name",
        id="upstream-of-another-protocol",
    ),
])
def test_a_name_that_is_no_upstream_is_a_config_error(options, sections, message):
    with pytest.raises(ConfigError) as error:
        load(options, sections)
    assert str(error.value) == message


@pytest.mark.parametrize("options, message", [
    ({"map": {"bob@example.test": "two", "BOB@example.test": "three"}},
     "'bob@example.test' and 'BOB@example.test' are the same key"),
    ({"map": {"bob smith": "two"}}, "'bob smith' is not an address, an @domain or *"),
    ({"map": {"@": "two"}}, "'@' is not an address, an @domain or *"),
    ({"upstream_name": "{protocol}"}, "'{protocol}' must have {name}, may have {protocol}, and nothing else in braces"),
    ({"upstream_name": "{name}-{proto}"}, "'{name}-{proto}' must have {name}, may have {protocol}, and nothing else in braces"),
    ({"upstream_name": "{name!r}"}, "'{name!r}' must have {name}, may have {protocol}, and nothing else in braces"),
    ({"upstream_name": "{name"}, "'{name': expected '}' before end of string"),
])
def test_bad_options_name_their_key(options, message):
    key = next(iter(options))
    with pytest.raises(ConfigError) as error:
        load(options)
    assert str(error.value) == f"config: plugin.route.{key}: {message}"


def test_mailproxy_check_reports_a_bad_name_in_one_line(tmp_path):
    path = tmp_path / "mailproxy.toml"
    path.write_text(
        '[upstreams.main]\naddress = "127.0.0.1:1101"\n'
        '[[listeners]]\nname = "pop3"\nprotocol = "pop3"\naddress = "127.0.0.1:1100"\nupstream = "main"\n'
        '[plugins]\nenabled = ["route"]\n'
        '[plugin.route]\nmap = {"bob@example.test" = "store2"}\n'
    )
    result = subprocess.run([sys.executable, "-m", "mailproxy.cli", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{path}: plugin.route.map.bob@example.test: no upstream named 'store2' (main)\n"


# --- the map file -------------------------------------------------------------------------


@pytest.fixture
def map_file(tmp_path) -> Path:
    path = tmp_path / "route.map"
    path.write_text("# moved in March\nbob@example.test  two\n\n@example.org three   # all of them\n")
    return path


def test_map_file_entries_win_over_map(map_file):
    plugin = load({"map_file": str(map_file), "map": {"bob@example.test": "three", "*": "one"}})
    assert route(plugin, "bob@example.test") == "two"
    assert route(plugin, "carol@example.org") == "three"
    assert route(plugin, "dave@example.test") == "one"


def test_a_relative_map_file_is_found_next_to_the_configuration(map_file):
    plugin = load({"map_file": "route.map"}, path=map_file.parent / "mailproxy.toml")
    assert route(plugin, "bob@example.test") == "two"


def test_a_changed_file_is_read_at_the_next_login(map_file):
    plugin = load({"map_file": str(map_file)})
    assert route(plugin, "bob@example.test") == "two"
    rewrite(map_file, "bob@example.test three\nalice@example.test two\n")
    assert route(plugin, "bob@example.test") == "three"
    assert route(plugin, "alice@example.test") == "two"
    assert route(plugin, "carol@example.org") is None  # gone with the old version


def test_an_unchanged_file_is_not_read_again(map_file):
    plugin = load({"map_file": str(map_file)})
    loaded = checks("map_file", "loaded")
    for _ in range(3):
        assert route(plugin, "bob@example.test") == "two"
    assert checks("map_file", "loaded") == loaded
    rewrite(map_file, map_file.read_text())  # the same text, a new mtime: read again
    route(plugin, "bob@example.test")
    assert checks("map_file", "loaded") == loaded + 1


@pytest.mark.parametrize("text, problem", [
    ("bob@example.test nosuch\n", "{path}:1: bob@example.test: no upstream named 'nosuch' (main, one, three, two)"),
    ("alice@example.test one\nbob@example.test\n", "{path}:2: expected 'key upstream'"),
    ("bob@example.test two three\n", "{path}:1: expected 'key upstream'"),
    ("bob@example.test two\n# again\nBob@example.test three\n", "{path}:3: bob@example.test is already on line 1"),
    ("@ two\n", "{path}:1: '@' is not an address, an @domain or *"),
])
def test_a_bad_version_keeps_the_last_good_one_and_is_logged_once(map_file, caplog, text, problem):
    plugin = load({"map_file": str(map_file)})
    rejected = checks("map_file", "rejected")
    rewrite(map_file, text)
    with caplog.at_level(logging.INFO, LOGGER):
        for _ in range(3):
            assert route(plugin, "bob@example.test") == "two"
            assert route(plugin, "carol@example.org") == "three"
    expected = f"map_file: {problem.format(path=map_file)}; the last good version stays in use"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", expected)]
    assert checks("map_file", "rejected") == rejected + 1
    # The next good version is taken, and a bad one after it is logged again.
    rewrite(map_file, "bob@example.test three\n")
    assert route(plugin, "bob@example.test") == "three"
    rewrite(map_file, text)
    assert route(plugin, "bob@example.test") == "three"
    assert checks("map_file", "rejected") == rejected + 2


def test_a_removed_file_keeps_the_last_good_version(map_file, caplog):
    plugin = load({"map_file": str(map_file)})
    map_file.unlink()
    with caplog.at_level(logging.ERROR, LOGGER):
        assert route(plugin, "bob@example.test") == "two"
        assert route(plugin, "bob@example.test") == "two"
    assert [r.getMessage() for r in caplog.records] == [
        f"map_file: file not found: {map_file}; the last good version stays in use"
    ]


def test_names_in_the_file_are_resolved_per_protocol(tmp_path):
    path = tmp_path / "route.map"
    path.write_text("bob@example.test two\n")
    plugin = load({"map_file": str(path), "upstream_name": "{name}-{protocol}"}, BOTH)
    assert route(plugin, "bob@example.test", "imap") == "two-imap"
    rewrite(path, "bob@example.test three\n")  # two-imap and two-pop3 exist; three-* do not
    assert route(plugin, "bob@example.test", "pop3") == "two-pop3"


@pytest.mark.parametrize("text, problem", [
    (None, "file not found: {path}"),
    ("bob@example.test two\nbob@example.test three\n", "{path}:2: bob@example.test is already on line 1"),
    ("carol@example.test nosuch\n", "{path}:1: carol@example.test: no upstream named 'nosuch' (main, one, three, two)"),
])
def test_a_bad_file_at_start_up_is_a_config_error(tmp_path, text, problem):
    path = tmp_path / "route.map"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load({"map_file": str(path)})
    assert str(error.value) == f"config: plugin.route.map_file: {problem.format(path=path)}"


def test_a_final_dot_of_the_domain_is_the_same_domain():
    plugin = load({"map": {"bob@example.test": "two", "@example.org": "three"}})
    assert route(plugin, "bob@example.test.") == "two"
    assert route(plugin, " carol@example.org. ") == "three"


def test_a_map_file_beyond_any_real_map_is_refused(map_file, caplog):
    plugin = load({"map_file": str(map_file)})
    rewrite(map_file, "# filler\n" * (MAX_MAP_BYTES // 9 + 1))
    with caplog.at_level(logging.INFO, LOGGER):
        assert route(plugin, "bob@example.test") == "two"  # the last good version
    assert "larger than 8 MiB" in caplog.text
