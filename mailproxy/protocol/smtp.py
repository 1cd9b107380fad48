"""SMTP wire formats, with no I/O: bytes in, parsed values out.

  * `ReplyParser`: the upstream's replies (multi-line, bounded), kept byte-exact so
    they can be relayed unchanged.
  * command argument parsing (MAIL/RCPT paths and ESMTP parameters), EHLO keywords, xtext.

A message's own format (DATA framing, dot-stuffing, the smuggling defence) is in
`smtp_message.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CRLF = b"\r\n"


class ProtocolError(Exception):
    """The peer broke the protocol; the text says how."""


# --- replies ------------------------------------------------------------------------------

_ENHANCED = re.compile(rb"^([245]\.\d{1,3}\.\d{1,3})(?: |$)")


@dataclass(frozen=True, slots=True)
class ServerReply:
    code: int
    lines: tuple[bytes, ...]  # the text of each line, after "NNN-" / "NNN "
    raw: bytes  # every line with its CRLF, exactly as received

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        return match.group(1).decode() if match else None

    @property
    def text(self) -> str:
        return "\n".join(line.decode("utf-8", "replace") for line in self.lines)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.lines[0].decode('utf-8', 'replace') if self.lines else ''}"


def make_reply(code: int, *lines: str) -> ServerReply:
    """A reply the proxy writes itself, in the same form as a relayed one."""
    # "replace": text quoted from a client may hold undecodable bytes (surrogates).
    texts = [line.encode("utf-8", "replace") for line in (lines or ("",))]
    last = len(texts) - 1
    raw = b"".join(
        b"%d%s%s\r\n" % (code, b" " if i == last else b"-", text) for i, text in enumerate(texts)
    )
    return ServerReply(code, tuple(texts), raw)


class ReplyParser:
    """Collect reply lines from a byte stream and return whole replies."""

    def __init__(self, max_line: int = 4096, max_lines: int = 256) -> None:
        self._buffer = b""
        self._lines: list[bytes] = []
        self._texts: list[bytes] = []
        self._code: int | None = None
        self._max_line = max_line
        self._max_lines = max_lines

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> bool:
        """Bytes received beyond the last complete reply."""
        return bool(self._buffer or self._lines)

    def next_reply(self) -> ServerReply | None:
        buffer = self._buffer
        if buffer.endswith(b"\n") and buffer.find(b"\n") == len(buffer) - 1:
            self._buffer = b""  # exactly one line waiting: no slicing
            reply = self._take_line(buffer)
            if reply is not None:
                return reply
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._max_line:
                    raise ProtocolError("reply line too long")
                return None
            line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
            reply = self._take_line(line)
            if reply is not None:
                return reply

    def _take_line(self, line: bytes) -> ServerReply | None:
        if len(line) > self._max_line:
            raise ProtocolError("reply line too long")
        body = line.rstrip(b"\r\n")
        if len(body) < 3 or not body[:3].isdigit() or (len(body) > 3 and body[3:4] not in b" -"):
            raise ProtocolError(f"malformed reply line {body[:40]!r}")
        code = int(body[:3])
        if not 200 <= code <= 599:
            raise ProtocolError(f"reply code {code} out of range")
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed from {self._code} to {code} mid-reply")
        last = body[3:4] != b"-"
        if last and self._code is None:  # a reply of one line, the common case
            return ServerReply(code, (body[4:],), body + CRLF)
        self._code = code
        self._lines.append(body + CRLF)
        self._texts.append(body[4:])
        if len(self._lines) > self._max_lines:
            raise ProtocolError("reply has too many lines")
        if not last:
            return None
        reply = ServerReply(code, tuple(self._texts), b"".join(self._lines))
        self._lines, self._texts, self._code = [], [], None
        return reply


def parse_size(value: object) -> int | None:
    """A SIZE value (MAIL parameter or EHLO keyword) as a number, or None if it is not
    plain ASCII digits ("²".isdigit() is true, and int() of it raises)."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def ehlo_keywords(reply: ServerReply) -> dict[str, str]:
    """The extensions an EHLO reply advertises: KEYWORD -> parameters ('' if none)."""
    keywords = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.decode("ascii", "replace").strip().partition(" ")
        if keyword:
            keywords[keyword.upper()] = params.strip()
    return keywords


