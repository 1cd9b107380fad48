"""An IMAP upstream that answers from a script, on loopback, in a thread: for the
misbehaviour a real mail store does not produce on cue (an answer that never comes).

It greets with SASL-IR and AUTH=PLAIN, takes any AUTHENTICATE PLAIN, and answers each
other command by its verb from `replies` (the tag filled in for `{tag}`); a verb not in
the script gets no answer at all.
"""

from __future__ import annotations

import socket
import threading

from tests.support.scripted import ThreadedServer

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] scripted ready.\r\n"


class ScriptedImap(ThreadedServer):
    def __init__(self, replies: dict[bytes, bytes], host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.replies = {
            b"AUTHENTICATE": b"{tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
            b"LOGOUT": b"* BYE Logging out\r\n{tag} OK Logout completed.\r\n",
            **replies,
        }
        self.commands: list[bytes] = []
        self.closed = threading.Event()  # a session's connection ended

    def serve(self, connection: socket.socket) -> None:
        try:
            with connection, connection.makefile("rb") as lines:
                connection.sendall(GREETING)
                for line in lines:
                    self._answer(connection, line)
        except OSError:  # the proxy dropped the connection: what the tests provoke
            pass
        self.closed.set()

    def _answer(self, connection: socket.socket, line: bytes) -> None:
        self.commands.append(line.rstrip(b"\r\n"))
        words = line.split(None, 2)
        if len(words) < 2:
            return
        tag, verb = words[0], words[1].upper()
        reply = self.replies.get(verb)
        if reply is not None:
            connection.sendall(reply.replace(b"{tag}", tag))
