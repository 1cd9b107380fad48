"""A real Prometheus (Debian's /usr/bin/prometheus) on loopback, for tests.

It scrapes the given targets every second into a temp storage dir, and answers PromQL
over its HTTP API: `query` (an instant query), `label_values`, and `wait_for_scrapes`,
which returns once a target has been scraped a number of times after a moment, so a test
knows its traffic is in the database.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support.servers import free_port, wait_for_listen

PROMETHEUS = "/usr/bin/prometheus"
JOB = "mailproxy"


class PrometheusError(RuntimeError):
    """The API answered with an error (a bad query, say) or not at all."""


class Prometheus:
    """Use as a context manager; `targets` are "host:port" of /metrics endpoints."""

    def __init__(self, targets: list[str], scrape_interval: str = "1s") -> None:
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = 0
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.directory = Path(tempfile.mkdtemp(prefix="prometheus-"))
        config = self.directory / "prometheus.yml"
        # JSON is YAML: no YAML writer needed.
        config.write_text(json.dumps({
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }))
        for attempt in range(3):
            try:
                self._launch(config)
                return self
            except RuntimeError:
                # Another process may take the free port before Prometheus binds it.
                if attempt == 2 or "address already in use" not in self.log():
                    self.stop()
                    raise
        raise AssertionError("unreachable")

    def _launch(self, config: Path) -> None:
        self.port = free_port()
        with open(self.directory / "prometheus.log", "ab") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_for_listen(self.port, timeout=30, process=self.process)
            self._wait_until_ready(timeout=30)
        except (RuntimeError, TimeoutError) as error:
            self._kill()
            raise RuntimeError(f"{error}\n--- prometheus log ---\n{self.log()}") from None

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout} s")
            time.sleep(0.1)

    def api(self, path: str, params: list[tuple[str, str]]) -> object:
        """The `data` of /api/v1/<path>; PrometheusError with its message otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query is a 400 with a JSON body
            body = json.load(error)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The result of an instant query now: [{"metric": {...}, "value": [t, "v"]}, ...]
        (a scalar result comes as one series without labels)."""
        data = self.api("query", [("query", expr)])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        return self.api(f"label/{urllib.parse.quote(label)}/values", [("match[]", match)])

    def wait_for_scrapes(self, count: int, after: float, timeout: float = 30) -> None:
        """Return once every target has `count` successful scrapes that began after
        `after` (Unix time): what the targets counted before it is stored."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.query(f'up{{job="{JOB}"}}[1m]')  # each scrape's sample, stamped with its start
            done = {s["metric"]["instance"] for s in samples
                    if sum(1 for t, v in s["values"] if float(t) > after and v == "1") >= count}
            if done >= set(self.targets):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not {count} scrapes of {self.targets} after {after} within {timeout} s: "
                                   f"{samples}\n--- prometheus log ---\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        path = self.directory / "prometheus.log" if self.directory else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self._kill()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
