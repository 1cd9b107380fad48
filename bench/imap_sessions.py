#!/usr/bin/env python3
"""IMAP through mailproxy: memory per idle session, and a 10 MB FETCH, beside nginx's mail proxy.

Everything runs in front of one private Dovecot on 127.0.0.2 (the tests' harness,
tests/support/dovecot.py, with the limits thousands of sessions need), on loopback.

1. Idle sessions. Per target, a fresh server process; the bench's own asyncio clients
   open --sessions sessions (default 5000) through it, --batch at a time, each logged
   in, INBOX selected and in IDLE (its "+" received). The figure is the growth of the
   one process holding the sessions (VmRSS in /proc/PID/status: mailproxy with
   workers = 1, nginx's single worker, the byte pipe) from idle after a warm-up to all
   sessions open, divided by the sessions held. Targets: mailproxy with a drop-in that
   implements every IMAP hook (so the policy engine runs on every command, as it does
   with real IMAP plugins), nginx's mail proxy (its auth_http answered by this
   script), and a plain asyncio byte pipe on uvloop (the floor for Python).
2. FETCH of one 10 MB message (BODY.PEEK[]), direct to Dovecot and through each
   target, rounds interleaved: the median throughput over direct's, each proxy's CPU
   per FETCH session, and its peak RSS above idle while the message passed: VmHWM
   after a reset of the kernel's high-water mark (clear_refs "5", as
   bench/data_stall.py does), with VmRSS sampled every 5 ms beside it as a cross-check.

The project's targets (printed against the figures, never asserted): mailproxy's
per-session RSS at most 1.5x nginx's, with hooks on; FETCH through mailproxy at least
0.7x direct; its RSS growth during the FETCH under 2 MB.

Run as root (nginx's workers switch to nobody; resetting VmHWM needs root), from the
project's venv:

    .venv/bin/python bench/imap_sessions.py [--sessions N] [--targets mailproxy,nginx,pipe]

Exit status: 0 if every measurement worked, 1 if any failed (a session not opened or
not held to the end, a FETCH that failed or brought other bytes), 2 on a setup error or
missing tool. A missed target is reported, not a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # for tests.support and mailproxy

from data_stall import memory_kib, reset_peak_rss  # noqa: E402
from smtp_throughput import SetupError, free_port, spawn, stop, tree_cpu_seconds, wait_accepting  # noqa: E402

from tests.support.dovecot import DOVECOT, Dovecot  # noqa: E402
from tests.support.proxy import ProxyProcess  # noqa: E402

DOVECOT_HOST = "127.0.0.2"  # the clients and nginx come from 127.0.0.1
PROXY_SOURCE = "127.0.0.5"  # mailproxy's upstream address: the one Dovecot trusts for ID
DOMAIN = "bench.test"
PASSWORD = "bench-secret"  # every user's
FETCH_USER = f"fetch@{DOMAIN}"
FETCH_LINE = b"x" * 76 + b"\r\n"  # a base64 attachment's line
SESSIONS_PER_IMAP_PROCESS = 100  # Dovecot's service imap { client_limit }

WARMUP_SESSIONS = 50  # opened and closed before the idle baseline
SESSION_TIMEOUT = 60.0  # seconds for one session to reach IDLE
MAX_FAILED_SESSIONS = 50  # a target that fails this many stops being asked for more
RSS_SAMPLES = 5  # VmRSS read this many times, 0.2 s apart; the median counts
FETCH_TIMEOUT = 120.0  # seconds for one FETCH session, whatever happens
SAMPLE_INTERVAL = 0.005  # seconds between VmRSS samples during a FETCH

SESSION_RATIO_GOAL = 1.5  # mailproxy's KiB per session over nginx's, at most
PIPE_RATIO_GOAL = 1.2  # the same with after_login = "pipe"
FETCH_RATIO_GOAL = 0.7  # mailproxy's FETCH throughput over direct's, at least
FETCH_GROWTH_GOAL = 2_000_000  # bytes of peak RSS above idle during the FETCH, under

# mailproxy with every IMAP hook implemented, none with an opinion: the policy engine
# runs at connect, login, every command and disconnect, as with real IMAP plugins.
IMAP_HOOKS_PLUGIN = '''\
"""Every IMAP hook, each without an opinion (written by bench/imap_sessions.py)."""

from mailproxy import hookimpl


@hookimpl
def imap_connect():
    return None


@hookimpl
def imap_login():
    return None


@hookimpl
def imap_command():
    return None


@hookimpl
def imap_disconnect():
    return None
'''

# nginx's mail proxy for IMAP, one worker so that one process holds every session. Its
# auth_http is this script's AuthResponder, on TCP: the workers (nobody) need no path.
NGINX_CONF = string.Template("""\
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
worker_processes 1;
worker_rlimit_nofile ${nofile};
pid nginx.pid;
error_log error.log warn;

