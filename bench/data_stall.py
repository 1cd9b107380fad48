#!/usr/bin/env python3
"""Does one big message stall the other sessions? NOOP latency beside a 10 MB DATA.

One mailproxy process (one worker: every session shares one event loop). A session
sends a 10 MB message of short lines that all need normalising (bare LF lines, then
`..a` + bare CR lines, then a clean CRLF message as the control), while a second session
sends NOOPs one after another, each relayed by the proxy and answered by the upstream.
The two sessions come in on two listeners, each in front of its own Postfix smtp-sink:
an smtp-sink busy reading 10 MB answers its other sessions late, and that is not the
proxy's doing. The worst and median NOOP latency, the proxy's peak RSS growth and the
bulk session's reply are printed per case, then PASS if every worst latency is under
100 ms.

Then the memory a message costs the proxy, in its two modes: streaming (the plugins as
in config/mailproxy.toml, none of which implements `smtp_data`, so the proxy may pass
the message on as it arrives) and whole-message (plus bench/plugins/whole_message.py,
an empty `smtp_data` hook, which makes the proxy take the whole message before it
forwards it). For each mode a fresh proxy takes one --size message of clean CRLF lines;
its peak RSS above idle is printed beside the target for streaming (under 2 MiB).

How the peak is measured, for the stall cases and the modes alike: the proxy runs one
worker, in-process, so one PID holds every session. After a warm-up message it is idle;
its VmRSS from /proc/PID/status is the baseline. Writing "5" to /proc/PID/clear_refs
then resets the kernel's high-water mark VmHWM to the current RSS, so the VmHWM read
after the message is the peak of that message's passage alone (neither start-up nor the
warm-up can have set it), however briefly it lasted: no sampling can miss it. Peak
minus baseline is the growth. Writing clear_refs needs root, as the rest does.

Run as root (smtp-sink drops to nobody), from the project's venv:

    .venv/bin/python bench/data_stall.py [--size BYTES] [--max-message-size BYTES]

Exit status: 0 on PASS, 1 on FAIL or a failed measurement, 2 on a setup error. A
missed memory target is reported, not a failure.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # for tests.support

from smtp_throughput import SetupError, Sink, check_tools  # noqa: E402

from tests.support.clients import send_raw  # noqa: E402
from tests.support.proxy import ProxyProcess  # noqa: E402

# A drop-in whose smtp_data hook reads every message, so the path measured includes the
# unstuffed copy that data hooks are given.
DROPINS = BENCH_DIR.parent / "tests" / "integration" / "dropins"
STALL_PLUGINS = (["access", "tagger"], [DROPINS])
# Memory modes -> (enabled plugins, plugin directories). bench/plugins/whole_message.py
# implements smtp_data and does nothing else: it only makes the proxy take the whole message.
MEMORY_MODES = {
    "streaming": (["access"], []),
    "whole": (["access", "whole_message"], [BENCH_DIR / "plugins"]),
}
MEMORY_LINE = b"x" * 76 + b"\r\n"  # a base64 attachment's line: nothing to normalise
STREAMING_GOAL_KIB = 2 * 1024  # peak RSS above idle while the message passes
LATENCY_GOAL = 0.100  # seconds, worst NOOP
CASES = {  # name -> one line of the message, repeated up to --size bytes
    "bare LF": b"ab\n",
    "..a CR": b"..a\r",
    "CRLF": b"ab\r\n",  # the control: nothing to normalise
}
SENDER = "sender@bench.example"
RECIPIENT = "user@example.test"
MAX_NOOPS = 200_000  # bounds of the probing session, whatever happens
MAX_SECONDS = 300.0


def proxy_config(sinks: dict[str, Sink], max_message_size: int,
                 plugins: tuple[list[str], list[Path]]) -> dict:
    """One worker; per sink, an upstream and an mx listener of the same name; the
    plugins enabled, and the directories of the drop-ins among them."""
    enabled, directories = plugins
    return {
        "proxy": {"hostname": "bench.localdomain", "workers": 1, "log_level": "warning",
                  "resolve_client_names": False},  # every session comes from 127.0.0.1
        "upstreams": {name: {"address": f"127.0.0.1:{sink.port}", "tls": "none"}
                      for name, sink in sinks.items()},
        "listeners": [{"name": name, "mode": "mx", "tls": "none", "upstream": name,
                       "local_domains": ["example.test"], "max_message_size": max_message_size}
                      for name in sinks],
        "plugins": {"enabled": enabled, "directories": [str(d) for d in directories]},
    }


def memory_kib(pid: int, field_name: str) -> int:
    """VmRSS (now) or VmHWM (peak since start) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise SetupError(f"no {field_name} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """Set the process's VmHWM back to its current RSS (proc(5), clear_refs "5")."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as exc:
        raise SetupError(f"cannot reset the peak RSS of {pid} (needs root): {exc}") from None


@dataclass
class Result:
    case: str
    sent: int
    reply: str = ""
    latencies: list[float] = field(default_factory=list)
    rss_growth_kib: int = 0
    error: str = ""

    @property
    def worst(self) -> float:
        return max(self.latencies)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)


