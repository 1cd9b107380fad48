"""A TCP relay on loopback that delays every chunk by `delay` seconds each way: an
upstream that answers from far away, so that races the local one always wins show."""

from __future__ import annotations

import queue
import socket
import threading
import time

from tests.support.scripted import ThreadedServer


class LatencyRelay(ThreadedServer):
    def __init__(self, target: str, delay: float = 0.05, source: str = "127.0.0.5") -> None:
        super().__init__()
        host, port = target.rsplit(":", 1)
        self.target, self.delay, self.source = (host, int(port)), delay, source

    def serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target, source_address=(self.source, 0))
        for reader, writer in ((client, upstream), (upstream, client)):
            chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._read, args=(reader, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(writer, chunks), daemon=True).start()

    def _read(self, sock: socket.socket, chunks: queue.Queue) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, sock: socket.socket, chunks: queue.Queue) -> None:
        while True:
            due, data = chunks.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(data)
            except OSError:
                return
