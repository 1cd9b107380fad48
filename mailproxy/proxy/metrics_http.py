"""The Prometheus scrape endpoint (/metrics), the liveness probe (/healthz) and the
readiness probe (/readyz: 200 "ready", or 503 and why not; proxy/health.py).

A small threaded HTTP server: it runs beside the event loop (or in the supervisor,
which has none) and only ever reads the metric registry and the readiness. GET and
HEAD (load balancers' health checks often use HEAD).
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..config import Endpoint
from .health import Readiness

TEXT = "text/plain; charset=utf-8"


def _handler_for(registry: CollectorRegistry, readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mailproxy"
        timeout = 10  # a stalled scraper must not pin a thread forever

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._send(*self._answer(), with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._send(*self._answer(), with_body=False)

        def _answer(self) -> tuple[int, bytes, str]:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                return 200, generate_latest(registry), CONTENT_TYPE_LATEST
            if path == "/healthz":
                return 200, b"ok\n", TEXT
            if path == "/readyz":
                ready, why = readiness.answer()
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

    def __init__(self, endpoint: Endpoint, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        super().__init__((endpoint.host, endpoint.port), handler)


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