def probe_noops(client: smtplib.SMTP, stop: threading.Event, interval: float,
                count: int = MAX_NOOPS) -> list[float]:
    """NOOP after NOOP until `stop` is set (and one more after it), each timed."""
    latencies = []
    deadline = time.monotonic() + MAX_SECONDS
    while len(latencies) < count and time.monotonic() < deadline:
        last = stop.is_set()
        started = time.perf_counter()
        code, _ = client.noop()
        latencies.append(time.perf_counter() - started)
        if code != 250:
            raise RuntimeError(f"NOOP answered {code}")
        if last:
            break
        time.sleep(interval)
    return latencies


def send_bulk(port: int, message: bytes, outcome: dict, done: threading.Event) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=MAX_SECONDS) as client:
            client.ehlo("bulk.bench.example")
            code, text = send_raw(client, SENDER, RECIPIENT, message + b"\r\n.\r\n")
            outcome["reply"] = f"{code} {text.decode(errors='replace')}"
    except Exception as exc:  # reported with the result, not raised in a thread
        outcome["error"] = f"bulk session: {exc!r}"
    finally:
        done.set()


def run_case(name: str, line: bytes, args: argparse.Namespace, sinks: dict[str, Sink],
             workdir: Path) -> Result:
    message = line * (args.size // len(line))
    result = Result(name, len(message))
    home = workdir / name.replace(" ", "-").replace(".", "")
    home.mkdir()
    # A fresh proxy per case, so nothing an earlier case left behind counts.
    with ProxyProcess(proxy_config(sinks, args.max_message_size, STALL_PLUGINS), home) as proxy:
        pid, port = proxy.process.pid, proxy.port("bulk")
        done, outcome = threading.Event(), {}
        with smtplib.SMTP("127.0.0.1", proxy.port("probe"), timeout=MAX_SECONDS) as prober:
            prober.ehlo("probe.bench.example")
            # Warm up (imports, first connections, the code paths) before the baseline.
            warm_up = send_raw(prober, SENDER, RECIPIENT, b"Subject: warm-up\r\n\r\nx\r\n.\r\n")
            if warm_up[0] != 250:
                raise SetupError(f"warm-up message answered {warm_up}")
            probe_noops(prober, threading.Event(), 0, count=100)
            baseline = memory_kib(pid, "VmRSS")
            reset_peak_rss(pid)
            delivered_before = sinks["bulk"].messages()
            bulk = threading.Thread(target=send_bulk, args=(port, message, outcome, done))
            bulk.start()
            try:
                result.latencies = probe_noops(prober, done, args.noop_interval)
            except (OSError, smtplib.SMTPException, RuntimeError) as exc:
                outcome.setdefault("error", f"probing session: {exc!r}")
            finally:
                bulk.join(MAX_SECONDS)
        result.rss_growth_kib = memory_kib(pid, "VmHWM") - baseline
    result.reply, result.error = outcome.get("reply", ""), outcome.get("error", "")
    if not done.is_set():
        result.error = f"the bulk session did not finish within {MAX_SECONDS:.0f} s"
    elif result.reply.startswith("250"):
        if sinks["bulk"].wait_messages(delivered_before + 1) == delivered_before:
            result.error = "the proxy said 250 but smtp-sink counted no new message"
    return result


@dataclass
class MemoryResult:
    mode: str
    sent: int
    plugins: list[str]
    reply: str = ""
    rss_growth_kib: int = 0
    error: str = ""


def measure_memory(mode: str, args: argparse.Namespace, sinks: dict[str, Sink],
                   workdir: Path) -> MemoryResult:
    """Peak RSS above idle of a fresh proxy while one message passes through it."""
    message = MEMORY_LINE * (args.size // len(MEMORY_LINE))
    result = MemoryResult(mode, len(message), plugins=MEMORY_MODES[mode][0])
    home = workdir / f"memory-{mode}"
    home.mkdir()
    config = proxy_config(sinks, args.max_message_size, MEMORY_MODES[mode])
    with ProxyProcess(config, home) as proxy:
        pid, port = proxy.process.pid, proxy.port("bulk")
        with smtplib.SMTP("127.0.0.1", port, timeout=MAX_SECONDS) as client:
            client.ehlo("memory.bench.example")
            warm_up = send_raw(client, SENDER, RECIPIENT, b"Subject: warm-up\r\n\r\nx\r\n.\r\n")
            if warm_up[0] != 250:
                raise SetupError(f"warm-up message answered {warm_up}")
            baseline = memory_kib(pid, "VmRSS")
            reset_peak_rss(pid)
            delivered_before = sinks["bulk"].messages()
            try:
                code, text = send_raw(client, SENDER, RECIPIENT, message + b".\r\n")
                result.reply = f"{code} {text.decode(errors='replace')}"
            except (OSError, smtplib.SMTPException, AssertionError) as exc:
                result.error = f"message session: {exc!r}"
        result.rss_growth_kib = memory_kib(pid, "VmHWM") - baseline
    if not result.error and not result.reply.startswith("250"):
        result.error = f"the message was refused: {result.reply}"
    elif not result.error and sinks["bulk"].wait_messages(delivered_before + 1) == delivered_before:
        result.error = "the proxy said 250 but smtp-sink counted no new message"
    return result


def report_memory(results: list[MemoryResult]) -> bool:
    """The table, with the streaming target beside its figure; False if a measurement
    failed (a missed target is not a failure)."""
    print(f"\npeak RSS above idle while one message passes (1 worker)\n"
          f"{'mode':<10} {'sent':>10} {'plugins':<22} {'RSS +MiB':>8}  {'target':<22} reply")
    measured = True
    for r in results:
        plugins = ", ".join(r.plugins)
        if r.error:
            print(f"{r.mode:<10} {r.sent:>10} {plugins:<22} FAILED: {r.error}")
            measured = False
            continue
        target = "-"
        if r.mode == "streaming":
            met = r.rss_growth_kib < STREAMING_GOAL_KIB
            target = f"< {STREAMING_GOAL_KIB / 1024:g} MiB: {'met' if met else 'NOT MET'}"
        print(f"{r.mode:<10} {r.sent:>10} {plugins:<22} {r.rss_growth_kib / 1024:>8.1f}  "
              f"{target:<22} {r.reply[:40]}")
    return measured


def report(results: list[Result]) -> bool:
    print(f"\n{'case':<9} {'sent':>10} {'NOOPs':>6} {'median ms':>10} {'worst ms':>9} "
          f"{'RSS +MiB':>8}  reply")
    passed = True
    for r in results:
        if r.error or not r.latencies:
            print(f"{r.case:<9} {r.sent:>10} FAILED: {r.error or 'no NOOP answered'}")
            passed = False
            continue
        print(f"{r.case:<9} {r.sent:>10} {len(r.latencies):>6} {r.median * 1e3:>10.2f} "
              f"{r.worst * 1e3:>9.1f} {r.rss_growth_kib / 1024:>8.1f}  {r.reply[:60]}")
        passed = passed and r.worst < LATENCY_GOAL
    print(f"\nworst NOOP latency goal: < {LATENCY_GOAL * 1e3:.0f} ms: {'PASS' if passed else 'FAIL'}")
    return passed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=10_000_000, help="bytes of message sent (default %(default)s)")
    p.add_argument("--max-message-size", type=int, default=32 << 20, dest="max_message_size",
                   help="the listener's limit (default %(default)s, so the "
                        "normalised message is delivered; 10485760 shows the refusal instead)")
    p.add_argument("--noop-interval", type=float, default=0.002, dest="noop_interval",
                   help="pause between NOOPs, seconds (default %(default)s)")
    p.add_argument("--cases", default=",".join(CASES),
                   help="comma-separated subset of %(default)s ('' for none)")
    p.add_argument("--memory-modes", default=",".join(MEMORY_MODES), dest="memory_modes",
                   help="comma-separated subset of %(default)s ('' for none)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(args.cases) - set(CASES):
        p.error(f"--cases: unknown {sorted(unknown)}; choose from {list(CASES)}")
    args.memory_modes = [m.strip() for m in args.memory_modes.split(",") if m.strip()]
    if unknown := set(args.memory_modes) - set(MEMORY_MODES):
        p.error(f"--memory-modes: unknown {sorted(unknown)}; choose from {list(MEMORY_MODES)}")
    if args.size < 1 or args.max_message_size < 1024 or args.noop_interval < 0:
        p.error("--size must be positive, --max-message-size at least 1024")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools([])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="data-stall-"))
    workdir.chmod(0o755)  # smtp-sink (nobody) writes its log in here
    sinks = {name: Sink(workdir / f"sink-{name}") for name in ("bulk", "probe")}
    results, memory = [], []
    try:
        for sink in sinks.values():
            sink.workdir.mkdir(mode=0o755)
            sink.start()
        print(f"{args.size} bytes per message, limit {args.max_message_size}; mailproxy "
              f"with 1 worker, a fresh one per case and mode")
        if args.cases:
            print(f"stall cases: plugins access+tagger, a NOOP every "
                  f"{args.noop_interval * 1e3:.0f} ms beside the message")
        for name in args.cases:
            results.append(run_case(name, CASES[name], args, sinks, workdir))
            print(f"  {name}: done", flush=True)
        for mode in args.memory_modes:
            memory.append(measure_memory(mode, args, sinks, workdir))
            print(f"  memory, {mode}: done", flush=True)
    except (SetupError, RuntimeError, OSError, smtplib.SMTPException) as exc:
        print(f"setup failed: {exc}")
        return 2
    finally:
        for sink in sinks.values():
            sink.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    passed = report(results) if results else True
    measured = report_memory(memory) if memory else True
    return 0 if passed and measured else 1


if __name__ == "__main__":
    sys.exit(main())