events {
    worker_connections ${connections};
}

mail {
    server_name bench.localdomain;
    auth_http 127.0.0.1:${auth_port}/auth;
    server {
        listen 127.0.0.1:${port};
        protocol imap;
        imap_auth login plain;
    }
}
""")


def user_name(number: int) -> str:
    return f"user{number}@{DOMAIN}"


def raise_file_limit() -> int:
    """The soft RLIMIT_NOFILE up to the hard one, for this process and every server it
    starts (they inherit it); returns the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --------------------------------------------------------------------------- Dovecot


def many_sessions_config(sessions: int) -> str:
    """Dovecot settings with room for thousands of sessions from one address
    (FIELD-NOTES): imap processes that serve many sessions each instead of one each, and
    limits above every session this bench may hold at once (one target's closing while
    the next one's open). Its login processes also serve many logins each (Dovecot's
    high-performance mode) rather than a fork per login: sessions open about five times
    faster, and what the proxies hold is the same."""
    room = 2 * sessions + 1000
    processes = math.ceil(room / SESSIONS_PER_IMAP_PROCESS)
    return f"""\
mail_max_userip_connections = {room}
default_client_limit = {room}
service imap {{
  client_limit = {SESSIONS_PER_IMAP_PROCESS}
  service_count = 0
  process_limit = {processes}
}}
service imap-login {{
  service_count = 0
  process_min_avail = 2
}}
"""


# --------------------------------------------------------------------- auth_http


class AuthResponder:
    """nginx's auth_http: every login goes to Dovecot's IMAP port. Dovecot checks the
    password itself when nginx logs in there."""

    def __init__(self, imap_port: int) -> None:
        self.response = (f"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {DOVECOT_HOST}\r\n"
                         f"Auth-Port: {imap_port}\r\n\r\n").encode()
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(self.response)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


# ------------------------------------------------------------------------- targets


@dataclass
class Setup:
    dovecot: Dovecot
    auth: AuthResponder
    workdir: Path
    sessions: int  # the most a target must hold, warm-up included
    batch: int  # logins at once
    file_limit: int


@dataclass
class Target:
    """Where the clients connect, and the process whose memory is measured."""

    name: str
    note: str = ""
    host: str = "127.0.0.1"
    port: int = 0

    def start(self, setup: Setup) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    def pid(self) -> int | None:
        """The process that holds every session (None: not measured)."""
        return None

    def check_alive(self) -> None:
        pass


@dataclass
class Direct(Target):
    name: str = "direct"
    note: str = "Dovecot itself (FETCH only)"

    def start(self, setup: Setup) -> None:
        self.host, self.port = DOVECOT_HOST, setup.dovecot.imap_port


