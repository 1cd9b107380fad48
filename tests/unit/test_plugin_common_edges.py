"""The edges of the helpers the shipped checks share (plugins/_common.py), pinned exactly:
the documented defaults and bounds of the DNS checks' settings (docs/plugins.md,
config/mailproxy.toml) and their check against the hook's `timeout`; the memos' bound
(4096); which sessions a ClientFilter skips for a network written with host bits; the
host name syntax (253 characters, trailing dot, a name IDNA cannot encode); the domain
of a mail address without a local part; printable()'s 200-character cut; the time
`timed` observes; and ExpiringCache's TTL at the boundary, its size bound and its
least-recently-used eviction."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

import mailproxy_plugins._common as common
from tests.support.clock import Clock
from tests.support.plugins import client_session


# --- DnsCheckSettings: documented defaults, bounds, and lookup_timeout < timeout -------

def dns_settings(**options) -> common.DnsCheckSettings:
    return common.DnsCheckSettings.model_validate(options)


def test_the_dns_settings_defaults_are_the_documented_values():
    settings = dns_settings()
    assert settings.lookup_timeout == 2.0
    assert settings.cache_entries == 10000
    assert settings.max_ttl == 3600.0
    assert settings.max_negative_ttl == 900.0


@pytest.mark.parametrize("lookup_timeout", [0.001, 30.0])
def test_a_lookup_timeout_above_zero_and_up_to_30_seconds_is_accepted(lookup_timeout):
    assert dns_settings(timeout=60, lookup_timeout=lookup_timeout).lookup_timeout == lookup_timeout


@pytest.mark.parametrize("lookup_timeout", [0, -0.5, 30.001, 31])
def test_a_lookup_timeout_of_zero_or_below_or_past_30_seconds_is_refused(lookup_timeout):
    with pytest.raises(ValidationError):
        dns_settings(timeout=60, lookup_timeout=lookup_timeout)


@pytest.mark.parametrize("option", ["cache_entries", "max_ttl", "max_negative_ttl"])
def test_zero_is_accepted_for_the_cache_size_and_the_ttl_caps(option):
    assert getattr(dns_settings(**{option: 0}), option) == 0


@pytest.mark.parametrize("value", [-1, -0.001])
@pytest.mark.parametrize("option", ["max_ttl", "max_negative_ttl"])
def test_a_negative_ttl_cap_is_refused(option, value):
    with pytest.raises(ValidationError):
        dns_settings(**{option: value})


def test_a_negative_cache_size_is_refused():
    with pytest.raises(ValidationError):
        dns_settings(cache_entries=-1)


@pytest.mark.parametrize("timeout", [1, 2])
def test_the_default_lookup_timeout_is_checked_against_a_timeout_it_does_not_fit_in(timeout):
    with pytest.raises(ValidationError, match=r"must be less than timeout"):
        dns_settings(timeout=timeout)


def test_the_default_lookup_timeout_fits_in_a_timeout_just_above_it():
    assert dns_settings(timeout=2.5).lookup_timeout == 2.0


@pytest.mark.parametrize("lookup_timeout", [3.0, 3.5])
def test_a_lookup_timeout_at_or_past_the_timeout_is_refused(lookup_timeout):
    with pytest.raises(ValidationError, match=r"must be less than timeout \(3\)"):
        dns_settings(timeout=3, lookup_timeout=lookup_timeout)


def test_a_lookup_timeout_just_under_the_timeout_is_accepted():
    assert dns_settings(timeout=3, lookup_timeout=2.999).lookup_timeout == 2.999


# --- skip_clients: networks written with host bits --------------------------------------

def test_networks_accepts_a_network_written_with_host_bits():
    assert common.networks(["192.0.2.1/24", "2001:db8::1/64"]) == ["192.0.2.1/24", "2001:db8::1/64"]


def test_a_client_filter_skips_the_whole_network_of_an_address_written_with_host_bits():
    settings = common.ClientCheckSettings.model_validate({"skip_clients": ["192.0.2.1/24"]})
    client_filter = common.ClientFilter(settings)
    assert client_filter.skips(client_session("192.0.2.200")) is True
    assert client_filter.skips(client_session("198.51.100.1")) is False


# --- the memos: bounded at 4096 entries -------------------------------------------------

@pytest.mark.parametrize("memoised", [common.host_name, common._parse_ip, common.network_of])
def test_the_shared_memos_keep_4096_entries(memoised):
    assert memoised.cache_info().maxsize == 4096


def test_a_client_filter_memo_keeps_4096_entries():
    client_filter = common.ClientFilter(common.ClientCheckSettings())
    assert client_filter._skips_address.cache_info().maxsize == 4096


def test_parsing_the_same_address_twice_gives_the_same_shared_object():
    first = common._parse_ip("192.0.2.77")
    assert first == ipaddress.IPv4Address("192.0.2.77")
    assert common._parse_ip("192.0.2.77") is first


# --- _parse_ip -------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["not an address", "", "192.0.2.256", "unix:/run/socket"])
def test_text_that_is_no_address_parses_as_none(text):
    assert common._parse_ip(text) is None


# --- host_name: 253 characters, trailing dot, names IDNA cannot encode ------------------

LONGEST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters


def test_a_name_of_253_characters_is_a_host_name():
    assert len(LONGEST) == 253
    assert common.host_name(LONGEST) == LONGEST


def test_a_name_of_253_characters_with_a_trailing_dot_is_a_host_name():
    assert common.host_name(LONGEST.upper() + ".") == LONGEST


def test_a_name_of_254_characters_is_no_host_name():
    assert common.host_name(LONGEST + "d") is None


@pytest.mark.parametrize("text", [
    "b\u00fccher" * 12 + ".test",  # a label of more than 63 characters
    "b\u00fccher..test",           # an empty label
])
def test_a_non_ascii_name_idna_cannot_encode_is_no_host_name(text):
    assert common.host_name(text) is None


def test_a_non_ascii_name_is_given_in_its_a_label_form():
    assert common.host_name("B\u00fccher.test.") == "xn--bcher-kva.test"


# --- domain_of -------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["@example.test", "", "example.test", "user@"])
def test_an_address_without_a_local_part_or_a_domain_has_no_domain(address):
    assert common.domain_of(address) is None


def test_the_domain_of_an_address_is_its_host_name():
    assert common.domain_of("User@Example.TEST") == "example.test"


# --- printable: the 200-character cut ---------------------------------------------------

@pytest.mark.parametrize("length", [1, 199, 200])
def test_a_text_of_at_most_200_characters_is_kept_whole(length):
    assert common.printable("x" * length) == "x" * length


@pytest.mark.parametrize("length", [201, 500])
def test_a_text_past_200_characters_is_cut_to_197_and_an_ellipsis(length):
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    assert common.printable(text) == text[:197] + "..."


@pytest.mark.parametrize("limit", [10, 20])
def test_a_text_past_the_given_limit_is_cut_to_the_limit_exactly(limit):
    assert common.printable("0123456789" * 3, limit) == ("0123456789" * 3)[: limit - 3] + "..."


def test_a_text_of_exactly_the_limit_is_kept_whole():
    assert common.printable("0123456789", 10) == "0123456789"


def test_unprintable_runs_become_one_space_and_the_ends_are_stripped():
    assert common.printable("\r\n say\x00\x01h\u00e9llo \t") == "say h llo"


# --- timed -----------------------------------------------------------------------------

def test_timed_observes_the_time_the_block_took():
    labels = {"plugin": "common-edges", "check": "timed"}
    name = "mailproxy_plugin_check_duration_seconds"
    before = REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0
    with common.timed("common-edges", "timed"):
        time.sleep(0.01)
    took = REGISTRY.get_sample_value(f"{name}_sum", labels) - before
    assert 0.01 <= took < 10  # an upper bound only to catch a wrong sum, not a slow machine
    assert REGISTRY.get_sample_value(f"{name}_count", labels) >= 1


def test_a_timed_wait_observes_the_wait_and_an_untimed_one_is_the_awaitable_itself():
    labels = {"plugin": "common-edges", "check": "wait"}
    name = "mailproxy_plugin_check_duration_seconds_count"
    before = REGISTRY.get_sample_value(name, labels) or 0.0

    async def answer():
        await asyncio.sleep(0)
        return "answer"

    async def steps():
        untimed = answer()
        assert common.timed_wait(untimed, None) is untimed
        assert await untimed == "answer"
        assert await common.timed_wait(answer(), ("common-edges", "wait")) == "answer"

    asyncio.run(steps())
    assert REGISTRY.get_sample_value(name, labels) == before + 1


# --- ExpiringCache ---------------------------------------------------------------------

def test_a_value_is_kept_until_just_before_its_ttl_ends_and_gone_at_its_end():
    clock = Clock(1000.0)
    cache = common.ExpiringCache(10, clock)
    cache.put("k", "v", 10)
    clock.now += 9.999
    assert cache.get("k") == "v"
    clock.now = 1010.0
    assert cache.get("k") is None
    assert len(cache) == 0


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_a_value_with_no_positive_ttl_is_not_kept(ttl):
    cache = common.ExpiringCache(10, Clock())
    cache.put("k", "v", ttl)
    assert len(cache) == 0
    assert cache.get("k") is None


@pytest.mark.parametrize("ttl", [0.5, 1])
def test_a_value_with_a_ttl_of_a_second_or_less_is_kept(ttl):
    cache = common.ExpiringCache(10, Clock())
    cache.put("k", "v", ttl)
    assert len(cache) == 1
    assert cache.get("k") == "v"


@pytest.mark.parametrize("entries", [0, -1, -2])
def test_a_cache_of_no_entries_keeps_nothing(entries):
    cache = common.ExpiringCache(entries, Clock())
    cache.put("k", "v", 60)
    assert len(cache) == 0
    assert cache.get("k") is None


def test_a_cache_of_one_entry_keeps_the_latest_value():
    cache = common.ExpiringCache(1, Clock())
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    assert len(cache) == 1
    assert cache.get("a") is None
    assert cache.get("b") == 2


@pytest.mark.parametrize("entries", [2, 3])
def test_a_cache_holds_exactly_its_entries_and_one_more_evicts_the_oldest(entries):
    cache = common.ExpiringCache(entries, Clock())
    for i in range(entries):
        cache.put(i, f"v{i}", 60)
    assert len(cache) == entries
    assert [cache.get(i) for i in range(entries)] == [f"v{i}" for i in range(entries)]
    cache.put("new", "n", 60)
    assert len(cache) == entries
    assert cache.get(0) is None
    assert cache.get("new") == "n"


def test_the_least_recently_used_value_goes_first():
    cache = common.ExpiringCache(2, Clock())
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    assert cache.get("a") == 1  # now "b" is the least recently used
    cache.put("c", 3, 60)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
