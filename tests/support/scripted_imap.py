"""An IMAP upstream that answers from a script, on loopback, in a thread: for the
misbehaviour a real mail store does not produce on cue (an answer that never comes).

It greets with SASL-IR and AUTH=PLAIN, takes any AUTHENTICATE PLAIN, and answers each
other command by its verb from `replies` (the tag filled in for `{tag}`); a verb not in
the script gets no answer at all.
"""

from __future__ import annotations

import socket
import threading

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] scripted ready.\r\n"


class ScriptedImap:
    def __init__(self, replies: dict[bytes, bytes], host: str = "127.0.0.1") -> None:
        self.replies = {
            b"AUTHENTICATE": b"{tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
            b"LOGOUT": b"* BYE Logging out\r\n{tag} OK Logout completed.\r\n",
            **replies,
        }
        self._server = socket.create_server((host, 0))
        self.address = f"{host}:{self._server.getsockname()[1]}"
        self.commands: list[bytes] = []
        self.closed = threading.Event()  # a session's connection ended

    def __enter__(self) -> ScriptedImap:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
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
