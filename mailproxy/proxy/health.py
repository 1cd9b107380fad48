"""Readiness, as /readyz reports it: the listeners are open, the process is not
stopping, and every upstream a listener uses answered its last probe.

The probes run in a thread of the process that serves /metrics (the supervisor when
there are several workers): every `[metrics] upstream_probe_interval` seconds each
configured upstream gets a TCP connection, from its `source_address`, closed at once.
mailproxy_upstream_up is read from their results at scrape time (UpstreamUpCollector).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import metrics
from ..config import Config, UpstreamSettings
from .upstream_link import local_address

log = logging.getLogger("mailproxy.health")


class Readiness:
    """Told when a process's listeners open, when a worker is gone, when the proxy
    stops, and how each probed upstream answered; read by the HTTP server's threads."""

    def __init__(self, listeners: Mapping[str, str]) -> None:
        self._lock = threading.Lock()
        self._listeners = dict(listeners)  # listener name -> the upstream it uses
        self._serving: set[int] = set()  # the workers whose listeners are open
        self._stopping = False
        self._watched: set[str] = set()  # the upstreams that are probed
        self._probed: dict[str, str | None] = {}  # upstream -> why its last probe failed, or None

    @classmethod
    def of(cls, config: Config) -> Readiness:
        return cls({listener.name: listener.upstream for listener in config.listeners})

    def watch(self, upstream: str) -> None:
        """`upstream` is probed: listeners that use it wait for its first probe."""
        with self._lock:
            self._watched.add(upstream)

    def upstream_probed(self, upstream: str, problem: str | None) -> None:
        with self._lock:
            self._probed[upstream] = problem

    def serving(self, worker: int = 0) -> None:
        """The listeners of `worker` (a pid, or 0 for the only process) are open."""
        with self._lock:
            self._serving.add(worker)

    def worker_gone(self, worker: int) -> None:
        with self._lock:
            self._serving.discard(worker)

    def stopping(self) -> None:
        with self._lock:
            self._stopping = True

    def has_listener(self, name: str) -> bool:
        return name in self._listeners

    def answer(self, listener: str | None = None) -> tuple[bool, str]:
        """(ready, a line saying why not): for every listener, or for the one named."""
        upstreams = dict.fromkeys(self._listeners.values() if listener is None else [self._listeners[listener]])
        with self._lock:
            if self._stopping:
                return False, "not ready: stopping"
            if not self._serving:
                return False, "not ready: starting"
            problems = [f"upstream {name} {why}" for name in upstreams if (why := self._problem(name))]
        if problems:
            return False, "not ready: " + "; ".join(problems)
        return True, "ready"

    def _problem(self, upstream: str) -> str | None:
        if upstream not in self._watched:
            return None  # probes are off: it counts as reachable
        if upstream not in self._probed:
            return "not probed yet"
        problem = self._probed[upstream]
        return None if problem is None else f"unreachable ({problem})"

    def upstreams_up(self) -> dict[str, bool]:
        """Whether each probed upstream answered its last probe."""
        with self._lock:
            return {name: problem is None for name, problem in self._probed.items()}


class UpstreamUpCollector(Collector):
    """mailproxy_upstream_up, from the probes' last results, when it is scraped."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for upstream, up in self._readiness.upstreams_up().items():
            family.add_metric([upstream], 1.0 if up else 0.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        info = metrics.upstream_up
        return GaugeMetricFamily(info.name, info.help, labels=info.labels)


# A worker forked while a probe's socket is open would hold that connection to the
# upstream for its whole life: each worker closes its copies at once. The lock makes
# a socket's creation and registration (and its removal and closing) one step that a
# fork never splits; it is never held while waiting for the network.
_probe_sockets: set[socket.socket] = set()
_probe_sockets_lock = threading.Lock()


def _close_probe_sockets_in_child() -> None:
    for sock in _probe_sockets:
        sock.close()
    _probe_sockets.clear()
    _probe_sockets_lock.release()


os.register_at_fork(
    before=_probe_sockets_lock.acquire,
    after_in_parent=_probe_sockets_lock.release,
    after_in_child=_close_probe_sockets_in_child,
)


def probe(upstream: UpstreamSettings, timeout: float) -> str | None:
    """Why a TCP connection to `upstream` did not open within `timeout` seconds, or
    None if it did. No protocol is spoken: it is closed at once."""
    try:
        addresses = socket.getaddrinfo(upstream.address.host, upstream.address.port, type=socket.SOCK_STREAM)
        error = OSError("no address")
        for family, kind, protocol, _, address in addresses:
            try:
                _connect(family, kind, protocol, address, local_address(upstream), timeout)
                return None
            except OSError as exc:
                error = exc
        raise error
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return reason[:1].lower() + reason[1:]


def _connect(family, kind, protocol, address, source, timeout: float) -> None:
    with _probe_sockets_lock:
        sock = socket.socket(family, kind, protocol)
        _probe_sockets.add(sock)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind(source)
        sock.connect(address)
    finally:
        with _probe_sockets_lock:
            _probe_sockets.discard(sock)
            sock.close()


class UpstreamProbes:
    """Probes every configured upstream, in a thread, and tells `readiness` (listeners
    wait only for the upstreams they use; one only the `route` hook picks still has its
    mailproxy_upstream_up). With `upstream_probe_interval = 0` there are none: upstreams
    count as reachable."""

    def __init__(self, config: Config, readiness: Readiness) -> None:
        self._interval = config.metrics.upstream_probe_interval
        self._timeout = config.metrics.upstream_probe_timeout
        self._upstreams = dict(config.upstreams) if self._interval > 0 else {}
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
        # No metric is written here: see UpstreamUpCollector.
        problem = probe(upstream, self._timeout)
        self._readiness.upstream_probed(name, problem)
        if problem and name not in self._down:
            self._down.add(name)
            log.warning("upstream %s at %s unreachable (%s)", name, upstream.address, problem)
        elif not problem and name in self._down:
            self._down.discard(name)
            log.info("upstream %s at %s reachable again", name, upstream.address)
