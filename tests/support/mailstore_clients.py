"""Raw POP3 and IMAP clients for what poplib and imaplib cannot drive, and PROXY v2 headers.

Python 3.11's imaplib has no IDLE and poplib no AUTH; neither can pick a source address
or write a PROXY header first. These clients put exactly the given bytes on the wire and
hand back exactly what came, line by line. No call waits longer than `timeout` seconds
in all, however slowly the bytes trickle in, so a test fails instead of hanging.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import re
import socket
import ssl
import struct
import time

MAX_LINE = 1 << 20  # a peer that never sends a line end fails the test instead of filling memory

# A response that ends in "{N}" or "~{N}" (literal8) announces N more bytes: RFC 3501 §9,
# RFC 3516. "+" continuations and status responses carry text, where a trailing "{5}" is
# just text ("a1 NO Mailbox doesn't exist: x {5}" for a mailbox named "x {5}").
_LITERAL = re.compile(rb"~?\{(\d+)\}\r\n\Z")
_STATUS = re.compile(rb"(\+|\* (OK|NO|BAD|BYE|PREAUTH)\b|[^ *+]+ (OK|NO|BAD)\b)", re.IGNORECASE)


class _RawClient:
    """A TCP connection read line by line, each read bounded by one deadline."""

    def __init__(self, host: str, port: int, *, source: str | None = None,
                 timeout: float = 10.0, server_hostname: str | None = None):
        self.timeout = timeout
        # TLS verifies the certificate for this name; the tests' certificate names
        # 127.0.0.1 and localhost, so a server on 127.0.0.2 needs "localhost".
        self.server_hostname = server_hostname or host
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line, with its line end; at end of stream what is left (b"" if nothing)."""
        deadline = time.monotonic() + self.timeout
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > MAX_LINE:
                raise AssertionError(f"no line end in {len(self.buffer)} bytes: {self.buffer[:200]!r}")
            if not self._receive(deadline):
                line, self.buffer = self.buffer, b""
                return line
        line, self.buffer = self.buffer[:end + 1], self.buffer[end + 1:]
        return line

    def exactly(self, size: int) -> bytes:
        """The next `size` bytes; AssertionError if the stream ends first."""
        deadline = time.monotonic() + self.timeout
        while len(self.buffer) < size:
            if not self._receive(deadline):
                raise AssertionError(f"stream ended after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def tls_handshake(self, context: ssl.SSLContext) -> None:
        """Start TLS on the connection now (after the server's go-ahead)."""
        if self.buffer:  # the server spoke after its go-ahead: that would be read as if encrypted
            raise AssertionError(f"plaintext after the TLS go-ahead: {self.buffer!r}")
        self.sock.settimeout(self.timeout)
        self.sock = context.wrap_socket(self.sock, server_hostname=self.server_hostname)

    def until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        deadline = time.monotonic() + self.timeout
        while self._receive(deadline):
            if len(self.buffer) > MAX_LINE:
                raise AssertionError(f"{len(self.buffer)} bytes and still open: {self.buffer[:200]!r}")
        data, self.buffer = self.buffer, b""
        return data

    def _receive(self, deadline: float) -> bool:
        """Append what arrives before the deadline; False at end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing more within {self.timeout} s; buffered: {self.buffer[-200:]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        except socket.timeout:
            raise TimeoutError(f"nothing more within {self.timeout} s; buffered: {self.buffer[-200:]!r}") from None
        self.buffer += chunk
        return bool(chunk)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Pop3Raw(_RawClient):
    """A POP3 connection. The greeting is not read: call line() for it (after sending
    a PROXY header, if any)."""

    def command(self, command: bytes) -> bytes:
        """Send one command (without its CRLF); return the status line."""
        self.send(command + b"\r\n")
        return self.line()

    def multiline(self) -> bytes:
        """The rest of a multi-line reply as on the wire (still dot-stuffed), without the
        terminating ".\\r\\n"."""
        lines = []
        while (line := self.line()) != b".\r\n":
            if not line.endswith(b"\n"):
                raise AssertionError(f"stream ended inside a multi-line reply: {b''.join(lines)[-200:]!r}")
            lines.append(line)
        return b"".join(lines)

    def starttls(self, context: ssl.SSLContext) -> bytes:
        """STLS, then the handshake; returns the "+OK" line."""
        reply = self.command(b"STLS")
        if not reply.startswith(b"+OK"):
            raise AssertionError(f"STLS refused: {reply!r}")
        self.tls_handshake(context)
        return reply


class ImapRaw(_RawClient):
    """An IMAP connection. The greeting is not read: call line() for it (after sending
    a PROXY header, if any).

    Responses come back one per list item, literals included: a response that ends in
    "{N}" is read on with its N bytes and the rest of the response after them.
    """

    def response(self) -> bytes:
        """The next whole response, with any literals it carries."""
        response = tail = self.line()
        if _STATUS.match(response):
            return response
        while (literal := _LITERAL.search(tail)) is not None:
            response += self.exactly(int(literal.group(1)))
            tail = self.line()
            if not tail:
                raise AssertionError(f"stream ended after a literal: {response[-200:]!r}")
            response += tail
        return response

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Responses up to and including the one tagged `tag`."""
        responses = []
        while True:
            response = self.response()
            if not response:
                raise AssertionError(f"stream ended before {tag!r}'s reply: {responses!r}")
            responses.append(response)
            if response.startswith(tag + b" "):
                return responses

    def command(self, command: bytes) -> list[bytes]:
        """Send one tagged command (without its CRLF); return its responses, the tagged
        one last."""
        self.send(command + b"\r\n")
        return self.until_tagged(command.split(b" ", 1)[0])

    def starttls(self, context: ssl.SSLContext, tag: bytes = b"tls1") -> list[bytes]:
        """STARTTLS, then the handshake; returns the responses to STARTTLS."""
        responses = self.command(tag + b" STARTTLS")
        if not responses[-1].startswith(tag + b" OK"):
            raise AssertionError(f"STARTTLS refused: {responses!r}")
        self.tls_handshake(context)
        return responses


def mutf7(name: str) -> bytes:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 §5.1.3): "Entwürfe" is
    b"Entw&APw-rfe". Dovecot 2.3 takes no other form (it has no UTF8=ACCEPT)."""
    encoded = []
    for printable, run in itertools.groupby(name, lambda char: " " <= char <= "~"):
        text = "".join(run)
        if printable:
            encoded.append(text.replace("&", "&-").encode("ascii"))
        else:
            base = base64.b64encode(text.encode("utf-16-be")).rstrip(b"=")
            encoded.append(b"&" + base.replace(b"/", b",") + b"-")
    return b"".join(encoded)


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_SSL = 0x20
PP2_CLIENT_SSL = 0x01


def proxy_v2_header(src: tuple[str, int], dst: tuple[str, int], ssl: bool) -> bytes:
    """A PROXY protocol v2 header (haproxy's proxy-protocol.txt §2.2): command PROXY, TCP
    over IPv4 or IPv6 from src to dst, each (address, port). With `ssl`, a PP2_TYPE_SSL
    TLV with the PP2_CLIENT_SSL bit says the client's own connection was TLS."""
    source, destination = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if source.version != destination.version:
        raise ValueError(f"{src[0]} and {dst[0]} are not of one address family")
    family = 0x11 if source.version == 4 else 0x21  # TCP over IPv4 / IPv6
    payload = source.packed + destination.packed + struct.pack("!HH", src[1], dst[1])
    if ssl:
        # client bits, then verify (0: a client certificate, if any, was verified)
        ssl_value = struct.pack("!BI", PP2_CLIENT_SSL, 0)
        payload += struct.pack("!BH", PP2_TYPE_SSL, len(ssl_value)) + ssl_value
    return PROXY_V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(payload)) + payload
