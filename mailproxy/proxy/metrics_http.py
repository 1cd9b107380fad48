"""The Prometheus scrape endpoint (/metrics), the liveness probe (/healthz) and the
readiness probe (/readyz: 200 "ready", or 503 and why not; /readyz?listener=NAME for
one listener; proxy/health.py).

A small threaded HTTP server: it runs beside the event loop (or in the supervisor,
which has none) and only ever reads the metric registry and the readiness. GET and
HEAD (load balancers' health checks often use HEAD). At most MAX_CONNECTIONS are
served at once; one more is closed at once, so idle connections cannot pile up threads.
"""

from __future__ import annotations

import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..config import Endpoint
from .health import Readiness

TEXT = "text/plain; charset=utf-8"
MAX_CONNECTIONS = 64


def _handler_for(registry: CollectorRegistry, readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mailproxy"
        timeout = 10  # a stalled scraper must not pin a thread forever

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._send(*self._answer(), with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._send(*self._answer(), with_body=False)

        def _answer(self) -> tuple[int, bytes, str]:
            path, _, query = self.path.partition("?")
            if path == "/metrics":
                return 200, generate_latest(registry), CONTENT_TYPE_LATEST
            if path == "/healthz":
                return 200, b"ok\n", TEXT
            if path == "/readyz":
                listener = urllib.parse.parse_qs(query, keep_blank_values=True).get("listener", [None])[0]
                if listener is not None and not readiness.has_listener(listener):
                    return 404, b"no such listener\n", TEXT
                ready, why = readiness.answer(listener)
                return (200 if ready else 503), f"{why}\n".encode(), TEXT
            return 404, b"not found\n", TEXT

        def _send(self, status: int, body: bytes, content_type: str, with_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # scrapes are not news
            return

    return Handler


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS  # a burst of checks waits to be accepted, not dropped

    def __init__(self, endpoint: Endpoint, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        self.connection_slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((endpoint.host, endpoint.port), handler)

    def process_request(self, request, client_address) -> None:
        if not self.connection_slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # a thread, which frees the slot
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exception(), ConnectionError):  # a client that left is not news
            super().handle_error(request, client_address)


class MetricsServer:
    def __init__(self, endpoint: Endpoint, registry: CollectorRegistry, readiness: Readiness) -> None:
        self._server = _HttpServer(endpoint, _handler_for(registry, readiness))
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
