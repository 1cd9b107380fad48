"""A lax SMTP upstream that records every byte it receives, and misbehaves on cue.

It runs in threads of the test process on 127.0.0.1 (a free port: `address`), as a
context manager. `mailproxy.testing.PluginProxy` puts one behind the proxy it starts; the
integration tests of mailproxy itself use it for what a real server would not do.

Options (keyword arguments; the defaults behave like a plain, willing server):
- `data_reply=b"354 go ahead"`: the reply to DATA. Anything but a 354 means no message
  follows (b"451 4.3.0 try later"; b"250 ok" for an upstream that answers DATA with 250).
- `final_reply=b"250 queued"`: the reply to the end of data (b"554 5.7.1 no thanks").
- `delay_after_data=0.0`: seconds to wait before the final reply (a slow upstream).
- `silent_after_data=False`: never give the final reply (a hung upstream).
- `idle_close=None`: seconds of silence from the peer after which the recorder says
  `421 4.4.2 timeout` and closes, as Postfix does after smtpd_timeout.
- `ehlo_extensions=("PIPELINING", "8BITMIME")`: the EHLO keywords offered (e.g. add
  "SIZE 1000000"); XCLIENT and STARTTLS are added by their own options.
- `xclient=False`: offers XCLIENT and answers it with 220, a new session, as Postfix does.
- `starttls=None`: a server-side ssl.SSLContext; STARTTLS is then offered and performed.
- `inject_after_starttls=b""`: bytes written in plaintext right after the 220 to
  STARTTLS, before the handshake (an injection attack from the upstream's side).
- `auth_reply=b"235 2.7.0 Authentication successful"`: the reply to AUTH
  (b"334 VXNlcm5hbWU6" for one that asks for more where a final reply is due).
- `stall_in_data=False`: after its 354, read nothing more (an upstream that stops
  reading in the middle of a message).
- `data_reply_delay=0.0`: seconds to wait before answering DATA.
- `after_go_ahead=b""`: bytes sent with the 354, in the same write, unasked (an
  upstream that speaks while it takes the message).
- `replies={}`: verb -> reply, for any other command (b"NOOP": b"421 4.7.0 bye"); a 421
  closes the connection after it, as a server that ends the session does.
Multi-line replies are given with CRLF between the lines.

What a test reads:
- `received`: every byte, in arrival order over all connections (after TLS: decrypted);
- `messages`: every message taken, without the CRLF that belongs to its end marker;
- `smuggled`: lines that arrived after an end-of-data marker, in the same write;
- `sessions`: one `RecordedSession` per accepted connection, in order of acceptance, with
  its `commands` (the lines received outside DATA, without line ends), `messages`,
  `tls` (whether STARTTLS completed) and `ended` (an Event set once the recorder has
  stopped reading that connection); `wait_ended(count)` waits for the first `count`.

smtp-sink ends DATA only on <CR><LF>.<CR><LF>, so a proxy that forwarded bare LF would
look fine in front of it. This upstream is deliberately as lax as the servers the
smuggling attacks exploit: a line holding only "." ends DATA whatever its line ending.
"""

from __future__ import annotations

import re
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field

_END = re.compile(rb"(?:^|\r\n|\n|\r)\.(?:\r\n|\n|\r)")
_READ = 65536


def _line(reply: bytes) -> bytes:
    return reply if reply.endswith(b"\r\n") else reply + b"\r\n"


@dataclass
class RecordedSession:
    """What one connection to the recorder carried."""

    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    tls: bool = False
    ended: threading.Event = field(default_factory=threading.Event)


class _IdleTimeout(Exception):
    pass


