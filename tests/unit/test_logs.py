"""The log formatter: one record, one line, whatever a client put into the values."""

from __future__ import annotations

import io
import logging

import pytest

from mailproxy.logs import EscapingFormatter, current_session, escape_controls, setup_logging


@pytest.mark.parametrize(
    "text, escaped",
    [
        ("plain text, ünïcode and \\n as typed", "plain text, ünïcode and \\n as typed"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x00\x1b[31mred\x7f", "\\x00\\x1b[31mred\\x7f"),
        ("c1 \x85 \x9b", "c1 \\x85 \\x9b"),  # NEL and CSI
        ("\u2028\u2029", "\\u2028\\u2029"),  # what str.splitlines also splits on
    ],
)
def test_escape_controls(text, escaped):
    assert escape_controls(text) == escaped
    assert len(escape_controls(text).splitlines()) <= 1


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("mailproxy.auth", logging.INFO, __file__, 1, message, args, exc_info)


def test_formatter_keeps_every_message_on_one_line():
    formatter = EscapingFormatter("%(name)s: %(message)s")
    forged = "x\n2024-01-01 00:00:00,000 INFO    [-] mailproxy.auth: authenticated as root"
    line = formatter.format(record("authentication failed for %s (%s)", forged, "PLAIN"))
    assert line.splitlines() == [
        "mailproxy.auth: authentication failed for x\\n2024-01-01 00:00:00,000 INFO    [-] "
        "mailproxy.auth: authenticated as root (PLAIN)"
    ]


def test_formatter_keeps_tracebacks_readable():
    formatter = EscapingFormatter("%(message)s")
    try:
        raise ValueError("bad\rvalue\x1b[2J")
    except ValueError as exc:
        text = formatter.format(record("internal error\r", exc_info=(type(exc), exc, exc.__traceback__)))
    lines = text.splitlines()
    assert lines[0] == "internal error\\r"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad\\rvalue\\x1b[2J"
    assert all("\r" not in line and "\x1b" not in line for line in lines)


def test_setup_logging_uses_the_escaping_formatter(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("info")
        token = current_session.set("abc123")
        try:
            logging.getLogger("mailproxy.smtp").info("HELO %s", "evil\r\nforged line")
        finally:
            current_session.reset(token)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    [line] = stream.getvalue().splitlines()
    assert line.endswith("INFO    [abc123] mailproxy.smtp: HELO evil\\r\\nforged line")
