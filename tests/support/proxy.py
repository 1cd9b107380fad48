"""Run `mailproxy run` as a real process on free loopback ports, for integration tests.

The test describes the configuration as nested dicts; `ProxyProcess` writes it as
TOML, starts the proxy, waits until every listener and the metrics port accept, and
stops it with SIGTERM (checking that it exits cleanly).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from mailproxy.testing.toml_writer import to_toml
from tests.support.servers import free_port, wait_for_listen


class ProxyProcess:
    def __init__(self, config: dict[str, Any], directory: Path | None = None) -> None:
        self.config = config
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mailproxy-test-"))
        self.path = self.directory / "mailproxy.toml"
        self.log_path = self.directory / "mailproxy.log"
        self.process: subprocess.Popen | None = None
        self.expected_tracebacks = 0  # a test that makes a plugin raise expects its traceback
        self.metrics_port = free_port()
        config.setdefault("metrics", {})["listen"] = f"127.0.0.1:{self.metrics_port}"
        # A readiness probe is an upstream session too: tests that count sessions at
        # the upstream ask for probes when they want them.
        config["metrics"].setdefault("upstream_probe_interval", 0)
        config.setdefault("proxy", {}).setdefault("log_level", "debug")
        config["proxy"].setdefault("shutdown_grace", 2.0)
        self.ports: dict[str, int] = {}
        for listener in config["listeners"]:
            if "address" not in listener:
                listener["address"] = f"127.0.0.1:{free_port()}"
            self.ports[listener["name"]] = int(listener["address"].rpartition(":")[2])

    def start(self) -> ProxyProcess:
        self.path.write_text(to_toml(self.config))
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailproxy.cli", "run", "-c", str(self.path)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            for port in [*self.ports.values(), self.metrics_port]:
                wait_for_listen(port, timeout=15, process=self.process)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n--- proxy log ---\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def port(self, listener: str) -> int:
        return self.ports[listener]

    def scrape(self, path: str = "/metrics") -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def settled_metric(self, name: str, expected: float, timeout: float = 10.0, **labels: str) -> float:
        """`metric`, read again until it is `expected` or `timeout` seconds pass: with
        `workers > 1` a worker's counts of commands, replies, messages and checks reach
        the scrape within about a second (mailproxy/deferred_counts.py). An expected 0
        is read at once: read it after a count that settles."""
        deadline = time.monotonic() + timeout
        while (value := self.metric(name, **labels)) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return value

    def stop(self, timeout: float = 15) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
