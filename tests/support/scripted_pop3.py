"""A POP3 upstream that answers from a script, on loopback, in a thread: for the
misbehaviour a real mail store does not produce on cue (a reply cut off, bytes nobody
asked for)."""

from __future__ import annotations

import socket

from tests.support.scripted import ThreadedServer

CLOSE = b""  # as a reply: close the connection after what came before


class ScriptedPop3(ThreadedServer):
    """`replies` maps a verb to the bytes sent for it, which may end in CLOSE (send,
    then hang up); USER and PASS get +OK unless scripted, anything else -ERR."""

    def __init__(self, replies: dict[bytes, bytes | tuple[bytes, bytes]], host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.replies = {b"USER": b"+OK\r\n", b"PASS": b"+OK Logged in.\r\n", b"QUIT": b"+OK Bye.\r\n", **replies}
        self.commands: list[bytes] = []

    def serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"+OK scripted ready.\r\n")
            for line in lines:
                verb = line.split(None, 1)[0].upper() if line.strip() else b""
                self.commands.append(line.rstrip(b"\r\n"))
                reply = self.replies.get(verb, b"-ERR Unknown command.\r\n")
                parts = reply if isinstance(reply, tuple) else (reply,)
                for part in parts:
                    if part == CLOSE:
                        return
                    connection.sendall(part)
