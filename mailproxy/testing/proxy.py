"""`mailproxy run` as a real process with one plugin, in front of a recording upstream.

For end-to-end tests of a plugin: the proxy starts as an administrator starts it
(`python -m mailproxy.cli run -c FILE`, its configuration written as TOML into a
directory of its own, next to its log), listens on a free loopback port, and hands
what it accepts to a `RecordingUpstream`, whose `messages` are the messages delivered.
A client (smtplib, `client()`) talks to `address`; `metric()` reads the proxy's
Prometheus metrics.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .loading import HOSTNAME, LOCAL_DOMAINS, config_for, locate, merge_sections
from .recorder import RecordingUpstream
from .toml_writer import to_toml

START_TIMEOUT = 30.0  # seconds for the proxy to listen, on a busy machine
STOP_TIMEOUT = 30.0  # seconds for it to exit after SIGTERM, before it is killed
EXIT_CONFIG = 2  # `mailproxy run` found a configuration problem


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PluginProxy:
    """A proxy process with `plugin` enabled; use as a context manager, or `start()`
    and `stop()`.

    `plugin`: a module (installed, or a drop-in file), the path of a drop-in file, or an
    installed plugin's name. `options`: its `[plugin.NAME]` section. `mode`: the one
    listener's, "mx" (mail for `local_domains`, no AUTH) or "submission" (AUTH before
    MAIL; offered without TLS here). `users`: logins and passwords for AUTH (a users
    file). `listener`, `policy`: more settings for the listener and `[policy]`;
    `config`: further sections (`{"proxy": {"log_level": "debug"}}`). `upstream`: a
    `RecordingUpstream` not yet started, to make the upstream misbehave; the proxy
    starts and stops it. A configuration problem raises `ConfigError` from `start()`,
    worded as `mailproxy check` words it.
    """

    def __init__(
        self,
        plugin: Any,
        options: dict[str, Any] | None = None,
        *,
        mode: str = "mx",
        hostname: str = HOSTNAME,
        local_domains: tuple[str, ...] | list[str] = LOCAL_DOMAINS,
        users: dict[str, str] | None = None,
        listener: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        upstream: RecordingUpstream | None = None,
        directory: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(plugin, type):
            raise TypeError("the proxy loads a plugin by its module: pass the module, its file or its installed name")
        located = locate(plugin)
        if not located.installed and located.directory is None:
            raise ValueError(f"{plugin!r} is neither installed (an entry point of the group mailproxy) nor a drop-in")
        if (config or {}).get("proxy", {}).get("log_level") in ("warning", "error"):
            raise ValueError("proxy.log_level must be info or debug: start() waits for the listener's log line")
        self.name = located.name
        self.upstream = upstream or RecordingUpstream()
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mailproxy-plugin-test-"))
        self.config_path = self.directory / "mailproxy.toml"
        self.log_path = self.directory / "mailproxy.log"
        self.port = free_port()
        self.metrics_port = free_port()
        if mode == "submission":  # this kit has no certificates: AUTH is offered in plaintext
            listener = {"allow_plaintext_auth": True, **(listener or {})}
        # A quick stop, and the metrics to read (no readiness probes: each would be a
        # session at the recording upstream); the test's own settings win.
        metrics = {"listen": f"127.0.0.1:{self.metrics_port}", "upstream_probe_interval": 0}
        extra = merge_sections(
            {"proxy": {"shutdown_grace": 2.0}, "metrics": metrics},
            config or {},
        )
        self.config = config_for(
            located, options, mode=mode, hostname=hostname, local_domains=local_domains,
            listen=f"127.0.0.1:{self.port}", upstream=self.upstream.address,
            policy=policy, listener=listener, extra=extra,
        )
        self._users = users
        listening = self.config["listeners"][0]
        # What the proxy logs once the listener is open ("listener mx: cannot listen on
        # ..." is a failure, not this).
        self._ready = f"listener {listening['name']}: smtp {listening['mode']} on {listening['address']} "
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self._upstream_running = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the listener, as smtplib.SMTP takes them."""
        return ("127.0.0.1", self.port)

    def client(self, timeout: float = 30.0) -> smtplib.SMTP:
        """An smtplib client connected to the listener (use it with `with`)."""
        return smtplib.SMTP(*self.address, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of metric `name` whose labels include `labels` (0 if
        none), e.g. metric("mailproxy_verdicts_total", plugin="x", enforced="false").
        With `workers` > 1 (in `config`), the counts of commands, replies, messages and
        the shipped checks reach it up to a second late: poll until they settle."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def start(self) -> PluginProxy:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._users:
            self._write_users()
        self.config_path.write_text(to_toml(self.config))
        self.upstream.__enter__()
        self._upstream_running = True
        try:
            self._log_file = self.log_path.open("wb")
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailproxy.cli", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_users(self) -> None:
        from ..auth.file import hash_password

        users_file = self.directory / "users"
        lines = [f"{login}:{hash_password(password)}\n" for login, password in self._users.items()]
        users_file.write_text("".join(lines))
        self.config["auth"] = {"backends": ["file"], "users_file": str(users_file), **self.config.get("auth", {})}

    def _wait_until_listening(self) -> None:
        """Until the proxy logs that its listener is open (a connection to find out
        would be a session the plugin sees)."""
        deadline = time.monotonic() + START_TIMEOUT
        while self._ready not in self.log():
            code = self.process.poll()
            if code == EXIT_CONFIG:
                raise ConfigError(self.log().strip())
            if code is not None:
                raise RuntimeError(f"mailproxy exited with {code} before listening:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mailproxy did not listen within {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """Stop the proxy (SIGTERM, as a service manager does) and the upstream; the
        proxy's exit status, 0 for a clean stop."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._upstream_running:
            self._upstream_running = False
            self.upstream.__exit__(None, None, None)
        return None if process is None else process.returncode

    def __enter__(self) -> PluginProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