@dataclass
class Mailproxy(Target):
    hooks: bool = True
    after_login: str = "hooks"  # or "pipe": a byte pipe once logged in
    proxy: ProxyProcess | None = None

    def __post_init__(self) -> None:
        self.note = ("workers = 1, every IMAP hook implemented (empty), metrics on" if self.hooks
                     else "workers = 1, no plugins, metrics on")
        if self.after_login == "pipe":
            self.note += ', after_login = "pipe"'

    def config(self, setup: Setup) -> dict:
        room = setup.sessions + 100
        plugins = {"enabled": ["imap_hooks"], "directories": [str(setup.workdir / "plugins")]} \
            if self.hooks else {"enabled": []}
        return {
            "proxy": {"hostname": "bench.localdomain", "workers": 1, "log_level": "warning",
                      "resolve_client_names": False},  # every client is 127.0.0.1
            # The upstream's own login is the password check. Every bench client comes
            # from 127.0.0.1, and a login being checked counts as a failure of its
            # network for the others meanwhile (auth/throttle.py): a batch of logins
            # from one address would throttle itself, where real clients come from
            # many networks.
            "auth": {"backends": ["upstream"], "max_failures": 4 * setup.batch,
                     "throttle_delay": 0.0},
            "upstreams": {"store": {"address": f"{DOVECOT_HOST}:{setup.dovecot.imap_port}",
                                    "source_address": PROXY_SOURCE}},
            "listeners": [{"name": "imap", "protocol": "imap", "tls": "none",
                           "allow_plaintext_auth": True, "upstream": "store", "after_login": self.after_login,
                           "max_connections": room, "max_connections_per_client": room}],
            "plugins": plugins,
        }

    def start(self, setup: Setup) -> None:
        home = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=setup.workdir))
        try:
            self.proxy = ProxyProcess(self.config(setup), home).start()
        except (RuntimeError, TimeoutError) as exc:
            raise SetupError(str(exc)) from None
        self.port = self.proxy.port("imap")

    def stop(self) -> None:
        if self.proxy is not None:
            code = self.proxy.stop()
            if code != 0 or "Traceback" in self.proxy.log():
                print(f"  {self.name} exited with {code}; its log:\n{self.proxy.log()[-3000:]}")
            self.proxy = None

    def pid(self) -> int | None:
        return self.proxy.process.pid  # workers = 1: the one process serves

    def check_alive(self) -> None:
        if self.proxy.process.poll() is not None:
            raise SetupError(f"{self.name} exited with {self.proxy.process.returncode}:\n"
                             f"{self.proxy.log()[-3000:]}")


@dataclass
class Spawned(Target):
    """A server this script starts as a command in its own process group."""

    proc: subprocess.Popen | None = None
    log: Path | None = None

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""
            raise SetupError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")


@dataclass
class Nginx(Spawned):
    name: str = "nginx"
    note: str = "worker_processes 1, imap_auth login plain, auth_http answered by the bench"

    def start(self, setup: Setup) -> None:
        prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=setup.workdir))
        prefix.chmod(0o755)
        self.port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.substitute(
            nofile=setup.file_limit, connections=2 * setup.sessions + 100,
            auth_port=setup.auth.port, port=self.port))
        self.log = prefix / "error.log"
        self.proc = spawn(["nginx", "-p", str(prefix), "-c", str(conf)], prefix / "stdout.log", prefix)
        wait_accepting(self.port, self.proc, "nginx", self.log)

    def pid(self) -> int | None:
        """The worker: nginx's master only supervises."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as children:
                workers = children.read().split()
            if len(workers) == 1:
                return int(workers[0])
            time.sleep(0.05)
        raise SetupError(f"nginx has no single worker: {workers}")


@dataclass
class Pipe(Spawned):
    name: str = "pipe"
    note: str = "asyncio byte pipe on uvloop (this script, --serve-pipe): the floor for Python"

    def start(self, setup: Setup) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="pipe-", dir=setup.workdir)) / "pipe.log"
        upstream = f"{DOVECOT_HOST}:{setup.dovecot.imap_port}"
        self.proc = spawn([sys.executable, str(Path(__file__).resolve()), "--serve-pipe",
                           str(self.port), upstream], self.log, setup.workdir)
        wait_accepting(self.port, self.proc, "pipe", self.log)

    def pid(self) -> int | None:
        return self.proc.pid


TARGETS = {
    "mailproxy": lambda: Mailproxy("mailproxy", hooks=True),
    "mailproxy-nohooks": lambda: Mailproxy("mailproxy-nohooks", hooks=False),
    "mailproxy-pipe": lambda: Mailproxy("mailproxy-pipe", after_login="pipe"),
    "nginx": Nginx,
    "pipe": Pipe,
}
DEFAULT_TARGETS = ("mailproxy", "mailproxy-pipe", "nginx", "pipe")
NAME_WIDTH = max(len(name) for name in TARGETS)


# -------------------------------------------------------------------- idle sessions


class SessionError(Exception):
    pass


Session = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   tag: bytes, text: bytes) -> None:
    writer.write(tag + b" " + text + b"\r\n")
    while line := await reader.readline():
        if line.startswith(tag + b" "):
            if line.startswith(tag + b" OK"):
                return
            raise SessionError(f"{text.split()[0].decode()} answered {line[:200]!r}")
    raise SessionError(f"{text.split()[0].decode()}: connection closed")


async def idle_session(host: str, port: int, user: str) -> Session:
    """A session logged in, INBOX selected, in IDLE (the server's "+" received)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise SessionError(f"greeting {greeting[:200]!r}")
        await _command(reader, writer, b"a1", f"LOGIN {user} {PASSWORD}".encode())
        await _command(reader, writer, b"a2", b"SELECT INBOX")
        writer.write(b"a3 IDLE\r\n")
        while not (line := await reader.readline()).startswith(b"+"):
            if not line or line.startswith(b"a3 "):
                raise SessionError(f"IDLE answered {line[:200]!r}")
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def open_sessions(target: Target, count: int, args: argparse.Namespace,
                        deadline: float) -> tuple[list[Session], list[str]]:
    """Up to `count` idle sessions, `args.batch` at a time, until `deadline` (loop time)
    or too many failures; returns the sessions and the failures."""
    loop = asyncio.get_running_loop()
    sessions: list[Session] = []
    failures: list[str] = []

    async def one(number: int) -> Session:
        async with asyncio.timeout(SESSION_TIMEOUT):
            return await idle_session(target.host, target.port, user_name(number % args.users))

    for first in range(0, count, args.batch):
        if loop.time() > deadline or len(failures) >= MAX_FAILED_SESSIONS:
            break
        batch = range(first, min(first + args.batch, count))
        for outcome in await asyncio.gather(*(one(n) for n in batch), return_exceptions=True):
            if isinstance(outcome, BaseException):
                failures.append(repr(outcome))
            else:
                sessions.append(outcome)
    return sessions, failures


async def close_sessions(sessions: list[Session]) -> None:
    """Hang up without LOGOUT, as a client that goes away does."""
    for _, writer in sessions:
        writer.close()
    closing = [writer.wait_closed() for _, writer in sessions]
    await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 60)


