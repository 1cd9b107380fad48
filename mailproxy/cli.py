"""The `mailproxy` command: run | check | plugins | hash-password | plugin new.

Configuration problems are printed as `FILE: key: problem` lines with exit status 2,
never as a traceback. Modules that import prometheus_client are imported only after
the configuration is read, because multiprocess metrics must be set up first.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .config import Config, ConfigError, load_config

EXIT_CONFIG = 2


def _describe(app) -> list[str]:
    config = app.config
    lines = [f"configuration {config.path}: OK"]
    for name, upstream in config.upstreams.items():
        lines.append(
            f"upstream {name}: {upstream.address} tls={upstream.tls}"
            f"{'' if upstream.verify else ' (not verified)'} identity={upstream.client_identity}"
        )
    for runtime in app.listeners:
        s = runtime.settings
        lines.append(
            f"listener {s.name}: {s.kind} on {s.address} tls={s.tls} -> {s.upstream}"
        )
    lines.append(_plugin_lines(app))
    return lines


def _warnings(config: Config) -> list[str]:
    """What the configuration allows but an administrator should know."""
    workers = config.proxy.workers
    if workers > 1 and config.state.backend == "memory":
        return [
            f"{config.path}: proxy.workers = {workers} with state.backend = \"memory\": AUTH "
            "failure counts and plugin counters are kept per worker process, so a client may "
            f"get up to {workers} times auth.max_failures attempts per failure_window; they "
            "are shared across processes by state.backend = \"redis\": use it, or run one "
            "worker, where the limits must hold exactly"
        ]
    return []


def _plugin_lines(app) -> str:
    if not app.plugins:
        return "plugins: none"
    rows = ["plugins (in order):"]
    for plugin in app.plugins:
        flags = " [observe]" if plugin.settings.observe else ""
        rows.append(f"  {plugin.name}{flags}: {', '.join(plugin.hooks) or 'no hooks'}  ({plugin.origin})")
    return "\n".join(rows)


def _build(config: Config):
    from .app import build

    return build(config)


def cmd_check(args) -> int:
    app = _build(load_config(args.config))
    print("\n".join(_describe(app)))
    for warning in _warnings(app.config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_plugins(args) -> int:
    from .plugins import discover

    config = load_config(args.config)
    app = _build(config)
    print(_plugin_lines(app))
    available = sorted(set(discover(config.plugins.directories)) - {p.name for p in app.plugins})
    if available:
        print("available, not enabled: " + ", ".join(available))
    return 0


def cmd_run(args) -> int:
    config = load_config(args.config)
    metrics_directory = None
    if config.proxy.workers > 1:
        # Must happen before prometheus_client is first imported (in _run).
        metrics_directory = tempfile.mkdtemp(prefix="mailproxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_directory
    try:
        return _run(config)
    finally:
        if metrics_directory is not None:  # the supervisor's; a worker never returns here
            shutil.rmtree(metrics_directory, ignore_errors=True)


def _run(config: Config) -> int:
    from .logs import setup_logging

    setup_logging(config.proxy.log_level)
    for warning in _warnings(config):
        logging.getLogger("mailproxy").warning("%s", warning)
    app = _build(config)
    from prometheus_client import REGISTRY, CollectorRegistry

    from . import metrics
    from .proxy.health import Readiness, UpstreamProbes, UpstreamUpCollector
    from .proxy.metrics_http import MetricsServer
    from .proxy.server import run_process

    metrics.announce_build()
    workers = config.proxy.workers
    registry = REGISTRY
    if workers > 1:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    readiness = Readiness.of(config)
    registry.register(UpstreamUpCollector(readiness))
    metrics_server = probes = None
    if config.metrics.listen is not None:
        metrics_server = MetricsServer(config.metrics.listen, registry, readiness)
        metrics_server.start()
        logging.getLogger("mailproxy").info("metrics on http://%s/metrics", config.metrics.listen)
        probes = UpstreamProbes(config, readiness)
        probes.start()
    delay = config.proxy.shutdown_delay
    try:
        if workers == 1:
            run_process(app, ready=readiness.serving, stopping=readiness.stopping, shutdown_delay=delay)
            return 0
        from .proxy.server import check_listen_addresses
        from .proxy.workers import supervise

        check_listen_addresses(app)
        # A worker may wait past the grace for messages the upstream is taking.
        limit = config.proxy.shutdown_grace + config.longest_delivery
        return supervise(
            workers, lambda ready: run_process(app, reuse_port=True, ready=ready), limit, readiness, delay,
        )
    finally:
        if probes is not None:
            probes.stop()
        if metrics_server is not None:
            metrics_server.stop()


def cmd_hash_password(args) -> int:
    from .auth.file import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    print(f"{args.username}:{hash_password(password)}")
    return 0


def cmd_plugin_new(args) -> int:
    from .scaffold import ScaffoldError, new_plugin

    try:
        plugin, test = new_plugin(args.name, Path(args.dir))
    except ScaffoldError as exc:
        print(f"mailproxy plugin new: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {plugin}\nwrote {test}")
    print(f"test it:   cd {plugin.parent} && python -m pytest {test.relative_to(plugin.parent)}")
    print(f"enable it: [plugins] directories = [\"{plugin.parent.resolve()}\"], enabled = [\"{args.name}\"]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailproxy", description="Transparent mail filtering proxy")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("run", cmd_run, "run in the foreground"),
        ("check", cmd_check, "validate the configuration and load every plugin"),
        ("plugins", cmd_plugins, "list the plugins and their hooks"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("-c", "--config", required=True, help="configuration file (TOML)")
        sub.set_defaults(handler=handler)
    hasher = commands.add_parser("hash-password", help="print a users-file line (password on stdin)")
    hasher.add_argument("username")
    hasher.set_defaults(handler=cmd_hash_password)
    plugin = commands.add_parser("plugin", help="write plugins: `plugin new NAME`")
    plugin_commands = plugin.add_subparsers(dest="plugin_command", required=True)
    new = plugin_commands.add_parser("new", help="write a drop-in plugin NAME.py and its test tests/test_NAME.py")
    new.add_argument("name", help="the plugin's name, a Python identifier")
    new.add_argument("--dir", default=".", help="where to write them (default: the current directory)")
    new.set_defaults(handler=cmd_plugin_new)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
