"""Real servers on loopback for tests: plain helpers, no pytest fixtures.

None of the servers we run can bind port 0 and report the port it got, so the harness
picks a free port, passes it on, and waits until the server accepts connections.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SMTP_SINK = "/usr/sbin/smtp-sink"
SWAKS = "/usr/bin/swaks"

# Fields smtp-sink writes before the message, each on one line; X-Helo-Args is absent
# when the client sent no HELO/EHLO and X-Rcpt-Args repeats once per recipient. A
# three-line Received: header (the second and third lines start with a tab) follows.
SINK_FIELDS = ("X-Client-Addr", "X-Client-Proto", "X-Helo-Args", "X-Mail-Args", "X-Rcpt-Args")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0,
                  process: subprocess.Popen | None = None) -> None:
    """Poll until something accepts on host:port; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            out, err = process.communicate() if (process.stdout or process.stderr) else (None, None)
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before accepting on "
                f"{host}:{port}; stderr: {err!r}; stdout: {out!r}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted on {host}:{port} within {timeout}s") from None
            time.sleep(0.05)


def wait_until_refused(port: int, timeout: float = 15.0) -> None:
    """Poll until nothing accepts on 127.0.0.1:port any more (a listener closed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, f"still accepting connections on port {port} after {timeout} s"
        time.sleep(0.05)


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on `port` (IPv4 or IPv6), from /proc/net."""
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table_path) as table:
                next(table)
                for line in table:
                    local, state, inode = (line.split()[i] for i in (1, 3, 9))
                    if local.endswith(f":{port:04X}") and state == "0A":
                        inodes.add(inode)
        except FileNotFoundError:
            pass
    return inodes


