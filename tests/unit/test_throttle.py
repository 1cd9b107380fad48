"""The AUTH failure throttle: growing delays per client network, no lockout through the
per-account count, its settings, and `mailproxy check` saying the counts are per process."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from mailproxy.auth.file import hash_password
from mailproxy.auth.throttle import AuthThrottle, account_key
from mailproxy.config import AuthSettings, ConfigError, load_config
from mailproxy.state import MemoryState


def make_throttle(clock=None, **settings) -> tuple[AuthThrottle, MemoryState]:
    state = MemoryState(clock=clock) if clock else MemoryState()
    defaults = {"backends": [], "max_failures": 3, "failure_window": 60}
    return AuthThrottle(AuthSettings(**{**defaults, **settings}), state), state


# --- the delay ---------------------------------------------------------------------------


def test_delay_starts_after_one_failure_doubles_and_is_capped():
    throttle, _ = make_throttle()  # the defaults: 2 s, doubling, at most 15 s, as Dovecot
    assert [throttle.delay(n) for n in range(6)] == [0.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert throttle.delay(10_000) == 15.0  # no overflow however many failures


def test_delay_follows_the_settings():
    throttle, _ = make_throttle(throttle_delay=0.25, throttle_delay_max=1.0)
    assert [throttle.delay(n) for n in range(5)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    no_delay, _ = make_throttle(throttle_delay=0.0)
    assert no_delay.delay(7) == 0.0


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "one, other, same",
    [
        ("192.0.2.1", "192.0.2.1", True),
        ("192.0.2.1", "192.0.2.2", False),  # IPv4: one host
        ("::ffff:192.0.2.1", "192.0.2.1", True),  # IPv4-mapped IPv6 is the IPv4 host
        ("2001:db8:0:1::1", "2001:db8:0:1:ffff:ffff:ffff:ffff", True),  # IPv6: one /64
        ("2001:db8:0:1::1", "2001:db8:0:2::1", False),
        ("fe80::1%eth0", "fe80::2", True),  # a zone index does not make a new network
    ],
)
def test_network_key_groups_by_default_prefix(one, other, same):
    throttle, _ = make_throttle()
    assert (throttle.network_key(one) == throttle.network_key(other)) is same


def test_network_key_prefixes_are_settings():
    throttle, _ = make_throttle(ipv4_prefix=24, ipv6_prefix=48)
    assert throttle.network_key("192.0.2.1") == "authfail:addr:192.0.2.0/24"
    assert throttle.network_key("192.0.2.200") == "authfail:addr:192.0.2.0/24"
    assert throttle.network_key("2001:db8:1:2::1") == "authfail:addr:2001:db8:1::/48"
    assert throttle.network_key("not an address") == "authfail:addr:not an address"


def test_account_key_takes_the_coarsest_reading_of_a_login():
    keys = {account_key(name) for name in
            ["alice", "ALICE", " Alice ", "alice@example.test", "Alice@Other.Example\t"]}
    assert keys == {"authfail:user:alice"}
    assert account_key("STRASSE") == account_key("straße")  # case folded, not lowered
    assert account_key("bob") != account_key("alice")
    assert account_key("a@b@example.test") == "authfail:user:a@b"  # the last '@' splits


# --- counting ----------------------------------------------------------------------------


def test_delays_grow_per_network_and_the_limit_refuses():
    throttle, _ = make_throttle(max_failures=3)

    async def scenario():
        seen = []
        for _ in range(4):  # each attempt fails: nothing is released
            reservation = await throttle.reserve("192.0.2.1")
            await throttle.finished(reservation)
            seen.append((reservation.delay, reservation.allowed))
        assert seen == [(0.0, True), (2.0, True), (4.0, True), (8.0, False)]
        assert throttle.over_limit(await throttle.network_failures("192.0.2.1"))
        # Another network is not affected at all.
        assert await throttle.network_failures("192.0.2.9") == 0
        assert (await throttle.reserve("192.0.2.9")).delay == 0.0

    asyncio.run(scenario())


def test_account_failures_never_hold_back_another_network():
    throttle, _ = make_throttle(max_failures=3)

    async def scenario():
        # A stranger fails for alice many times, from many networks.
        waits = []
        for host in range(1, 11):
            reservation = await throttle.reserve(f"192.0.2.{host}")
            assert reservation.allowed
            waits.append(await throttle.account_failed("alice"))
        assert waits == [0.0, 2.0, 4.0, 8.0] + [15.0] * 6  # wrong answers slow down
        # Alice from her own network: checked at once, whatever her account's count.
        reservation = await throttle.reserve("198.51.100.7")
        assert (reservation.delay, reservation.allowed) == (0.0, True)

    asyncio.run(scenario())


def test_reservations_hold_against_parallel_attempts():
    throttle, state = make_throttle(max_failures=3)

    async def scenario():
        # Twenty attempts reserve before any is checked: only three get checked. None
        # of them waits: attempts in flight count against the limit, and only failures
        # earn a pause (a client logging in over several connections at once).
        reservations = await asyncio.gather(*(throttle.reserve("192.0.2.1") for _ in range(20)))
        allowed = [r for r in reservations if r.allowed]
        assert [r.delay for r in allowed] == [0.0, 0.0, 0.0]
        # Once they have failed, the next attempt waits for them.
        for reservation in reservations:
            await throttle.finished(reservation)
        assert (await throttle.reserve("192.0.2.1")).delay == 15.0
        # A valid login gives its slot back, and leaves earlier failures counted.
        await throttle.reserve("192.0.2.7")
        reservation = await throttle.reserve("192.0.2.7")
        await throttle.release(reservation)
        assert await throttle.network_failures("192.0.2.7") == 1

    asyncio.run(scenario())


def test_counts_expire_with_the_window():
    now = [0.0]
    throttle, _ = make_throttle(clock=lambda: now[0], max_failures=2, failure_window=60)

    async def scenario():
        for _ in range(2):
            await throttle.reserve("192.0.2.1")
            await throttle.account_failed("alice")
        assert throttle.over_limit(await throttle.network_failures("192.0.2.1"))
        now[0] = 60.0
        assert await throttle.network_failures("192.0.2.1") == 0
        assert await throttle.account_failed("alice") == 0.0

    asyncio.run(scenario())


# --- settings ----------------------------------------------------------------------------


def auth_config(tmp_path, auth_lines: str, proxy_lines: str = ""):
    (tmp_path / "users").write_text("")
    path = tmp_path / "mailproxy.toml"
    path.write_text(
        f"[proxy]\n{proxy_lines}\n"
        f'[auth]\nbackends = ["file"]\nusers_file = "users"\n{auth_lines}\n'
        '[upstreams.main]\naddress = "127.0.0.1:2526"\n'
        '[[listeners]]\nname = "submission"\nmode = "submission"\n'
        'address = "127.0.0.1:2587"\nupstream = "main"\n'
    )
    return path


def test_settings_defaults():
    settings = AuthSettings(backends=[])
    assert (settings.throttle_delay, settings.throttle_delay_max) == (2.0, 15.0)
    assert (settings.ipv4_prefix, settings.ipv6_prefix) == (32, 64)


@pytest.mark.parametrize(
    "line, message",
    [
        ("throttle_delay = 4.0\nthrottle_delay_max = 3.0",
         "auth.throttle_delay_max: must be at least throttle_delay (4.0)"),
        ("ipv4_prefix = 33", "auth.ipv4_prefix: Input should be less than or equal to 32"),
        ("ipv4_prefix = 4", "auth.ipv4_prefix: Input should be greater than or equal to 8"),
        ("ipv6_prefix = 129", "auth.ipv6_prefix: Input should be less than or equal to 128"),
        ("ipv6_prefix = 8", "auth.ipv6_prefix: Input should be greater than or equal to 16"),
        ('ipv6_prefix = "64"', "auth.ipv6_prefix: Input should be a valid integer"),
    ],
)
def test_settings_errors_name_file_and_key(tmp_path, line, message):
    path = auth_config(tmp_path, line)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


# --- per process -------------------------------------------------------------------------


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailproxy.cli", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_check_warns_that_memory_state_is_per_worker(tmp_path):
    path = auth_config(tmp_path, "max_failures = 5", "workers = 4")
    (tmp_path / "users").write_text(f"alice:{hash_password('secret')}\n")
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"configuration {path}: OK")
    assert result.stderr == (
        f'warning: {path}: proxy.workers = 4 with state.backend = "memory": AUTH failure '
        "counts and plugin counters are kept per worker process, so a client may get up to "
        "4 times auth.max_failures attempts per failure_window; they are shared across "
        'processes by state.backend = "redis": use it, or run one worker, where the limits '
        "must hold exactly\n"
    )


def test_check_does_not_warn_for_one_worker(tmp_path):
    path = auth_config(tmp_path, "", "workers = 1")
    result = check(path)
    assert (result.returncode, result.stderr) == (0, "")