# --- commands -----------------------------------------------------------------------------


def split_command(line: bytes) -> tuple[str, str]:
    """A command line (without CRLF) as (VERB, argument)."""
    verb, _, argument = line.partition(b" ")
    return verb.decode("ascii", "replace").upper(), argument.strip().decode("utf-8", "surrogateescape")


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def parse_path(argument: str, keyword: str) -> tuple[str, dict[str, str | bool]]:
    """Parse `FROM:<path> PARAMS` or `TO:<path> PARAMS` into (address, params).

    The address is returned without angle brackets ('' for the null path); parameter
    names are upper-cased; a parameter without value maps to True. Raises ValueError
    with a reason fit for a 501 reply.
    """
    head = argument[: len(keyword) + 1]
    if head.upper() != keyword + ":":
        raise ValueError(f"Syntax: {keyword}:<address>")
    rest = argument[len(keyword) + 1 :].lstrip()
    if not rest:
        raise ValueError(f"Syntax: {keyword}:<address>")
    if rest.startswith("<"):
        close = _closing_bracket(rest)
        address, rest = rest[1:close], rest[close + 1 :]
    else:  # tolerated without brackets, as many servers do
        address, space, rest = rest.partition(" ")
        rest = space + rest  # the parameters keep their separating space
    # A quoted local part ("john doe"@x, "a>b"@x) may hold spaces and brackets; the rest
    # of the address may not, and no part may hold a line end.
    unquoted = _QUOTED.sub('""', address)
    if any(c in unquoted for c in " <>") or any(c in address for c in "\r\n") or len(address) > 320:
        raise ValueError("Bad address syntax")
    if rest and not rest.startswith(" "):
        raise ValueError("Bad address syntax")
    params: dict[str, str | bool] = {}
    for item in rest.split():
        name, sep, value = item.partition("=")
        if not name or not name.replace("-", "").isalnum():
            raise ValueError(f"Bad parameter {item!r}")
        params[name.upper()] = value if sep else True
    return address, params


def _closing_bracket(text: str) -> int:
    """Index of the '>' that closes the path, skipping quoted local parts."""
    if '"' not in text:  # nothing quoted: the first '>' closes it
        index = text.find(">", 1)
        if index < 0:
            raise ValueError("Missing '>' after the address")
        return index
    quoted = False
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\" and quoted:
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
        index += 1
    raise ValueError("Missing '>' after the address")


_XTEXT_PLAIN = re.compile(r"[!-*,-<>-~]*")  # printable ASCII but "+" and "="


def xtext(value: str) -> str:
    """RFC 3461 xtext, as XCLIENT attribute values need."""
    if _XTEXT_PLAIN.fullmatch(value):  # nothing to encode, the usual case
        return value
    return "".join(
        c
        if "!" <= c <= "~" and c not in "+="
        else "".join(f"+{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
        for c in value
    )


# --- EHLO towards the client ---------------------------------------------------------------

# Extensions the proxy can pass through: it forwards their parameters verbatim and needs
# nothing more of them. CHUNKING/BINARYMIME are left out (BDAT is not relayed); XCLIENT,
# XFORWARD and AUTH are between the proxy and the upstream only.
PASS_THROUGH_EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN")


def client_ehlo_reply(
    upstream: ServerReply, size_limit: int, starttls: bool, auth: tuple[str, ...]
) -> ServerReply:
    """The EHLO reply the client gets: the upstream's greeting line, the extensions both
    sides support, SIZE as the smaller limit, and what the proxy itself provides."""
    offered = ehlo_keywords(upstream)
    lines = [upstream.lines[0]]
    for keyword in PASS_THROUGH_EXTENSIONS:
        if keyword in offered:
            lines.append(keyword.encode())
    upstream_size = parse_size(offered.get("SIZE"))
    limit = min(size_limit, upstream_size) if upstream_size else size_limit
    lines.append(b"SIZE %d" % limit)
    if starttls:
        lines.append(b"STARTTLS")
    if auth:
        lines.append(("AUTH " + " ".join(auth)).encode())
    return make_reply(250, *(line.decode("utf-8", "replace") for line in lines))
