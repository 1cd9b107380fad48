"""Where the shipped plugin set's CPU goes: one worker, `access` alone against every
plugin of the mailproxy-plugins target, per message.

    python bench/profile_plugins.py [--messages N] [--sessions S] [--multiprocess-metrics]
                                    [--cprofile [--top K] | --instructions] [--each] [--save DIR]

For each of the two configurations it starts smtp-sink and a one-worker mailproxy (the
plugin set with the bench's dnsmasq and a primed greylist, as in smtp_throughput.py),
sends N messages with smtp-source at S sessions, and prints the proxy's CPU per message
from /proc. With --cprofile the proxy runs under cProfile instead, and the script prints
Python calls per message and the functions whose own time per message grew most from
`access` alone to the full set (cProfile's own overhead inflates every figure alike;
read them as shares, not as the cost without it). With --instructions the proxy runs
under valgrind's callgrind, which counts the instructions it executes while the
messages go through: a figure that does not move with the load of a shared machine,
so two versions of the code can be compared on it (use a few hundred messages: it is
some 50 times slower). --each also measures the full set less each plugin in turn:
what each one adds (less `headers`, the proxy streams messages again, so its figure
includes taking messages whole). --multiprocess-metrics makes the one worker keep its
metrics as `workers > 1` does (prometheus_client's multiprocess mode, each update
written to a shared file), which costs about twice as much per update: the figures
then match the throughput benchmark's two-worker targets. Loopback only; every run is bounded by N and a timeout. Run as
root from the repository (smtp-sink drops to nobody).
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from plugin_set import PLUGINS, PluginSet  # noqa: E402
from smtp_throughput import free_port, spawn, stop, substitute, tree_cpu_seconds, wait_accepting  # noqa: E402

SENDER, RECIPIENT = "sender@bench.example", "user@example.test"
HELO_NAMES = ("probe.bench.example", "source.bench.example")
MESSAGE = b"Subject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"
RUN_TIMEOUT = 300.0


def measure(name: str, plugins: PluginSet | None, args, work: Path, enabled: list[str] = PLUGINS) -> Path | None:
    sink_port, port, metrics_port = free_port(), free_port(), free_port()
    config = substitute(BENCH_DIR / "mailproxy-bench.toml.in", workers=1, port=port, sink_port=sink_port,
                        metrics_port=metrics_port, directories="[]",
                        enabled=repr(enabled if plugins else ["access"]).replace("'", '"'))
    if plugins:
        config += without_sections(plugins.config(), set(PLUGINS) - set(enabled))
    config_path = work / f"{name}.toml"
    config_path.write_text(config)
    profile = work / f"{name}.prof" if args.cprofile else None
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
               "-m", "mailproxy.cli", "run", "-c", str(config_path)]
    counts = work / f"{name}.callgrind"
    if args.instructions:
        # Counting starts only when told (once the proxy is up and primed).
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={counts}", *command]
    log = work / f"{name}.log"
    sink = proxy = None
    try:
        sink = spawn(["smtp-sink", "-u", "nobody", f"inet:127.0.0.1:{sink_port}", "1024"], work / "sink.log", ROOT)
        proxy = spawn(command, log, ROOT)
        wait_accepting(port, proxy, "mailproxy", log, 120.0 if args.instructions else 20.0)
        if plugins:
            plugins.prime(port, SENDER, RECIPIENT, HELO_NAMES, MESSAGE)
        if args.instructions:
            subprocess.run(["callgrind_control", "--instr=on", str(proxy.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before, started = tree_cpu_seconds(proxy.pid), time.monotonic()
        subprocess.run(["smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-l", "2048",
                        "-M", HELO_NAMES[1], "-f", SENDER, "-t", RECIPIENT, f"inet:127.0.0.1:{port}"],
                       check=True, timeout=RUN_TIMEOUT)
        elapsed, cpu = time.monotonic() - started, tree_cpu_seconds(proxy.pid) - before
        if args.instructions:
            subprocess.run(["callgrind_control", "--dump", str(proxy.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"{name:9} {instructions(work, name) / args.messages:10,.0f} instructions/msg", flush=True)
        else:
            print(f"{name:9} {args.messages / elapsed:7.0f} msg/s   proxy CPU {cpu * 1e6 / args.messages:6.0f} µs/msg",
                  flush=True)
    finally:
        stop(proxy)  # SIGTERM: the proxy drains and cProfile writes its file
        stop(sink)
    return profile


def without_sections(config: str, plugins: set[str]) -> str:
    """`config` less the `[plugin.NAME]` sections (and their tables) of `plugins`: the
    proxy refuses a section for a plugin that is not enabled."""
    kept, skipping = [], False
    for line in config.splitlines(keepends=True):
        header = line.strip().strip("[]") if line.lstrip().startswith("[") else None
        if header is not None:
            skipping = any(header == f"plugin.{name}" or header.startswith(f"plugin.{name}.") for name in plugins)
        if not skipping:
            kept.append(line)
    return "".join(kept)


def instructions(work: Path, name: str) -> int:
    """The instructions counted since counting began: the dump callgrind_control asked
    for (the file with a part number)."""
    dumps = sorted(work.glob(f"{name}.callgrind.*"))
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no instruction count in {dumps[-1]}")


def own_time_per_message(path: Path, messages: int) -> tuple[dict, float]:
    stats = pstats.Stats(str(path)).stats
    calls = sum(v[1] for v in stats.values()) / messages
    return {key: value[2] / messages for key, value in stats.items()}, calls


def compare(access: Path, full: Path, messages: int, top: int) -> None:
    before, calls_before = own_time_per_message(access, messages)
    after, calls_after = own_time_per_message(full, messages)
    print(f"\nPython calls per message: access {calls_before:.0f}, every plugin {calls_after:.0f}")
    growth = sorted(((after.get(k, 0.0) - before.get(k, 0.0), k) for k in after.keys() | before.keys()),
                    reverse=True)
    total = sum(after.values()) - sum(before.values())
    print(f"own time per message under cProfile: +{total * 1e6:.0f} µs; the largest shares:")
    for grown, (filename, line, function) in growth[:top]:
        where = filename.replace(str(ROOT) + "/", "")
        print(f"  {grown * 1e6:7.1f} µs  {grown / total:5.1%}  {function}  {where}:{line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=20)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--cprofile", action="store_true")
    modes.add_argument("--instructions", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--each", action="store_true",
                        help="also measure the full set less each plugin in turn (access stays)")
    parser.add_argument("--multiprocess-metrics", action="store_true",
                        help="keep the metrics as workers > 1 does (in shared files)")
    parser.add_argument("--save", type=Path, metavar="DIR", help="keep the cProfile or callgrind files here")
    args = parser.parse_args()
    tools = ("smtp-sink", "smtp-source", "dnsmasq", *(("valgrind", "callgrind_control") if args.instructions else ()))
    for tool in tools:
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: make system installs it")
    plugins = PluginSet()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.multiprocess_metrics:  # read by prometheus_client when the proxy imports it
            (work / "metrics").mkdir()
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
        try:
            plugins.start_dns(SENDER.split("@")[1], HELO_NAMES)
            access = measure("access", None, args, work)
            full = measure("plugins", plugins, args, work)
            for left_out in PLUGINS[1:] if args.each else ():
                measure(f"-{left_out}", plugins, args, work, [p for p in PLUGINS if p != left_out])
        finally:
            plugins.stop()
        if args.cprofile:
            compare(access, full, args.messages, args.top)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for kept in [*work.glob("*.prof"), *work.glob("*.callgrind.*")]:
                shutil.copy(kept, args.save / kept.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
