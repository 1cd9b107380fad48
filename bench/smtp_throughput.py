#!/usr/bin/env python3
"""SMTP relay throughput and added latency: smtp-sink directly vs nginx vs mailproxy.

Postfix's smtp-source sends 2 KB messages, one message per session, at 1, 20 and 50
parallel sessions, to each target; every target relays to the same smtp-sink. The
targets: the sink itself, nginx's mail proxy, and mailproxy with 1 and 2 workers
(streaming the message), with 2 workers taking the whole message before forwarding
it (a bench-only plugin with an empty `smtp_data` hook selects that mode), and with 2
workers running every shipped filtering plugin and the [policy] action stage, their DNS
from a dnsmasq on loopback (bench/plugin_set.py): that one's throughput is reported
against the other 2-worker targets and nginx, and each of its runs is checked against
the proxy's metrics (every check ran and passed, every lookup came from a cache).

Then, per target, while smtp-source keeps 20 sessions busy, a probe client runs
sequential sessions and times each command's round trip (bench/latency.py); the
target's percentiles minus the direct sink's, under the same load, are the added
latency. Targets are interleaved inside each round so drift on a shared machine hits
them all alike; throughput is the median over rounds, latency samples are pooled over
rounds. Only figures measured in one run compare: absolute ones wander by 10-20 %
between runs here. The end of the report states the project's targets, met or not.

Run as root (smtp-sink drops to nobody, nginx workers run as nobody), from the venv the
project is installed in:

    .venv/bin/python bench/smtp_throughput.py [--quick] [--targets direct,nginx]

Exit status: 0 if every measurement succeeded, 1 if any failed, 2 on a setup error.
A missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from latency import COMMANDS, STEPS, Samples, run_probe
from plugin_set import PLUGINS, PluginSet, PrimeError, Snapshot

BENCH_DIR = Path(__file__).resolve().parent
NGINX_TEMPLATE = BENCH_DIR / "nginx-mail.conf.in"
MAILPROXY_TEMPLATE = BENCH_DIR / "mailproxy-bench.toml.in"
BENCH_PLUGINS = BENCH_DIR / "plugins"  # whole_message.py: the empty smtp_data hook

SENDER = "sender@bench.example"
RECIPIENT = "user@example.test"  # example.test is the listener's local domain
# HELO names: smtp-source's (-M), and the one latency.py's probe says in its EHLO.
# mailproxy-plugins's DNS gives both an A record, as the helo plugin wants.
SOURCE_HELO = "source.bench.example"
PROBE_HELO = "probe.bench.example"
MESSAGE_SIZE = 2048
SESSION_COUNTS = (1, 20, 50)
MAILPROXY_TARGETS = {  # name -> (workers, whole message before forwarding)
    "mailproxy-1w": (1, False),
    "mailproxy-2w": (2, False),
    "mailproxy-whole": (2, True),
}
PLUGINS_TARGET = "mailproxy-plugins"  # 2 workers, every shipped filtering plugin
TARGET_NAMES = ("direct", "nginx", *MAILPROXY_TARGETS, PLUGINS_TARGET)

LOAD_SESSIONS = 20  # smtp-source sessions beside the latency probe
LOAD_MESSAGES = 1_000_000  # the load is stopped when the probe ends: this only bounds it

# The project's targets. Throughput: (label, target, reference, sessions, minimum ratio).
RATIO_GOALS = (
    ("mailproxy-2w", "mailproxy-2w", "nginx", 20, 0.5),
    ("mailproxy-2w", "mailproxy-2w", "nginx", 1, 0.5),
    ("streaming (mailproxy-2w)", "mailproxy-2w", "nginx", 20, 0.7),
    # The full plugin set costs at most 25 % of the throughput of access alone.
    (PLUGINS_TARGET, PLUGINS_TARGET, "mailproxy-2w", 20, 0.75),
    (PLUGINS_TARGET, PLUGINS_TARGET, "mailproxy-2w", 1, 0.75),
)
# What the plugins target is compared with, in its own table.
PLUGIN_COST_REFERENCES = ("mailproxy-2w", "mailproxy-whole", "nginx")
LATENCY_GOAL_TARGET = "mailproxy-2w"
ADDED_P99_GOAL_MS = 1.0  # per command, at LOAD_SESSIONS sessions, target minus direct

NAME_WIDTH = max(len(name) for name in TARGET_NAMES)  # the target column of every table
START_TIMEOUT = 15.0  # seconds for a server to start accepting
STOP_TIMEOUT = 15.0  # mailproxy drains for shutdown_grace (default 10 s) on SIGTERM
SETTLE = 0.2  # pause after a run so closing connections are charged to that run's CPU
CLK_TCK = os.sysconf("SC_CLK_TCK")


class SetupError(Exception):
    """A server could not be started; its measurements count as failed."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port that was free a moment ago (none of these servers reports a port 0 bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(port: int, proc: subprocess.Popen, what: str, log: Path | None,
                   seconds: float = START_TIMEOUT) -> None:
    """Block until something accepts on the port; fail early if the process died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with {proc.returncode}{log_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"{what} not accepting on port {port} after {seconds:.0f} s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return ("\n  | " + "\n  | ".join(text)) if text else ""


def spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    # Own session, so a master that must be killed can take its workers with it.
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=cwd, start_new_session=True,
        )


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM (nginx: fast shutdown; mailproxy: graceful), then SIGKILL the group."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we created in spawn()
        except ProcessLookupError:
            pass
        proc.wait(5)


def substitute(template: Path, **values) -> str:
    return string.Template(template.read_text()).substitute(**values)


def render(template: Path, dest: Path, **values) -> Path:
    dest.write_text(substitute(template, **values))
    return dest


# ------------------------------------------------------------------- CPU from /proc


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime+cutime+cstime in ticks) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # exited while we looked
            continue
        # comm may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        ppid = int(fields[1])
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        table[int(entry)] = (ppid, ticks)
    return table


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process and all its descendants. Children's own counters plus the
    parents' cutime/cstime (reaped children) keep the sum right if a worker is replaced."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
            todo.extend(children.get(pid, ()))
    return total / CLK_TCK


# ------------------------------------------------------------------------- servers


@dataclass
class Sink:
    """The one smtp-sink every target relays to. Its -c counters (written to a log
    file) let each run check that the messages really reached it."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "smtp-sink.log"

    def start(self) -> None:
        self.port = free_port()
        # As root it needs -u; the backlog argument is required. No -d: no dumping.
        cmd = ["smtp-sink", "-u", "nobody", "-c", f"inet:127.0.0.1:{self.port}", "256"]
        self.proc = spawn(cmd, self.log, self.workdir)
        wait_accepting(self.port, self.proc, "smtp-sink", self.log)

    def messages(self) -> int:
        """Last 'mesg=N' counter the sink printed (lines end in CR, hence the tail)."""
        with open(self.log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 256))
            found = re.findall(rb"mesg=(\d+)", f.read())
        return int(found[-1]) if found else 0

    def wait_messages(self, expected: int, timeout: float = 3.0) -> int:
        deadline = time.monotonic() + timeout
        while (n := self.messages()) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return n

    def wait_quiet(self, quiet: float = 0.5, timeout: float = 10.0) -> None:
        """Until the message counter has stood still for `quiet` seconds: after a load
        was cut off, its last messages must not be counted in the next run."""
        deadline = time.monotonic() + timeout
        last, since = self.messages(), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.05)
            if (n := self.messages()) != last:
                last, since = n, time.monotonic()

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class Target:
    """Something smtp-source talks to. Subclasses start a proxy in front of the sink."""

    name: str
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    note: str = ""  # printed in the header: how the target was configured

    def start(self, sink: Sink, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        stop(self.proc)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise SetupError(f"{self.name} exited with {self.proc.returncode}{log_tail(self.log)}")

    def cpu_seconds(self) -> float | None:
        """CPU of the proxy's process tree; None when there is no proxy."""
        return tree_cpu_seconds(self.proc.pid) if self.proc else None

    def prepare(self) -> str:
        """Bring the target to the state it is measured in, after start and before the
        warm-up; what that took, in words ('' when there is nothing to do)."""
        return ""

    def run_started(self) -> None:
        """Just before an smtp-source run (outside its timing and CPU)."""

    def run_error(self, messages: int) -> str:
        """After a run whose messages all arrived: why it does not count ('' if it does)."""
        return ""


@dataclass
class Direct(Target):
    name: str = "direct"
    note: str = "smtp-source -> smtp-sink"

    def start(self, sink: Sink, workdir: Path) -> None:
        self.port = sink.port


@dataclass
class Nginx(Target):
    name: str = "nginx"
    workers: int = 2

    def __post_init__(self) -> None:
        self.note = f"worker_processes {self.workers}, xclient on, smtp_auth none"

    def start(self, sink: Sink, workdir: Path) -> None:
        prefix = workdir / "nginx"
        prefix.mkdir()
        # nginx workers run as nobody and must reach the auth unix socket in here.
        prefix.chmod(0o755)
        self.port = free_port()
        conf = render(NGINX_TEMPLATE, prefix / "nginx.conf", prefix=prefix,
                      port=self.port, sink_port=sink.port, workers=self.workers)
        self.log = prefix / "error.log"
        self.proc = spawn(["nginx", "-p", str(prefix), "-c", str(conf)],
                          prefix / "stdout.log", prefix)
        wait_accepting(self.port, self.proc, "nginx", self.log)


@dataclass
class Mailproxy(Target):
    name: str = "mailproxy-2w"
    workers: int = 2
    whole_message: bool = False  # enable the bench's empty smtp_data hook
    executable: Path = field(default_factory=lambda: Path(sys.executable).parent / "mailproxy")
    metrics_port: int = 0

    def __post_init__(self) -> None:
        plugins = ", ".join(p for p in self.plugins if p != "whole_message")
        self.note = (f"workers = {self.workers}, plugins {plugins}, metrics on, "
                     f"client_identity xclient, {self.mode} ({self.executable})")

    @property
    def plugins(self) -> list[str]:
        return ["access", "whole_message"] if self.whole_message else ["access"]

    @property
    def mode(self) -> str:
        return ("whole message (plugin whole_message: empty smtp_data hook)"
                if self.whole_message else "streaming (no smtp_data hook)")

    def config(self, sink: Sink) -> str:
        directories = [str(BENCH_PLUGINS)] if self.whole_message else []
        # JSON arrays of plain strings are TOML arrays too.
        return substitute(MAILPROXY_TEMPLATE, port=self.port, sink_port=sink.port,
                          metrics_port=self.metrics_port, workers=self.workers,
                          enabled=json.dumps(self.plugins), directories=json.dumps(directories))

    def start(self, sink: Sink, workdir: Path) -> None:
        if not self.executable.exists():
            raise SetupError(f"{self.executable} not found (pip install -e the project "
                             "into the venv that runs this script)")
        home = workdir / self.name
        home.mkdir()
        self.port, self.metrics_port = free_port(), free_port()
        conf = home / "mailproxy.toml"
        conf.write_text(self.config(sink))
        self.log = home / "mailproxy.log"
        self.proc = spawn([str(self.executable), "run", "-c", str(conf)], self.log, home)
        wait_accepting(self.port, self.proc, self.name, self.log)


@dataclass
class MailproxyPlugins(Mailproxy):
    """2 workers and every shipped filtering plugin, each doing its full work for every
    message and letting it through (bench/plugin_set.py): its DNS from a dnsmasq on
    loopback, warm caches, a greylist that knows the bench's triplet. Every run is
    checked against the proxy's metrics: a run in which a check did not run, or did not
    pass, fails."""

    name: str = PLUGINS_TARGET
    plugin_set: PluginSet = field(default_factory=PluginSet)
    before: Snapshot | None = None

    @property
    def plugins(self) -> list[str]:
        return PLUGINS

    @property
    def mode(self) -> str:
        return "whole message (plugin headers: smtp_data hook)"

    def config(self, sink: Sink) -> str:
        return super().config(sink) + "\n" + self.plugin_set.config()

    def start(self, sink: Sink, workdir: Path) -> None:
        try:
            self.plugin_set.start_dns(SENDER.rpartition("@")[2], (SOURCE_HELO, PROBE_HELO))
        except (OSError, RuntimeError) as exc:  # TimeoutError is an OSError
            raise SetupError(f"dnsmasq: {exc}") from None
        self.note += (f"; [policy] thresholds and X-Spam headers; DNS from dnsmasq on "
                      f"{self.plugin_set.dns_address}, state in memory")
        super().start(sink, workdir)

    def prepare(self) -> str:
        try:
            return self.plugin_set.prime(self.port, SENDER, RECIPIENT, (PROBE_HELO, SOURCE_HELO),
                                         probe_message())
        except (OSError, PrimeError) as exc:
            raise SetupError(f"priming the greylist: {exc}") from None

    def run_started(self) -> None:
        self.before = self.plugin_set.snapshot(self.metrics_port)

    def run_error(self, messages: int) -> str:
        return self.plugin_set.check_run(self.before, self.plugin_set.snapshot(self.metrics_port),
                                         messages)

    def stop(self) -> None:
        super().stop()
        self.plugin_set.stop()


# ---------------------------------------------------------------------- measuring


@dataclass
class Result:
    target: str
    sessions: int
    messages: int
    seconds: float = 0.0
    cpu: float | None = None  # proxy CPU seconds during the run
    error: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us_per_msg(self) -> float | None:
        return None if self.cpu is None else self.cpu / self.messages * 1e6


def source_command(port: int, sessions: int, messages: int) -> list[str]:
    return ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(MESSAGE_SIZE),
            "-M", SOURCE_HELO, "-f", SENDER, "-t", RECIPIENT, f"inet:127.0.0.1:{port}"]


