"""Per-command round trips of one SMTP client, for the latency phase of smtp_throughput.py.

A probe client on plain sockets runs sequential sessions (connect and greeting, EHLO,
MAIL, RCPT, DATA, the message with its final dot, QUIT) and times each step from the
first byte sent to the last line of the reply read. It waits for every reply before the
next command, as a client without PIPELINING does, so each time is one round trip through
the target. Bounded in sessions and in seconds, and it stops as soon as the background
load it runs beside has ended.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

# The greeting is the connect's round trip, not a command; it is reported, not judged.
STEPS = ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "message", "QUIT")
COMMANDS = STEPS[1:]
IO_TIMEOUT = 10.0  # seconds for one reply, whatever the load


class ProbeError(Exception):
    """A probe session got an unexpected reply or none."""


@dataclass
class Samples:
    """Round trips in seconds per step, pooled over probe sessions (and rounds)."""

    by_step: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    sessions: int = 0

    def add(self, session: dict[str, float]) -> None:
        for step, seconds in session.items():
            self.by_step[step].append(seconds)
        self.sessions += 1

    def extend(self, other: Samples) -> None:
        for step, values in other.by_step.items():
            self.by_step[step].extend(values)
        self.sessions += other.sessions

    def percentile_ms(self, step: str, fraction: float) -> float | None:
        return percentile(self.by_step[step], fraction) * 1e3 if self.by_step[step] else None


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of the values at or
    below it (of 200 values, p99 is the third largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def read_reply(replies, expected: str) -> None:
    """Read one (possibly multi-line) reply; its code must be `expected`."""
    while True:
        line = replies.readline(1024)
        if not line.endswith(b"\n"):
            raise ProbeError(f"connection closed or line too long while waiting for {expected}")
        if line[3:4] != b"-":
            break
    if not line.startswith(expected.encode()):
        raise ProbeError(f"expected {expected}, got {line.decode(errors='replace').strip()!r}")


def probe_session(port: int, sender: str, recipient: str, message: bytes) -> dict[str, float]:
    """One session against 127.0.0.1:port; seconds per step. `message` is dot-stuffed
    and ends in CRLF; the final dot is added here."""
    steps = (
        ("EHLO", b"EHLO probe.bench.example\r\n", "250"),
        ("MAIL", f"MAIL FROM:<{sender}>\r\n".encode(), "250"),
        ("RCPT", f"RCPT TO:<{recipient}>\r\n".encode(), "250"),
        ("DATA", b"DATA\r\n", "354"),
        ("message", message + b".\r\n", "250"),
        ("QUIT", b"QUIT\r\n", "221"),
    )
    times = {}
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        # Without it, Nagle's algorithm and delayed ACKs would be what gets measured.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock.makefile("rb") as replies:
            read_reply(replies, "220")
            times["greeting"] = time.perf_counter() - started
            for step, request, expected in steps:
                started = time.perf_counter()
                sock.sendall(request)
                read_reply(replies, expected)
                times[step] = time.perf_counter() - started
    return times


def run_probe(port: int, sender: str, recipient: str, message: bytes, max_sessions: int,
              max_seconds: float, load_running: Callable[[], bool]) -> tuple[Samples, str]:
    """Sequential probe sessions until `max_sessions`, `max_seconds` or the end of the
    load; the samples, and an error text ('' if every session worked)."""
    samples = Samples()
    deadline = time.monotonic() + max_seconds
    while samples.sessions < max_sessions and time.monotonic() < deadline and load_running():
        try:
            samples.add(probe_session(port, sender, recipient, message))
        except (OSError, ProbeError) as exc:
            return samples, f"probe session {samples.sessions + 1}: {exc}"
    return samples, ""