def wait_for_listen(port: int, timeout: float = 10.0, process: subprocess.Popen | None = None) -> None:
    """Like wait_for_port, without connecting: a probe connection would be a session
    to a proxy, and would show in its metrics."""
    deadline = time.monotonic() + timeout
    while not listening_inodes(port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listened on port {port} within {timeout}s")
        time.sleep(0.02)


def split_dump(raw: bytes) -> tuple[dict[str, list[str]], bytes]:
    """Split one smtp-sink dump into its own fields and the message as received.

    The message has LF line ends and is dot-unstuffed; the extra empty line smtp-sink
    appends is removed.
    """
    lines = raw.split(b"\n")
    fields: dict[str, list[str]] = {}
    i = 0
    while i < len(lines) and b":" in lines[i]:
        name, _, value = lines[i].decode("utf-8", "replace").partition(":")
        if name not in SINK_FIELDS:
            break
        fields.setdefault(name, []).append(value.strip())
        i += 1
    if i >= len(lines) or not lines[i].startswith(b"Received: ") or "X-Client-Addr" not in fields:
        raise ValueError(f"not an smtp-sink dump: {raw[:200]!r}")
    i += 1
    while i < len(lines) and lines[i].startswith(b"\t"):
        i += 1
    rest = b"\n".join(lines[i:])
    if not rest.endswith(b"\n\n"):
        raise ValueError(f"smtp-sink dump is incomplete: {raw[-200:]!r}")
    return fields, rest[:-1]


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1 at a free port, dumping each transaction to a file.

    Use as a context manager. `reject_rcpt`, e.g. "550 5.1.1 no such user", makes every
    RCPT fail with that reply (this also turns PIPELINING off).
    """

    def __init__(self, reject_rcpt: str | None = None, extra_args: list[str] | tuple[str, ...] = ()):
        self.reject_rcpt = reject_rcpt
        self.extra_args = list(extra_args)
        self.port = 0
        self.address = ""
        self.dump_dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> SmtpSink:
        # smtp-sink opens dump files after dropping to `nobody`: the directory must be
        # writable by it and every parent searchable, which pytest's tmp_path is not.
        self.dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-", dir="/tmp"))
        self.dump_dir.chmod(0o1777)
        for attempt in range(3):
            try:
                self._launch()
                return self
            except RuntimeError:
                # Another process may take the free port before the sink binds it.
                if attempt == 2 or "Address already in use" not in self.log():
                    self.stop()
                    raise

    def _launch(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        cmd = [SMTP_SINK]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # it refuses to run as root otherwise
        if self.reject_rcpt is not None:
            cmd += ["-f", "RCPT", "-B", self.reject_rcpt]
        cmd += [*self.extra_args, "-d", f"{self.dump_dir}/%H%M%S.", f"inet:{self.address}", "256"]
        # A file, not a pipe: a sink logging per session must never block on a full pipe.
        if self._log is not None:
            self._log.close()  # from an attempt that lost its port
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        # Wait until the sink itself listens: a bare connect could reach whoever else
        # took the port in the meantime.
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"smtp-sink exited with {self.process.returncode}: {self.log()!r}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"smtp-sink did not listen on {self.address}: {self.log()!r}")
            time.sleep(0.02)

    def _open_files(self) -> set[str]:
        """What the sink process has open (readlink of /proc/PID/fd/*)."""
        fd_dir = f"/proc/{self.process.pid}/fd"
        targets = set()
        try:
            for fd in os.listdir(fd_dir):
                targets.add(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:
            pass  # exited, or an fd closed while we looked
        return targets

    def _listening(self) -> bool:
        sockets = {t[len("socket:["):-1] for t in self._open_files() if t.startswith("socket:[")}
        return bool(listening_inodes(self.port) & sockets)

    def log(self) -> str:
        """What smtp-sink wrote to stdout/stderr so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def kill(self) -> None:
        """SIGKILL the sink, for tests of an upstream that dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)
            self.dump_dir = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _finished_files(self) -> list[Path]:
        # smtp-sink creates a dump file at MAIL, writes it in 4 KB chunks as DATA arrives,
        # closes it at the end of DATA and deletes it if the transaction is aborted. List
        # the files before the open ones: a file closed in between is finished anyway.
        files = list(self.dump_dir.iterdir())
        still_open = self._open_files()
        finished = []
        for path in files:
            if str(path) in still_open:
                continue
            try:
                with path.open("rb") as f:
                    # After kill() a file may be cut short; a whole dump ends with "\n\n".
                    if f.seek(0, os.SEEK_END) < 2:
                        continue
                    f.seek(-2, os.SEEK_END)
                    if f.read() == b"\n\n":
                        finished.append(path)
            except FileNotFoundError:
                pass  # aborted transaction
        return finished

    def messages(self, expected: int | None = None, timeout: float = 10.0) -> list[bytes]:
        """Raw dumps of finished transactions, oldest first.

        With `expected`, wait until at least that many exist. Each file is read once its
        size stops changing. Sorted by modification time, then name; names have
        one-second resolution plus a random suffix and mtimes a few milliseconds, so
        transactions finished closer together than that come in no reliable order.
        """
        deadline = time.monotonic() + timeout
        while True:
            files = self._finished_files()
            if expected is None or len(files) >= expected:
                sizes = {p: p.stat().st_size for p in files}
                time.sleep(0.05)
                if all(p.stat().st_size == size for p, size in sizes.items()):
                    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
                    return [p.read_bytes() for p in files]
            if time.monotonic() > deadline:
                raise TimeoutError(f"smtp-sink: {len(files)} finished messages after {timeout}s, "
                                   f"expected {expected} (or their files kept growing)")
            time.sleep(0.05)

    def transactions(self, expected: int | None = None,
                     timeout: float = 10.0) -> list[tuple[dict[str, list[str]], bytes]]:
        """(smtp-sink's fields, e.g. X-Mail-Args and X-Rcpt-Args; message) per transaction."""
        return [split_dump(raw) for raw in self.messages(expected, timeout)]

    def bodies(self, expected: int | None = None, timeout: float = 10.0) -> list[bytes]:
        """Each message exactly as received (headers and body, LF line ends)."""
        return [body for _, body in self.transactions(expected, timeout)]


def run_swaks(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run swaks with `args`; the caller checks returncode and output."""
    return subprocess.run([SWAKS, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