def run_source(port: int, sessions: int, messages: int, timeout: float) -> tuple[float, str]:
    """Wall-clock seconds of one smtp-source run, and an error text ('' if it worked)."""
    cmd = source_command(port, sessions, messages)
    start = time.perf_counter()
    try:
        # subprocess.run kills smtp-source when the guard expires.
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return timeout, f"smtp-source killed after {timeout:.0f} s"
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        return elapsed, f"smtp-source exited {done.returncode}: {stderr[-2000:]}"
    return elapsed, ""


def measure(target: Target, sink: Sink, sessions: int, messages: int, timeout: float) -> Result:
    result = Result(target.name, sessions, messages)
    try:
        target.check_alive()
    except SetupError as exc:
        result.error = str(exc)
        return result
    delivered_before = sink.messages()
    try:
        target.run_started()
    except OSError as exc:  # e.g. the metrics endpoint did not answer
        result.error = f"before the run: {exc}"
        return result
    cpu_before = target.cpu_seconds()
    result.seconds, result.error = run_source(target.port, sessions, messages, timeout)
    delivered = sink.wait_messages(delivered_before + messages) - delivered_before
    time.sleep(SETTLE)
    if cpu_before is not None:
        result.cpu = target.cpu_seconds() - cpu_before
    if not result.error and delivered != messages:
        # A proxy that said 250 without relaying would otherwise look fast.
        result.error = f"smtp-sink counted {delivered} of {messages} messages"
    if not result.error:
        try:
            target.check_alive()
            result.error = target.run_error(messages)
        except SetupError as exc:
            result.error = str(exc)
        except OSError as exc:
            result.error = f"after the run: {exc}"
    return result