async def steady_rss_kib(pid: int) -> int:
    """The median of a few VmRSS readings: a burst of allocations must not decide it."""
    readings = []
    for _ in range(RSS_SAMPLES):
        readings.append(memory_kib(pid, "VmRSS"))
        await asyncio.sleep(0.2)
    return int(statistics.median(readings))


@dataclass
class SessionResult:
    target: str
    held: int = 0
    open_seconds: float = 0.0
    idle_kib: int = 0
    loaded_kib: int = 0
    closed_kib: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def kib_per_session(self) -> float | None:
        return (self.loaded_kib - self.idle_kib) / self.held if self.held else None


async def measure_sessions(target: Target, setup: Setup, args: argparse.Namespace) -> SessionResult:
    result = SessionResult(target.name)
    loop = asyncio.get_running_loop()
    try:
        target.start(setup)  # a fresh process: nothing an earlier phase did counts
        pid = target.pid()
        # First logins, imports and code paths before the baseline.
        warm, failures = await open_sessions(target, WARMUP_SESSIONS, args, loop.time() + args.timeout)
        await close_sessions(warm)
        if failures:
            result.errors = [f"warm-up: {failures[0]}"]
            return result
        await asyncio.sleep(args.settle)
        result.idle_kib = await steady_rss_kib(pid)
        started = loop.time()
        sessions, failures = await open_sessions(target, args.sessions, args, started + args.timeout)
        result.open_seconds = loop.time() - started
        await asyncio.sleep(args.settle)
        result.loaded_kib = await steady_rss_kib(pid)
        target.check_alive()
        result.held = sum(not reader.at_eof() for reader, _ in sessions)
        await close_sessions(sessions)
        await asyncio.sleep(args.settle)
        result.closed_kib = await steady_rss_kib(pid)
        if failures:
            result.errors.append(f"{len(failures)} sessions failed, first: {failures[0]}")
        if len(sessions) + len(failures) < args.sessions:
            result.errors.append(f"only {len(sessions) + len(failures)} of {args.sessions} "
                                 f"sessions tried within {args.timeout:g} s")
        if result.held < len(sessions):
            result.errors.append(f"{len(sessions) - result.held} sessions closed by the server "
                                 f"while idle")
    except (SetupError, OSError) as exc:
        result.errors.append(str(exc))
    finally:
        target.stop()
    return result


# --------------------------------------------------------------------------- FETCH