class _Handler(socketserver.BaseRequestHandler):
    def setup(self) -> None:
        self.owner: RecordingUpstream = self.server.owner
        self.record = self.owner.open_session()
        self.connection = self.request
        self.connection.settimeout(self.owner.idle_close)
        self.rfile = self.connection.makefile("rb")

    def handle(self) -> None:
        try:
            self.send(b"220 recorder ESMTP")
            self._commands()
        except _IdleTimeout:
            self.send(b"421 4.4.2 timeout")
        except (OSError, ssl.SSLError):
            pass  # the proxy went away or refused our TLS; the record is complete
        finally:
            self.record.ended.set()

    def finish(self) -> None:
        self.rfile.close()
        if self.connection is not self.request:
            self.connection.close()  # the TLS socket; socketserver closes the plain one

    def send(self, reply: bytes) -> None:
        try:
            self.connection.sendall(_line(reply))
        except OSError:
            pass

    def read(self, reader) -> bytes:
        try:
            return reader(_READ)
        except TimeoutError:
            raise _IdleTimeout() from None

    def _commands(self) -> None:
        owner = self.owner
        while True:
            line = self.read(self.rfile.readline)
            if not line:
                return
            owner.record_command(self.record, line)
            verb = line.split(None, 1)[0].upper() if line.strip() else b""
            if verb == b"EHLO":
                self.send(self._ehlo_reply())
            elif verb == b"XCLIENT" and owner.xclient:
                self.send(b"220 recorder ESMTP, as a new session")
            elif verb == b"STARTTLS" and owner.starttls is not None and not self.record.tls:
                self.connection.sendall(b"220 2.0.0 ready to start TLS\r\n" + owner.inject_after_starttls)
                self._start_tls()
            elif verb == b"AUTH":
                self.send(owner.auth_reply)
            elif verb in owner.replies:
                self.send(owner.replies[verb])
                if owner.replies[verb].startswith(b"421"):
                    return
            elif verb == b"DATA":
                time.sleep(owner.data_reply_delay)
                self.send(owner.data_reply + b"\r\n" + owner.after_go_ahead if owner.after_go_ahead
                          else owner.data_reply)
                if owner.stall_in_data:
                    owner.stopping.wait()  # until the test is over
                    return
                if owner.data_reply.startswith(b"354") and not self._data():
                    return
            elif verb == b"QUIT":
                self.send(b"221 bye")
                return
            else:
                self.send(b"250 ok")

    def _ehlo_reply(self) -> bytes:
        owner = self.owner
        keywords = [b"recorder"]
        if owner.xclient:
            keywords.append(b"XCLIENT NAME ADDR PORT PROTO HELO LOGIN")
        if owner.starttls is not None and not self.record.tls:
            keywords.append(b"STARTTLS")
        keywords += [k.encode() if isinstance(k, str) else k for k in owner.ehlo_extensions]
        return b"".join(b"250-" + k + b"\r\n" for k in keywords[:-1]) + b"250 " + keywords[-1]

    def _start_tls(self) -> None:
        self.rfile.close()
        self.connection = self.owner.starttls.wrap_socket(self.connection, server_side=True)
        self.connection.settimeout(self.owner.idle_close)
        self.rfile = self.connection.makefile("rb")
        self.record.tls = True

    def _data(self) -> bool:
        """Take one message and answer it; False if the connection ended meanwhile."""
        owner = self.owner
        buffer = b""
        while True:
            chunk = self.read(self.rfile.read1)
            if not chunk:
                return False
            owner.record(chunk)
            buffer += chunk
            end = _END.search(buffer)
            if end:
                break
        owner.record_message(self.record, buffer[: end.start()])
        if owner.silent_after_data:
            while self.read(self.rfile.read1):  # never answer; wait for the proxy to give up
                pass
            return False
        time.sleep(owner.delay_after_data)
        self.send(owner.final_reply)
        for line in buffer[end.end():].splitlines(keepends=True):  # commands smuggled after the dot
            owner.record_smuggled(line)
            self.send(b"250 ok")
        return True


class RecordingUpstream:
    def __init__(
        self,
        silent_after_data: bool = False,
        delay_after_data: float = 0.0,
        xclient: bool = False,
        *,
        data_reply: bytes = b"354 go ahead",
        final_reply: bytes = b"250 queued",
        idle_close: float | None = None,
        ehlo_extensions: list[str | bytes] | tuple[str | bytes, ...] = ("PIPELINING", "8BITMIME"),
        starttls: ssl.SSLContext | None = None,
        inject_after_starttls: bytes = b"",
        auth_reply: bytes = b"235 2.7.0 Authentication successful",
        stall_in_data: bool = False,
        replies: dict[bytes, bytes] | None = None,
        data_reply_delay: float = 0.0,
        after_go_ahead: bytes = b"",
    ) -> None:
        self.data_reply_delay = data_reply_delay
        self.after_go_ahead = after_go_ahead
        self.stall_in_data = stall_in_data
        self.stopping = threading.Event()
        self.replies = replies or {}
        self.silent_after_data = silent_after_data
        self.delay_after_data = delay_after_data
        self.xclient = xclient
        self.data_reply = data_reply
        self.final_reply = final_reply
        self.idle_close = idle_close
        self.ehlo_extensions = list(ehlo_extensions)
        self.starttls = starttls
        self.inject_after_starttls = inject_after_starttls
        self.auth_reply = auth_reply
        self.received = bytearray()
        self.messages: list[bytes] = []
        self.smuggled: list[bytes] = []
        self.sessions: list[RecordedSession] = []
        self._changed = threading.Condition()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"

    # --- called by the connection handlers, each in its own thread -----------------------

    def open_session(self) -> RecordedSession:
        session = RecordedSession()
        with self._changed:
            self.sessions.append(session)
            self._changed.notify_all()
        return session

    def record(self, data: bytes) -> None:
        with self._changed:
            self.received += data

    def record_command(self, session: RecordedSession, line: bytes) -> None:
        with self._changed:
            self.received += line
            session.commands.append(line.rstrip(b"\r\n"))

    def record_message(self, session: RecordedSession, message: bytes) -> None:
        with self._changed:
            self.messages.append(message)
            session.messages.append(message)

    def record_smuggled(self, line: bytes) -> None:
        with self._changed:
            self.smuggled.append(line)

    # --- for tests -----------------------------------------------------------------------

    def wait_ended(self, count: int = 1, timeout: float = 15.0) -> list[RecordedSession]:
        """The first `count` sessions, once each has ended; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.sessions) >= count, timeout):
                raise AssertionError(f"{len(self.sessions)} upstream session(s), expected {count}")
            sessions = self.sessions[:count]
        for session in sessions:
            if not session.ended.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"upstream session still open after {timeout}s: {session.commands}")
        return sessions

    def __enter__(self) -> RecordingUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
