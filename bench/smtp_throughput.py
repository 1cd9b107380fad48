#!/usr/bin/env python3
"""SMTP relay throughput: smtp-sink directly vs nginx's mail proxy vs mailproxy.

Postfix's smtp-source sends 2 KB messages, one message per session, at 1 and at 20
parallel sessions, to each target; every target relays to the same smtp-sink. Targets
are interleaved inside each round so drift on a shared machine hits them all alike, and
the median over rounds is reported. Only the ratios measured in one run mean much:
absolute figures wander by 10-20 % between runs here.

Run as root (smtp-sink drops to nobody, nginx workers run as nobody):

    /tmp/setup/venv/bin/python bench/smtp_throughput.py [--quick] [--targets direct,nginx]

Exit status: 0 if every measurement succeeded, 1 if any failed, 2 on a setup error.
Missing the mailproxy/nginx target ratio is reported, not an error.
"""

from __future__ import annotations

import argparse
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

BENCH_DIR = Path(__file__).resolve().parent
NGINX_TEMPLATE = BENCH_DIR / "nginx-mail.conf.in"
MAILPROXY_TEMPLATE = BENCH_DIR / "mailproxy-bench.toml.in"

SENDER = "sender@bench.example"
RECIPIENT = "user@example.test"  # example.test is the listener's local domain
MESSAGE_SIZE = 2048
SESSION_COUNTS = (1, 20)
TARGET_NAMES = ("direct", "nginx", "mailproxy")
RATIO_GOAL = 0.25  # mailproxy/nginx at 20 sessions

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