class FetchClient:
    """A blocking IMAP client that reads a literal with recv_into into one buffer, so
    that the client's own copying does not cap the throughput it measures."""

    def __init__(self, host: str, port: int) -> None:
        self.deadline = time.monotonic() + FETCH_TIMEOUT
        self.sock = socket.create_connection((host, port), timeout=FETCH_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def _receive(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"FETCH session over {FETCH_TIMEOUT:g} s")
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise SessionError(f"connection closed; buffered {bytes(self.buffer[-200:])!r}")
        self.buffer += chunk

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            self._receive()
        line = bytes(self.buffer[:end + 1])
        del self.buffer[:end + 1]
        return line

    def exactly(self, size: int) -> bytearray:
        data = bytearray(size)
        have = min(size, len(self.buffer))
        data[:have] = self.buffer[:have]
        del self.buffer[:have]
        view = memoryview(data)
        while have < size:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"FETCH session over {FETCH_TIMEOUT:g} s")
            got = self.sock.recv_into(view[have:])
            if not got:
                raise SessionError(f"connection closed after {have} of {size} bytes")
            have += got
        return data

    def command(self, tag: bytes, text: bytes) -> None:
        self.sock.sendall(tag + b" " + text + b"\r\n")
        while not (line := self.line()).startswith(tag + b" "):
            pass
        if not line.startswith(tag + b" OK"):
            raise SessionError(f"{text.split()[0].decode()} answered {line[:200]!r}")

    def close(self) -> None:
        self.sock.close()


def fetch_once(host: str, port: int, expected: bytes) -> float:
    """Seconds from sending the FETCH to its tagged OK; the bytes must be `expected`."""
    client = FetchClient(host, port)
    try:
        client.line()  # the greeting
        client.command(b"f1", f"LOGIN {FETCH_USER} {PASSWORD}".encode())
        client.command(b"f2", b"SELECT INBOX")
        started = time.perf_counter()
        client.sock.sendall(b"f3 FETCH 1 (BODY.PEEK[])\r\n")
        while (literal := re.search(rb"\{(\d+)\}\r\n\Z", line := client.line())) is None:
            if line.startswith(b"f3 "):
                raise SessionError(f"FETCH answered {line[:200]!r}")
        body = client.exactly(int(literal.group(1)))
        while not (line := client.line()).startswith(b"f3 "):
            pass
        elapsed = time.perf_counter() - started
        if not line.startswith(b"f3 OK"):
            raise SessionError(f"FETCH answered {line[:200]!r}")
        client.sock.sendall(b"f4 LOGOUT\r\n")
    finally:
        client.close()
    if body != expected:
        raise SessionError(f"FETCH brought {len(body)} bytes, not the {len(expected)} stored")
    return elapsed


