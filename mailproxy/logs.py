"""Logging to stderr with the session id on every line.

The id lives in a context variable set at the start of each session's task, so every
log line written while serving it (ours, a plugin's, a library's) carries it.
"""

from __future__ import annotations

import contextvars
import logging
import sys

current_session = contextvars.ContextVar("mailproxy_session", default="-")

FORMAT = "%(asctime)s %(levelname)-7s [%(session)s] %(name)s: %(message)s"


class _SessionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = current_session.get()
        return True


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SessionFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command at INFO; our own session log says what matters.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))