def wait_accepting(port: int, proc: subprocess.Popen, what: str, log: Path | None) -> None:
    """Block until something accepts on the port; fail early if the process died."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with {proc.returncode}{log_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"{what} not accepting on port {port} after {START_TIMEOUT:.0f} s{log_tail(log)}")


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


def render(template: Path, dest: Path, **values) -> Path:
    dest.write_text(string.Template(template.read_text()).substitute(**values))
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
    name: str = "mailproxy"
    workers: int = 2
    executable: Path = field(default_factory=lambda: Path(sys.executable).parent / "mailproxy")

    def __post_init__(self) -> None:
        self.note = (f"workers = {self.workers}, plugin access, "
                     f"client_identity xclient ({self.executable})")

    def start(self, sink: Sink, workdir: Path) -> None:
        if not self.executable.exists():
            raise SetupError(f"{self.executable} not found (pip install -e the project "
                             "into the venv that runs this script)")
        home = workdir / "mailproxy"
        home.mkdir()
        self.port = free_port()
        conf = render(MAILPROXY_TEMPLATE, home / "mailproxy.toml",
                      port=self.port, sink_port=sink.port, workers=self.workers)
        self.log = home / "mailproxy.log"
        self.proc = spawn([str(self.executable), "run", "-c", str(conf)], self.log, home)
        wait_accepting(self.port, self.proc, "mailproxy", self.log)


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


def run_source(port: int, sessions: int, messages: int, timeout: float) -> tuple[float, str]:
    """Wall-clock seconds of one smtp-source run, and an error text ('' if it worked)."""
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(MESSAGE_SIZE),
           "-f", SENDER, "-t", RECIPIENT, f"inet:127.0.0.1:{port}"]
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
        except SetupError as exc:
            result.error = str(exc)
    return result


def describe(r: Result, round_no: int, rounds: int) -> str:
    head = f"  round {round_no}/{rounds}  {r.target:<9} {r.sessions:>2} sessions  {r.messages:>5} msgs"
    if r.error:
        return f"{head}  FAILED: {r.error}"
    cpu = "" if r.cpu is None else f"  proxy CPU {r.cpu_us_per_msg:6.0f} µs/msg"
    return f"{head}  {r.seconds:6.3f} s  {r.rate:8.0f} msg/s{cpu}"


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


def print_table(cells, targets: list[str], failed: set[tuple[str, int]]) -> None:
    print(f"\n{'target':<10} {'sessions':>8} {'msg/s':>9} {'/direct':>8} {'/nginx':>8} "
          f"{'proxy CPU µs/msg':>17}")
    for sessions in SESSION_COUNTS:
        for name in targets:
            if (name, sessions) in failed:
                print(f"{name:<10} {sessions:>8} {'FAILED':>9}")
                continue
            rate, cpu = cells[name, sessions]
            ref = {other: cells.get((other, sessions), (None,))[0] for other in ("direct", "nginx")}
            ratio = {k: (rate / v if v else None) for k, v in ref.items()}
            print(f"{name:<10} {sessions:>8} {rate:>9.0f} {fmt(ratio['direct'], '.2f'):>8} "
                  f"{fmt(ratio['nginx'], '.2f'):>8} {fmt(cpu, '.0f'):>17}")


def print_verdict(cells) -> None:
    sessions = max(SESSION_COUNTS)
    ours, theirs = cells.get(("mailproxy", sessions)), cells.get(("nginx", sessions))
    ratio = f"{ours[0] / theirs[0]:.2f}" if ours and theirs else "n/a"
    print(f"\nmailproxy/nginx at {sessions} sessions: {ratio} (target >= {RATIO_GOAL})")


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
    p.add_argument("--warmup", type=int, default=100,
                   help="untimed messages per target before round 1 (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="mailproxy worker processes")
    p.add_argument("--nginx-workers", type=int, default=2, help="nginx worker_processes")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="wall-clock guard per smtp-source run, seconds")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 50/200 messages, 1 round, 20 warm-up")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.messages_1, args.messages_20, args.rounds, args.warmup = 50, 200, 1, 20
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGET_NAMES)
    if unknown or not args.targets:
        p.error(f"--targets: unknown {sorted(unknown)}; choose from {TARGET_NAMES}")
    if min(args.rounds, args.messages_1, args.messages_20) < 1 or args.warmup < 0:
        p.error("--rounds and message counts must be positive")
    return args


def make_target(name: str, args: argparse.Namespace) -> Target:
    if name == "nginx":
        return Nginx(workers=args.nginx_workers)
    if name == "mailproxy":
        return Mailproxy(workers=args.workers)
    return Direct()


def check_tools(targets: list[str]) -> None:
    needed = ["smtp-sink", "smtp-source"] + (["nginx"] if "nginx" in targets else [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (see bench/README.md)")
    if os.geteuid() != 0:
        print("warning: not root; smtp-sink -u nobody and nginx's user switch may fail",
              file=sys.stderr)


def run(args: argparse.Namespace, workdir: Path) -> int:
    counts = {1: args.messages_1, 20: args.messages_20}
    sink = Sink(workdir)
    targets = [make_target(name, args) for name in args.targets]
    results: list[Result] = []
    failed: set[tuple[str, int]] = set()
    try:
        sink.start()
        for t in targets:
            try:
                t.start(sink, workdir)
            except SetupError as exc:
                print(f"{t.name}: could not start: {exc}")
                failed.update((t.name, s) for s in SESSION_COUNTS)
        print(f"smtp-source: {MESSAGE_SIZE}-byte messages, one per session; "
              f"{counts[1]} msgs at 1 session, {counts[20]} at 20; {args.rounds} round(s); "
              f"{os.cpu_count()} CPUs")
        for t in targets:
            print(f"  {t.name:<9} {t.note}")

        live = [t for t in targets if (t.name, SESSION_COUNTS[0]) not in failed]
        for t in list(live):  # first connections, worker start-up, imports: not measured
            if args.warmup:
                w = measure(t, sink, min(20, args.warmup), args.warmup, args.timeout)
                if w.error:
                    print(f"  warm-up {t.name}: FAILED: {w.error}")
                    failed.update((t.name, s) for s in SESSION_COUNTS)
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
    finally:
        for t in targets:
            t.stop()
        sink.stop()

    cells = summarize(results, args.targets, failed)
    print_table(cells, args.targets, failed)
    print_verdict(cells)
    return 1 if failed else 0


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