class RssSampler:
    """VmRSS of a process every SAMPLE_INTERVAL, in a thread; `peak_kib` the largest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = memory_kib(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            try:
                self.peak_kib = max(self.peak_kib, memory_kib(self.pid, "VmRSS"))
            except (OSError, SetupError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class FetchResult:
    target: str
    seconds: list[float] = field(default_factory=list)
    hwm_growth_kib: list[int] = field(default_factory=list)  # VmHWM after a reset, minus idle
    sampled_growth_kib: list[int] = field(default_factory=list)
    cpu_seconds: float | None = None  # of the proxy's processes, over every round
    errors: list[str] = field(default_factory=list)

    def mb_per_second(self, size: int) -> float | None:
        return size / statistics.median(self.seconds) / 1e6 if self.seconds else None

    def best_mb_per_second(self, size: int) -> float | None:
        """The fastest round: the one least disturbed by whatever else the machine ran."""
        return size / min(self.seconds) / 1e6 if self.seconds else None

    @property
    def cpu_ms_per_fetch(self) -> float | None:
        return self.cpu_seconds / len(self.seconds) * 1e3 if self.cpu_seconds is not None else None


async def measured_fetch(target: Target, message: bytes, result: FetchResult, can_reset: bool) -> None:
    pid = target.pid()
    if pid is None:
        result.seconds.append(await asyncio.to_thread(fetch_once, target.host, target.port, message))
        return
    idle = memory_kib(pid, "VmRSS")
    if can_reset:
        reset_peak_rss(pid)
    cpu = tree_cpu_seconds(pid)
    with RssSampler(pid) as sampler:
        result.seconds.append(await asyncio.to_thread(fetch_once, target.host, target.port, message))
    result.cpu_seconds = (result.cpu_seconds or 0.0) + tree_cpu_seconds(pid) - cpu
    if can_reset:
        result.hwm_growth_kib.append(memory_kib(pid, "VmHWM") - idle)
    result.sampled_growth_kib.append(sampler.peak_kib - idle)


async def measure_fetch(targets: list[Target], setup: Setup, args: argparse.Namespace,
                        message: bytes) -> dict[str, FetchResult]:
    results = {t.name: FetchResult(t.name) for t in targets}
    live = []
    can_reset = os.geteuid() == 0
    try:
        for target in targets:
            try:
                target.start(setup)
                # Untimed: first login, imports, buffers; and the bytes are checked.
                await asyncio.to_thread(fetch_once, target.host, target.port, message)
                live.append(target)
            except (SetupError, SessionError, OSError) as exc:
                results[target.name].errors.append(f"start or warm-up: {exc}")
        for round_no in range(1, args.fetch_rounds + 1):
            for target in live:  # interleaved: drift on a shared machine hits all alike
                result = results[target.name]
                if result.errors:
                    continue
                try:
                    await measured_fetch(target, message, result, can_reset)
                except (SetupError, SessionError, OSError) as exc:
                    result.errors.append(f"round {round_no}: {exc}")
            print(f"  FETCH round {round_no}/{args.fetch_rounds}: "
                  + ", ".join(f"{t.name} {results[t.name].seconds[-1] * 1e3:.0f} ms"
                              for t in live if results[t.name].seconds and not results[t.name].errors),
                  flush=True)
    finally:
        for target in targets:
            target.stop()
    return results


# ------------------------------------------------------------------------- reports


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report_sessions(results: list[SessionResult], args: argparse.Namespace) -> None:
    print(f"\nidle IMAP sessions (LOGIN, SELECT INBOX, IDLE), {args.sessions} per target, "
          f"{args.batch} opened at a time; RSS of the process holding them (VmRSS, MiB)")
    print(f"{'target':<{NAME_WIDTH}} {'held':>6} {'open s':>7} {'idle':>8} {'loaded':>8} "
          f"{'closed':>8} {'KiB/session':>12} {'/nginx':>7}")
    nginx = next((r.kib_per_session for r in results if r.target == "nginx" and not r.errors), None)
    for r in results:
        per = r.kib_per_session
        print(f"{r.target:<{NAME_WIDTH}} {r.held:>6} {r.open_seconds:>7.1f} {r.idle_kib / 1024:>8.1f} "
              f"{r.loaded_kib / 1024:>8.1f} {r.closed_kib / 1024:>8.1f} {fmt(per, '.1f'):>12} "
              f"{fmt(per / nginx if per is not None and nginx else None, '.2f'):>7}")
        for error in r.errors:
            print(f"{'':<{NAME_WIDTH}}   FAILED: {error}")


def report_fetch(results: dict[str, FetchResult], size: int, args: argparse.Namespace) -> None:
    print(f"\nFETCH 1 (BODY.PEEK[]) of a {size:,}-byte message, {args.fetch_rounds} rounds: median "
          f"and best throughput;\nthe proxy's CPU per FETCH session (login to logout), the mean; "
          f"its peak RSS above idle, the largest (KiB)")
    print(f"{'target':<{NAME_WIDTH}} {'MB/s':>8} {'/direct':>8} {'best':>6} {'/direct':>8} "
          f"{'CPU ms':>7} {'VmHWM +KiB':>11} {'sampled +KiB':>13}")
    direct = results.get("direct")
    direct_rate = direct.mb_per_second(size) if direct and not direct.errors else None
    direct_best = direct.best_mb_per_second(size) if direct and not direct.errors else None
    for r in results.values():
        rate = r.mb_per_second(size) if not r.errors else None
        best = r.best_mb_per_second(size) if not r.errors else None
        print(f"{r.target:<{NAME_WIDTH}} {fmt(rate, '.0f'):>8} "
              f"{fmt(rate / direct_rate if rate and direct_rate else None, '.2f'):>8} "
              f"{fmt(best, '.0f'):>6} {fmt(best / direct_best if best and direct_best else None, '.2f'):>8} "
              f"{fmt(r.cpu_ms_per_fetch, '.1f'):>7} "
              f"{fmt(max(r.hwm_growth_kib, default=None), 'd'):>11} "
              f"{fmt(max(r.sampled_growth_kib, default=None), 'd'):>13}")
        for error in r.errors:
            print(f"{'':<{NAME_WIDTH}}   FAILED: {error}")


def verdict_line(goal: str, measured: str, met: bool | None) -> str:
    state = "not measured" if met is None else ("met" if met else "NOT MET")
    return f"  {goal:<62} {measured:<16} {state}"


def report_targets(sessions: list[SessionResult], fetch: dict[str, FetchResult], size: int) -> None:
    print("\ntargets (from this run's figures; a missed target is reported, not an error)")
    per = {r.target: r.kib_per_session for r in sessions if not r.errors}
    ratio = per["mailproxy"] / per["nginx"] if per.get("mailproxy") and per.get("nginx") else None
    print(verdict_line(f"mailproxy (hooks on) KiB per idle session <= {SESSION_RATIO_GOAL:g}x nginx's",
                       fmt(ratio, ".2f") + "x" if ratio else "-",
                       None if ratio is None else ratio <= SESSION_RATIO_GOAL))
    ratio = per["mailproxy-pipe"] / per["nginx"] if per.get("mailproxy-pipe") and per.get("nginx") else None
    print(verdict_line(f"mailproxy (after_login = pipe) KiB per idle session <= {PIPE_RATIO_GOAL:g}x nginx's",
                       fmt(ratio, ".2f") + "x" if ratio else "-",
                       None if ratio is None else ratio <= PIPE_RATIO_GOAL))
    rates = {name: r.mb_per_second(size) for name, r in fetch.items() if not r.errors}
    ratio = rates["mailproxy"] / rates["direct"] if rates.get("mailproxy") and rates.get("direct") else None
    print(verdict_line(f"mailproxy FETCH throughput >= {FETCH_RATIO_GOAL:g}x direct",
                       fmt(ratio, ".2f") + "x" if ratio else "-",
                       None if ratio is None else ratio >= FETCH_RATIO_GOAL))
    proxy = fetch.get("mailproxy")
    growth = None
    if proxy is not None and not proxy.errors:
        growth = max(proxy.hwm_growth_kib + proxy.sampled_growth_kib, default=None)
    print(verdict_line(f"mailproxy peak RSS growth during the FETCH < {FETCH_GROWTH_GOAL / 1e6:g} MB",
                       f"{growth * 1024 / 1e6:.2f} MB" if growth is not None else "-",
                       None if growth is None else growth * 1024 < FETCH_GROWTH_GOAL))


# ----------------------------------------------------------------------- byte pipe


class PipeEnd(asyncio.Protocol):
    """One side of a byte pipe: what it reads goes to the other side's transport as it
    is; a full write buffer there pauses reading here."""

    def __init__(self, peer: PipeEnd | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.peer is not None:  # the upstream side: the pipe is complete
            if self.peer.transport.is_closing():  # the client left meanwhile
                transport.close()
                return
            self.peer.peer = self
            self.peer.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()


class ClientEnd(PipeEnd):
    """The client's side: nothing is read from it until the upstream side is connected."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream
        self.connecting: asyncio.Task | None = None  # held here: the loop holds it weakly

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: PipeEnd(self), *self.upstream)
        except OSError:
            self.transport.close()