def describe(r: Result, round_no: int, rounds: int) -> str:
    head = (f"  round {round_no}/{rounds}  {r.target:<{NAME_WIDTH}} {r.sessions:>2} sessions  "
            f"{r.messages:>5} msgs")
    if r.error:
        return f"{head}  FAILED: {r.error}"
    cpu = "" if r.cpu is None else f"  proxy CPU {r.cpu_us_per_msg:6.0f} µs/msg"
    return f"{head}  {r.seconds:6.3f} s  {r.rate:8.0f} msg/s{cpu}"


def probe_message(size: int = MESSAGE_SIZE) -> bytes:
    """About `size` bytes like smtp-source's: a few headers, then short lines (none
    starts with a dot, so nothing needs stuffing); ends in CRLF."""
    head = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: latency probe\r\n\r\n".encode()
    line = b"x" * 78 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def stop_load(load: subprocess.Popen) -> None:
    if load.poll() is None:
        load.terminate()
        try:
            load.wait(5)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()


def measure_latency(target: Target, sink: Sink, args: argparse.Namespace,
                    workdir: Path) -> tuple[Samples, str]:
    """Probe sessions against the target while smtp-source keeps LOAD_SESSIONS sessions
    busy on it; the round trips, and an error text ('' if it worked)."""
    try:
        target.check_alive()
    except SetupError as exc:
        return Samples(), str(exc)
    delivered_before = sink.messages()
    log = workdir / f"load-{target.name}.log"
    with open(log, "ab") as out:
        load = subprocess.Popen(source_command(target.port, LOAD_SESSIONS, LOAD_MESSAGES),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        # The load is on once the sink has seen a message per session.
        if sink.wait_messages(delivered_before + LOAD_SESSIONS, START_TIMEOUT) \
                < delivered_before + LOAD_SESSIONS:
            return Samples(), f"the {LOAD_SESSIONS}-session load did not get going{log_tail(log)}"
        samples, error = run_probe(target.port, SENDER, RECIPIENT, probe_message(),
                                   args.probe_sessions, args.probe_seconds,
                                   load_running=lambda: load.poll() is None)
        if not error and load.poll() is not None:
            error = f"smtp-source (the load) exited {load.returncode} under the probe{log_tail(log)}"
    finally:
        stop_load(load)
        sink.wait_quiet()  # the cut-off load's last messages belong to no run
    if not error:
        try:
            target.check_alive()
        except SetupError as exc:
            error = str(exc)
    return samples, error


def describe_latency(name: str, samples: Samples, error: str, round_no: int, rounds: int) -> str:
    head = f"  round {round_no}/{rounds}  {name:<{NAME_WIDTH}} probe beside {LOAD_SESSIONS} sessions"
    if error:
        return f"{head}  FAILED: {error}"
    worst = max(COMMANDS, key=lambda step: samples.percentile_ms(step, 0.99) or 0.0)
    return (f"{head}  {samples.sessions:>4} probe sessions  slowest p99 "
            f"{fmt(samples.percentile_ms(worst, 0.99), '.2f')} ms ({worst})")


# ------------------------------------------------------------------------ report


def median_or_none(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results: list[Result], targets: list[str], failed: set[tuple[str, int]]):
    """(target, sessions) -> (median msg/s, median CPU µs/msg); a cell with any failed
    round is left out, since a median of the survivors would flatter it."""
    cells = {}
    for name in targets:
        for sessions in SESSION_COUNTS:
            if (name, sessions) in failed:
                continue
            runs = [r for r in results if r.target == name and r.sessions == sessions]
            if runs:
                cells[name, sessions] = (statistics.median(r.rate for r in runs),
                                         median_or_none([r.cpu_us_per_msg for r in runs]))
    return cells


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(cells, name: str, reference: str, sessions: int) -> float | None:
    ours, theirs = cells.get((name, sessions)), cells.get((reference, sessions))
    return ours[0] / theirs[0] if ours and theirs else None


def print_table(cells, targets: list[str], failed: set[tuple[str, int]]) -> None:
    print(f"\nthroughput (median over rounds)\n"
          f"{'target':<{NAME_WIDTH}} {'sessions':>8} {'msg/s':>9} {'/direct':>8} {'/nginx':>8} "
          f"{'proxy CPU µs/msg':>17}")
    for sessions in SESSION_COUNTS:
        for name in targets:
            if (name, sessions) in failed:
                print(f"{name:<{NAME_WIDTH}} {sessions:>8} {'FAILED':>9}")
                continue
            rate, cpu = cells[name, sessions]
            print(f"{name:<{NAME_WIDTH}} {sessions:>8} {rate:>9.0f} "
                  f"{fmt(ratio(cells, name, 'direct', sessions), '.2f'):>8} "
                  f"{fmt(ratio(cells, name, 'nginx', sessions), '.2f'):>8} {fmt(cpu, '.0f'):>17}")


def print_plugin_cost(cells, targets: list[str], failed: set[tuple[str, int]]) -> None:
    """The plugins target against mailproxy with access alone (streaming, and taking the
    whole message, the mode a plugin with an smtp_data hook selects) and against nginx."""
    references = [name for name in PLUGIN_COST_REFERENCES if name in targets]
    print(f"\ncost of every shipped plugin ({', '.join(PLUGINS)}), median over rounds\n"
          f"{'target':<{NAME_WIDTH}} {'sessions':>8} {'msg/s':>9}"
          + "".join(f" {'/' + name:>16}" for name in references) + f" {'proxy CPU µs/msg':>17}")
    for sessions in SESSION_COUNTS:
        if (PLUGINS_TARGET, sessions) in failed:
            print(f"{PLUGINS_TARGET:<{NAME_WIDTH}} {sessions:>8} {'FAILED':>9}")
            continue
        rate, cpu = cells[PLUGINS_TARGET, sessions]
        print(f"{PLUGINS_TARGET:<{NAME_WIDTH}} {sessions:>8} {rate:>9.0f}"
              + "".join(f" {fmt(ratio(cells, PLUGINS_TARGET, name, sessions), '.2f'):>16}"
                        for name in references)
              + f" {fmt(cpu, '.0f'):>17}")


def added_ms(latency: dict[str, Samples], name: str, step: str, fraction: float) -> float | None:
    """The target's percentile minus the direct sink's, under the same load."""
    ours, direct = latency.get(name), latency.get("direct")
    if ours is None or direct is None or name == "direct":
        return None
    a, b = ours.percentile_ms(step, fraction), direct.percentile_ms(step, fraction)
    return None if a is None or b is None else a - b


def print_latency(latency: dict[str, Samples], targets: list[str], failed: set[str]) -> None:
    print(f"\nround trip per command at {LOAD_SESSIONS} sessions of load, ms (probe sessions "
          f"pooled over rounds; +p50/+p99: minus direct's)")
    print(f"{'target':<{NAME_WIDTH}} {'probes':>6} {'':>4}" + "".join(f"{step:>9}" for step in STEPS))
    for name in targets:
        if name in failed or name not in latency:
            print(f"{name:<{NAME_WIDTH}} {'FAILED' if name in failed else '-':>6}")
            continue
        samples = latency[name]
        rows = {"p50": [samples.percentile_ms(step, 0.5) for step in STEPS],
                "p99": [samples.percentile_ms(step, 0.99) for step in STEPS]}
        if name != "direct":
            rows["+p50"] = [added_ms(latency, name, step, 0.5) for step in STEPS]
            rows["+p99"] = [added_ms(latency, name, step, 0.99) for step in STEPS]
        for index, (stat, values) in enumerate(rows.items()):
            label = (f"{name:<{NAME_WIDTH}} {samples.sessions:>6}" if index == 0
                     else " " * (NAME_WIDTH + 7))
            print(f"{label} {stat:>4}" + "".join(f"{fmt(v, '.2f'):>9}" for v in values))


def verdict_line(goal: str, measured: str, met: bool | None) -> str:
    state = "not measured" if met is None else ("met" if met else "NOT MET")
    return f"  {goal:<58} {measured:<28} {state}"


def print_verdict(cells, latency: dict[str, Samples]) -> None:
    print("\ntargets (from this run's figures; a missed target is reported, not an error)")
    for label, name, reference, sessions, minimum in RATIO_GOALS:
        value = ratio(cells, name, reference, sessions)
        plural = "session" if sessions == 1 else "sessions"
        print(verdict_line(f"{label} >= {minimum:.2f}x {reference} at {sessions} {plural}",
                           fmt(value, ".2f") + "x" if value is not None else "-",
                           None if value is None else value >= minimum))
    added = {step: added_ms(latency, LATENCY_GOAL_TARGET, step, 0.99) for step in COMMANDS}
    goal = (f"added p99 per command ({LATENCY_GOAL_TARGET}, {LOAD_SESSIONS} sessions) "
            f"< {ADDED_P99_GOAL_MS:g} ms")
    if any(value is None for value in added.values()):
        print(verdict_line(goal, "-", None))
    else:
        worst = max(added, key=added.get)
        print(verdict_line(goal, f"worst {added[worst]:+.2f} ms ({worst})",
                           added[worst] < ADDED_P99_GOAL_MS))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGET_NAMES),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--rounds", type=int, default=3, help="repeat the whole set (median reported)")
    p.add_argument("--messages-1", type=int, default=500, dest="messages_1",
                   help="messages per run at 1 session (default %(default)s)")
    p.add_argument("--messages-20", type=int, default=2000, dest="messages_20",
                   help="messages per run at 20 sessions (default %(default)s)")
    p.add_argument("--messages-50", type=int, default=2000, dest="messages_50",
                   help="messages per run at 50 sessions (default %(default)s)")
    p.add_argument("--probe-sessions", type=int, default=200, dest="probe_sessions",
                   help="latency probe: at most this many sessions per target and round "
                        "(default %(default)s; 0 skips the latency phase)")
    p.add_argument("--probe-seconds", type=float, default=5.0, dest="probe_seconds",
                   help="latency probe: at most this long per target and round (default %(default)s)")
    p.add_argument("--warmup", type=int, default=100,
                   help="untimed messages per target before round 1 (default %(default)s)")
    p.add_argument("--nginx-workers", type=int, default=2, help="nginx worker_processes")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="wall-clock guard per smtp-source run, seconds")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 50/200/200 messages, 1 round, 20 warm-up, "
                        "at most 50 probe sessions or 2 s per target")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.messages_1, args.messages_20, args.messages_50 = 50, 200, 200
        args.rounds, args.warmup = 1, 20
        args.probe_sessions, args.probe_seconds = min(args.probe_sessions, 50), 2.0
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGET_NAMES)
    if unknown or not args.targets:
        p.error(f"--targets: unknown {sorted(unknown)}; choose from {TARGET_NAMES}")
    if min(args.rounds, args.messages_1, args.messages_20, args.messages_50) < 1 \
            or args.warmup < 0:
        p.error("--rounds and message counts must be positive")
    if args.probe_sessions < 0 or args.probe_seconds <= 0:
        p.error("--probe-sessions must be 0 or more, --probe-seconds positive")
    return args


