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

Run as root (smtp-sink drops to nobody), from the project's venv:

    .venv/bin/python bench/data_stall.py [--size BYTES] [--max-message-size BYTES]

Exit status: 0 on PASS, 1 on FAIL or a failed measurement, 2 on a setup error.
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


def proxy_config(sinks: dict[str, Sink], max_message_size: int) -> dict:
    """One worker; per sink, an upstream and an mx listener of the same name; the
    shipped `access` plugin as in config/mailproxy.toml, and `tagger`, a data hook."""
    return {
        "proxy": {"hostname": "bench.localdomain", "workers": 1, "log_level": "warning",
                  "resolve_client_names": False},  # every session comes from 127.0.0.1
        "upstreams": {name: {"address": f"127.0.0.1:{sink.port}", "tls": "none"}
                      for name, sink in sinks.items()},
        "listeners": [{"name": name, "mode": "mx", "tls": "none", "upstream": name,
                       "local_domains": ["example.test"], "max_message_size": max_message_size}
                      for name in sinks],
        "plugins": {"enabled": ["access", "tagger"], "directories": [str(DROPINS)]},
    }


def memory_kib(pid: int, field_name: str) -> int:
    """VmRSS (now) or VmHWM (peak since start) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise SetupError(f"no {field_name} in /proc/{pid}/status")


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
    # A fresh proxy per case, so its peak RSS belongs to that case alone.
    with ProxyProcess(proxy_config(sinks, args.max_message_size), home) as proxy:
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


def report(results: list[Result]) -> bool:
    print(f"\n{'case':<9} {'sent':>10} {'NOOPs':>6} {'median ms':>10} {'worst ms':>9} "
          f"{'RSS +MB':>8}  reply")
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
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of %(default)s")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(args.cases) - set(CASES):
        p.error(f"--cases: unknown {sorted(unknown)}; choose from {list(CASES)}")
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
    results = []
    try:
        for sink in sinks.values():
            sink.workdir.mkdir(mode=0o755)
            sink.start()
        print(f"{args.size} bytes per message, limit {args.max_message_size}, NOOP every "
              f"{args.noop_interval * 1e3:.0f} ms beside it; mailproxy with 1 worker, plugins access+tagger")
        for name in args.cases:
            results.append(run_case(name, CASES[name], args, sinks, workdir))
            print(f"  {name}: done", flush=True)
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
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