def serve_pipe(port: int, upstream: str) -> None:
    """The pipe target: listen on 127.0.0.1:port until SIGTERM, on uvloop (as mailproxy)
    when it is installed."""
    host, _, upstream_port = upstream.rpartition(":")
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ClientEnd((host, int(upstream_port))),
                                          "127.0.0.1", port, backlog=1024)
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        await stopping.wait()
        server.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=5000,
                   help="idle sessions per target (default %(default)s; 0 skips that part)")
    p.add_argument("--batch", type=int, default=50,
                   help="sessions opened at once (default %(default)s)")
    p.add_argument("--users", type=int, default=50,
                   help="mailboxes the sessions are spread over (default %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds per target to open the sessions, at most (default %(default)s)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="pause before reading the RSS (default %(default)s s)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)} (default %(default)s)")
    p.add_argument("--fetch-size", type=int, default=10_000_000, dest="fetch_size",
                   help="bytes of the FETCHed message (default %(default)s)")
    p.add_argument("--fetch-rounds", type=int, default=20, dest="fetch_rounds",
                   help="FETCHes per target (default %(default)s; 0 skips that part)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--serve-pipe", nargs=2, metavar=("PORT", "UPSTREAM"), dest="serve_pipe",
                   help=argparse.SUPPRESS)  # the pipe target's own process
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(args.targets) - set(TARGETS):
        p.error(f"--targets: unknown {sorted(unknown)}; choose from {list(TARGETS)}")
    if args.sessions < 0 or args.batch < 1 or args.users < 1 or args.fetch_rounds < 0 \
            or args.fetch_size < len(FETCH_LINE) or args.timeout <= 0 or args.settle < 0:
        p.error("--sessions and --fetch-rounds must be 0 or more, the other numbers positive")
    return args