def make_target(name: str, args: argparse.Namespace) -> Target:
    if name == "nginx":
        return Nginx(workers=args.nginx_workers)
    if name in MAILPROXY_TARGETS:
        workers, whole_message = MAILPROXY_TARGETS[name]
        return Mailproxy(name=name, workers=workers, whole_message=whole_message)
    if name == PLUGINS_TARGET:
        return MailproxyPlugins()
    return Direct()


def check_tools(targets: list[str]) -> None:
    needed = ["smtp-sink", "smtp-source"] + (["nginx"] if "nginx" in targets else []) \
        + (["dnsmasq"] if PLUGINS_TARGET in targets else [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (see bench/README.md)")
    if os.geteuid() != 0:
        print("warning: not root; smtp-sink -u nobody and nginx's user switch may fail",
              file=sys.stderr)


def run(args: argparse.Namespace, workdir: Path) -> int:
    counts = dict(zip(SESSION_COUNTS, (args.messages_1, args.messages_20, args.messages_50)))
    sink = Sink(workdir)
    targets = [make_target(name, args) for name in args.targets]
    results: list[Result] = []
    failed: set[tuple[str, int]] = set()
    latency = {name: Samples() for name in args.targets}
    latency_failed: set[str] = set()
    try:
        sink.start()
        for t in targets:
            try:
                t.start(sink, workdir)
            except SetupError as exc:
                print(f"{t.name}: could not start: {exc}")
                failed.update((t.name, s) for s in SESSION_COUNTS)
                latency_failed.add(t.name)
        runs = ", ".join(f"{n} msgs at {s} session{'s' * (s > 1)}" for s, n in counts.items())
        print(f"smtp-source: {MESSAGE_SIZE}-byte messages, one per session; {runs}; "
              f"{args.rounds} round(s); {os.cpu_count()} CPUs")
        if args.probe_sessions:
            print(f"latency probe: per target and round, at most {args.probe_sessions} "
                  f"sessions or {args.probe_seconds:g} s beside a {LOAD_SESSIONS}-session load")
        for t in targets:
            print(f"  {t.name:<{NAME_WIDTH}} {t.note}")

        live = [t for t in targets if (t.name, SESSION_COUNTS[0]) not in failed]
        for t in list(live):  # first connections, worker start-up, imports: not measured
            try:
                if prepared := t.prepare():
                    print(f"  prepared {t.name}: {prepared}")
                if args.warmup:
                    w = measure(t, sink, min(20, args.warmup), args.warmup, args.timeout)
                    if w.error:
                        raise SetupError(w.error)
            except SetupError as exc:
                print(f"  warm-up {t.name}: FAILED: {exc}")
                failed.update((t.name, s) for s in SESSION_COUNTS)
                latency_failed.add(t.name)
                live.remove(t)

        # Targets interleaved inside each round: drift on a shared machine hits all alike.
        for round_no in range(1, args.rounds + 1):
            for sessions in SESSION_COUNTS:
                for t in live:
                    r = measure(t, sink, sessions, counts[sessions], args.timeout)
                    print(describe(r, round_no, args.rounds), flush=True)
                    if r.error:
                        failed.add((t.name, sessions))
                    else:
                        results.append(r)
            if args.probe_sessions:
                for t in live:  # direct too: it is the reference
                    samples, error = measure_latency(t, sink, args, workdir)
                    print(describe_latency(t.name, samples, error, round_no, args.rounds),
                          flush=True)
                    if error:
                        latency_failed.add(t.name)
                    else:
                        latency[t.name].extend(samples)
    finally:
        for t in targets:
            t.stop()
        sink.stop()

    cells = summarize(results, args.targets, failed)
    print_table(cells, args.targets, failed)
    for t in targets:
        if isinstance(t, MailproxyPlugins):
            print_plugin_cost(cells, args.targets, failed)
            print(f"\nchecked in {t.name}'s runs after priming (warm-up included), from its "
                  f"/metrics and dnsmasq's query log:\n  {t.plugin_set.evidence.summary()}")
    # A target with a failed round is left out, as in the throughput table.
    latency = {name: s for name, s in latency.items()
               if name not in latency_failed and s.sessions and args.probe_sessions}
    if args.probe_sessions:
        print_latency(latency, args.targets, latency_failed)
    print_verdict(cells, latency)
    return 1 if failed or latency_failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.targets)
    # SIGTERM should unwind through the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    workdir.chmod(0o755)  # smtp-sink and nginx workers (nobody) must reach into it
    try:
        return run(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
