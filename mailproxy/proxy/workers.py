"""Several worker processes sharing each listening port (SO_REUSEPORT).

The supervisor forks the workers, serves the metrics of all of them (prometheus-client
multiprocess mode: the caller set PROMETHEUS_MULTIPROC_DIR before anything imported
prometheus_client), restarts a worker that dies, and passes SIGINT/SIGTERM on.

Each worker writes its pid to a pipe once its listeners are open: the supervisor is
ready while at least one worker serves. Signals only set a flag and wake the loop
(Python's signal wakeup fd): an exception raised from a signal handler can be lost
(inside a fork's at-fork hooks, CPython prints it and carries on), a stop must not be.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Callable, NoReturn

from ..config import ConfigError

if TYPE_CHECKING:
    from .health import Readiness

log = logging.getLogger("mailproxy.workers")

RESTARTS_PER_MINUTE = 10  # beyond this a crashing worker is not restarted again
EXIT_CANNOT_START = 2  # a worker's configuration problem: same as `mailproxy`'s own
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

# A worker's body: it serves until stopped, and calls its argument once its listeners are open.
RunWorker = Callable[[Callable[[], None]], None]


def supervise(
    count: int, run_worker: RunWorker, grace: float, readiness: Readiness, shutdown_delay: float = 0.0,
) -> int:
    """Run `count` workers until SIGINT or SIGTERM, then tell `readiness`, wait
    `shutdown_delay` seconds, and stop them (each gets `grace` seconds, and 5 more).
    The exit status: 0, or why the workers could not be kept running."""
    return _Supervisor(count, run_worker, readiness).run(grace, shutdown_delay)


class _ReadyReports:
    """A pipe on which each worker writes its pid once its listeners are open."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        self._partial = b""

    def report(self) -> None:  # in a worker; one short write is atomic
        os.write(self._write_fd, b"%d\n" % os.getpid())

    def read(self) -> list[int]:
        *lines, self._partial = (self._partial + os.read(self.fd, 4096)).split(b"\n")
        return [int(line) for line in lines]

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._write_fd)


class _Supervisor:
    def __init__(self, count: int, run_worker: RunWorker, readiness: Readiness) -> None:
        self._count = count
        self._run_worker = run_worker
        self._readiness = readiness
        self._children: dict[int, int] = {}  # pid -> worker number
        self._restarts: list[float] = []
        self._status = 0
        self._stop_requested = False
        self._reports = _ReadyReports()
        self._wakeup_fd, self._wakeup_write_fd = os.pipe()
        os.set_blocking(self._wakeup_fd, False)
        os.set_blocking(self._wakeup_write_fd, False)
        self._news = select.poll()
        for fd in (self._reports.fd, self._wakeup_fd):
            self._news.register(fd, select.POLLIN)

    def run(self, grace: float, shutdown_delay: float) -> int:
        signal.set_wakeup_fd(self._wakeup_write_fd)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._request_stop)
        signal.signal(signal.SIGCHLD, _wake_only)
        try:
            for number in range(self._count):
                self._spawn(number)
            while not self._stop_requested and self._reap():
                self._wait()
        finally:
            self._readiness.stopping()  # before the workers close their listeners
            if self._stop_requested and shutdown_delay > 0:
                log.info("stopping: not ready, the workers still accept for %.1fs", shutdown_delay)
                time.sleep(shutdown_delay)
            _stop_children(self._children, grace)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self._reports.close()
            os.close(self._wakeup_fd)
            os.close(self._wakeup_write_fd)
        return self._status

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True  # the loop wakes through the wakeup fd

    def _spawn(self, number: int) -> None:
        # A stop signal waits until the worker has its own handlers, instead of
        # reaching the supervisor's in the new process.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(number)
            self._children[pid] = number
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.info("worker %d started, pid %d", number, pid)

    def _become_worker(self, number: int) -> NoReturn:
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for signum in (*STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            os.close(self._reports.fd)
            os.close(self._wakeup_fd)
            os.close(self._wakeup_write_fd)
            self._run_worker(self._reports.report)
        except ConfigError as exc:
            log.error("worker %d cannot start: %s", number, exc)
            code = EXIT_CANNOT_START
        except BaseException:
            log.exception("worker %d failed", number)
            code = 1
        finally:
            os._exit(code)

    def _wait(self) -> None:
        """Until a signal comes (a stop, a worker's exit) or a worker reports."""
        readable = {fd for fd, _ in self._news.poll()}
        if self._wakeup_fd in readable:
            os.read(self._wakeup_fd, 4096)
        if self._reports.fd in readable:
            for pid in self._reports.read():
                if pid in self._children:  # not one already gone
                    self._readiness.serving(pid)

    def _reap(self) -> bool:
        """Restart the workers that exited. False: give up (the status says why)."""
        from prometheus_client import multiprocess

        while self._children:
            pid, code = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
            number = self._children.pop(pid, None)
            if number is None:
                continue
            self._readiness.worker_gone(pid)
            multiprocess.mark_process_dead(pid)
            if os.WIFEXITED(code) and os.WEXITSTATUS(code) == EXIT_CANNOT_START:
                self._status = EXIT_CANNOT_START  # restarting would fail the same way
                return False
            now = time.monotonic()
            self._restarts[:] = [t for t in self._restarts if now - t < 60] + [now]
            if len(self._restarts) > RESTARTS_PER_MINUTE:
                log.error("workers keep dying; giving up")
                self._status = 1
                return False
            log.error("worker %d (pid %d) exited with status %d; restarting", number, pid, code)
            self._spawn(number)
        return False


def _wake_only(signum, frame) -> None:
    """SIGCHLD: the wakeup fd has woken the loop, which reaps."""


def _stop_children(children: dict[int, int], grace: float) -> None:
    for pid in children:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 5
    while children and time.monotonic() < deadline:
        for pid in list(children):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                children.pop(pid)
        time.sleep(0.05)
    for pid in children:
        _kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