def check_tools(args: argparse.Namespace) -> None:
    missing = [] if Path(DOVECOT).exists() else [DOVECOT]
    if "nginx" in args.targets and shutil.which("nginx") is None:
        missing.append("nginx")
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (see bench/README.md)")
    if os.geteuid() != 0:
        print("warning: not root; nginx's user switch fails, and VmHWM cannot be reset "
              "(the FETCH peak is then only sampled)", file=sys.stderr)


async def run(args: argparse.Namespace, workdir: Path) -> int:
    file_limit = raise_file_limit()
    needed = 2 * (args.sessions + WARMUP_SESSIONS) + 200  # a proxy holds two sockets a session
    if file_limit < needed:
        print(f"warning: file limit {file_limit} < {needed}, which the proxies need")
    users = {user_name(n): PASSWORD for n in range(args.users)} | {FETCH_USER: PASSWORD}
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "imap_hooks.py").write_text(IMAP_HOOKS_PLUGIN)
    body = FETCH_LINE * (args.fetch_size // len(FETCH_LINE))
    message = b"From: bench@bench.test\r\nSubject: big\r\n\r\n" + body
    # Plaintext logins from 127.0.0.1 (nginx, the pipe, direct): there is no TLS here.
    dovecot = Dovecot(users, listen=DOVECOT_HOST, trusted_networks=f"{PROXY_SOURCE}/32", disable_plaintext_auth=False,
                      extra_config=many_sessions_config(args.sessions + WARMUP_SESSIONS))
    auth = None
    sessions: list[SessionResult] = []
    fetch: dict[str, FetchResult] = {}
    try:
        dovecot.start()
        auth = AuthResponder(dovecot.imap_port)
        await auth.start()
        setup = Setup(dovecot, auth, workdir, args.sessions + WARMUP_SESSIONS, args.batch, file_limit)
        print(f"Dovecot {DOVECOT_HOST}:{dovecot.imap_port}; {os.cpu_count()} CPUs; file limit "
              f"{file_limit}; all on loopback, plain text (no TLS)")
        for name in args.targets:
            print(f"  {name:<{NAME_WIDTH}} {TARGETS[name]().note}")
        if args.fetch_rounds:
            dovecot.seed(FETCH_USER, [message])
            print(f"FETCH of {len(message):,} bytes, {args.fetch_rounds} rounds ...", flush=True)
            targets = [Direct()] + [TARGETS[name]() for name in args.targets]
            fetch = await measure_fetch(targets, setup, args, message)
        if args.sessions:
            for name in args.targets:
                print(f"{name}: opening {args.sessions} idle sessions ...", flush=True)
                sessions.append(await measure_sessions(TARGETS[name](), setup, args))
                r = sessions[-1]
                print(f"  {name}: {r.held} held, {fmt(r.kib_per_session, '.1f')} KiB each"
                      + (f"; FAILED: {'; '.join(r.errors)}" if r.errors else ""), flush=True)
    except (SetupError, RuntimeError, OSError) as exc:
        print(f"setup failed: {exc}")
        return 2
    finally:
        if auth is not None:
            auth.stop()
        errors = [line for line in dovecot.log().splitlines() if " Error: " in line or " Fatal: " in line]
        if errors:
            print(f"Dovecot logged {len(errors)} errors, the first: {errors[:3]}")
        dovecot.stop()
    if fetch:
        report_fetch(fetch, len(message), args)
    if sessions:
        report_sessions(sessions, args)
    report_targets(sessions, fetch, len(message))
    failed = any(r.errors for r in sessions) or any(r.errors for r in fetch.values())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_pipe:
        port, upstream = args.serve_pipe
        serve_pipe(int(port), upstream)
        return 0
    check_tools(args)
    # SIGTERM should unwind through the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="imap-bench-"))
    workdir.chmod(0o755)  # nginx's workers run as nobody: keep the way to their prefix open
    try:
        return asyncio.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
