"""Logging to stderr with the session id on every line.

The id lives in a context variable set at the start of each session's task, so every
log line written while serving it (ours, a plugin's, a library's) carries it.

Log lines carry what clients send (logins, HELO names, addresses). The formatter escapes
control characters in every message, so no value can start a line of its own that looks
like one the proxy wrote, whichever call site logged it.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys

current_session = contextvars.ContextVar("mailproxy_session", default="-")

FORMAT = "%(asctime)s %(levelname)-7s [%(session)s] %(name)s: %(message)s"


# C0 and C1 controls, DEL, and the two Unicode separators that line-splitting tools
# (Python's str.splitlines among them) also take for line ends.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS_BUT_LF = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_one(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` on one line: CR as \\r, LF as \\n, TAB as \\t, other controls as \\xNN."""
    return _CONTROLS.sub(_escape_one, text)


class EscapingFormatter(logging.Formatter):
    """Every record on one line; a traceback keeps its own line breaks, but nothing
    else (an exception's text may hold client data too)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, exc_info) -> str:
        return _CONTROLS_BUT_LF.sub(_escape_one, super().formatException(exc_info))

    def formatStack(self, stack_info: str) -> str:
        return _CONTROLS_BUT_LF.sub(_escape_one, super().formatStack(stack_info))


class _SessionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = current_session.get()
        return True


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SessionFilter())
    handler.setFormatter(EscapingFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
