"""Readiness, as /readyz reports it: the listeners are open, the process is not
stopping, and every upstream a listener uses answered its last probe.

The probes run in a thread of the process that serves /metrics (the supervisor when
there are several workers): every `[metrics] upstream_probe_interval` seconds each
upstream gets a TCP connection, from its `source_address`, closed at once. Each result
sets mailproxy_upstream_up.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from .. import metrics
from ..config import Config, UpstreamSettings
from .upstream_link import local_address

log = logging.getLogger("mailproxy.health")


class Readiness:
    """Told by the process when its listeners open and when it stops, and by the probes
    how each upstream answered; read by the HTTP server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase = "starting"  # then "serving", then "stopping"
        self._upstreams: dict[str, str | None] = {}  # name -> why it is not reachable

    def watch(self, upstream: str) -> None:
        """Readiness waits for `upstream`'s first probe."""
        with self._lock:
            self._upstreams[upstream] = "not probed yet"

    def upstream_probed(self, upstream: str, problem: str | None) -> None:
        with self._lock:
            self._upstreams[upstream] = None if problem is None else f"unreachable ({problem})"

    def serving(self) -> None:
        with self._lock:
            if self._phase == "starting":
                self._phase = "serving"

    def stopping(self) -> None:
        with self._lock:
            self._phase = "stopping"

    def answer(self) -> tuple[bool, str]:
        """(ready, a line saying why not)."""
        with self._lock:
            if self._phase != "serving":
                return False, f"not ready: {self._phase}"
            problems = [f"upstream {name} {why}" for name, why in self._upstreams.items() if why]
        if problems:
            return False, "not ready: " + "; ".join(problems)
        return True, "ready"


# A worker forked while a probe's socket is open would hold that connection to the
# upstream open for its whole life: forking waits for the probe in flight.
_probing = threading.Lock()
os.register_at_fork(
    before=_probing.acquire, after_in_parent=_probing.release, after_in_child=_probing.release,
)


def probe(upstream: UpstreamSettings, timeout: float) -> str | None:
    """Why a TCP connection to `upstream` did not open within `timeout` seconds, or
    None if it did. No protocol is spoken: it is closed at once."""
    address = (upstream.address.host, upstream.address.port)
    try:
        with _probing:
            socket.create_connection(address, timeout, source_address=local_address(upstream)).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return reason[:1].lower() + reason[1:]
    return None


class UpstreamProbes:
    """Probes each upstream a listener uses, in a thread, and tells `readiness`.
    With `upstream_probe_interval = 0` there are none: upstreams count as reachable."""

    def __init__(self, config: Config, readiness: Readiness) -> None:
        self._interval = config.metrics.upstream_probe_interval
        self._timeout = config.metrics.upstream_probe_timeout
        self._upstreams: dict[str, UpstreamSettings] = {}
        if self._interval > 0:
            self._upstreams = {listener.upstream: config.upstream_for(listener) for listener in config.listeners}
        self._readiness = readiness
        for name in self._upstreams:
            readiness.watch(name)
        self._down: set[str] = set()  # to log each change once, not every probe
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream-probes", daemon=True)

    def start(self) -> None:
        if self._upstreams:
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()  # a probe in flight ends within its timeout; nobody waits for it

    def _run(self) -> None:
        while True:
            for name, upstream in self._upstreams.items():
                self._probe(name, upstream)
            if self._stopped.wait(self._interval):
                return

    def _probe(self, name: str, upstream: UpstreamSettings) -> None:
        problem = probe(upstream, self._timeout)
        metrics.child(metrics.upstream_up, name).set(0 if problem else 1)
        self._readiness.upstream_probed(name, problem)
        if problem and name not in self._down:
            self._down.add(name)
            log.warning("upstream %s at %s unreachable (%s): not ready", name, upstream.address, problem)
        elif not problem and name in self._down:
            self._down.discard(name)
            log.info("upstream %s at %s reachable again", name, upstream.address)
