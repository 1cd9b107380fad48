"""Several worker processes sharing each listening port (SO_REUSEPORT).

The supervisor forks the workers, serves the metrics of all of them (prometheus-client
multiprocess mode: the caller set PROMETHEUS_MULTIPROC_DIR before anything imported
prometheus_client), restarts a worker that dies, and passes SIGINT/SIGTERM on.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

from ..config import ConfigError

log = logging.getLogger("mailproxy.workers")

RESTARTS_PER_MINUTE = 10  # beyond this a crashing worker is not restarted again
EXIT_CANNOT_START = 2  # a worker's configuration problem: same as `mailproxy`'s own


class _Stop(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _Stop()


def supervise(
    count: int, run_worker: Callable[[], None], grace: float,
    ready: Callable[[], None] | None = None, stopping: Callable[[], None] | None = None,
) -> int:
    """Run `count` workers until SIGINT or SIGTERM. `ready` is called once they are
    started, `stopping` when they are about to be stopped."""
    from prometheus_client import multiprocess

    children: dict[int, int] = {}  # pid -> worker number
    restarts: list[float] = []

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                run_worker()
            except ConfigError as exc:
                log.error("worker %d cannot start: %s", number, exc)
                code = EXIT_CANNOT_START
            except BaseException:
                log.exception("worker %d failed", number)
                code = 1
            finally:
                os._exit(code)
        children[pid] = number
        log.info("worker %d started, pid %d", number, pid)

    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    status = 0
    try:
        for number in range(count):
            spawn(number)
        if ready is not None:
            ready()
        while children:
            pid, code = os.waitpid(-1, 0)
            number = children.pop(pid, None)
            if number is None:
                continue
            multiprocess.mark_process_dead(pid)
            if os.WIFEXITED(code) and os.WEXITSTATUS(code) == EXIT_CANNOT_START:
                status = EXIT_CANNOT_START  # restarting would fail the same way
                raise _Stop()
            now = time.monotonic()
            restarts[:] = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > RESTARTS_PER_MINUTE:
                log.error("workers keep dying; giving up")
                status = 1
                raise _Stop()
            log.error("worker %d (pid %d) exited with status %d; restarting", number, pid, code)
            spawn(number)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stopping is not None:
            stopping()  # before the workers close their listeners
        _stop_children(children, grace)
    return status


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
