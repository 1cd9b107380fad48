"""A lax SMTP upstream that records every byte it receives.

smtp-sink ends DATA only on <CR><LF>.<CR><LF>, so a proxy that forwarded bare LF would
look fine in front of it. This upstream is deliberately as lax as the servers the
smuggling attacks exploit: a line holding only "." ends DATA whatever its line ending.
Tests read `received` (the raw bytes) and `messages` (what it took as messages).
"""

from __future__ import annotations

import re
import socketserver
import threading
import time

_END = re.compile(rb"(?:^|\r\n|\n|\r)\.(?:\r\n|\n|\r)")


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: RecordingUpstream = self.server.owner
        self.wfile.write(b"220 recorder ESMTP\r\n")
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            server.record(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                xclient = b"250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN\r\n" if server.xclient else b""
                self.wfile.write(b"250-recorder\r\n" + xclient + b"250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"XCLI" and server.xclient:
                self.wfile.write(b"220 recorder ESMTP, as a new session\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go ahead\r\n")
                self._data(server)
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")

    def _data(self, server: RecordingUpstream) -> None:
        buffer = b""
        while True:
            chunk = self.rfile.read1(65536)
            if not chunk:
                return
            server.record(chunk)
            buffer += chunk
            end = _END.search(buffer)
            if end:
                server.messages.append(buffer[: end.start()])
                rest = buffer[end.end():]
                if server.silent_after_data:
                    self.rfile.read()  # never answer; wait for the proxy to give up
                    return
                time.sleep(server.delay_after_data)
                self.wfile.write(b"250 queued\r\n")
                for line in rest.splitlines(keepends=True):  # commands smuggled after the dot
                    server.smuggled.append(line)
                    self.wfile.write(b"250 ok\r\n")
                return


class RecordingUpstream:
    def __init__(
        self, silent_after_data: bool = False, delay_after_data: float = 0.0, xclient: bool = False
    ) -> None:
        self.silent_after_data = silent_after_data  # an upstream that hangs at end-of-data
        self.delay_after_data = delay_after_data  # a slow one
        self.xclient = xclient  # offers XCLIENT and starts over after it, as Postfix does
        self.received = bytearray()
        self.messages: list[bytes] = []
        self.smuggled: list[bytes] = []
        self._lock = threading.Lock()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"

    def record(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def __enter__(self) -> RecordingUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
