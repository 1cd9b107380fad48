"""Threads for plugin work that would block the event loop: a lane per plugin.

Python cannot stop a thread. So a lane bounds how many threads one plugin may hold
(a call that finds them all busy waits for one), keeps its threads for the next call
(starting a thread per call costs more than many calls do), and makes them daemon
threads: one stuck in a plugin at shutdown does not keep the process alive. A call
that its caller gave up on (a timeout) runs on until the plugin returns, holding its
thread and counted in `busy` and in `mailproxy_plugin_threads_busy` until then.

The policy engine runs the plain hooks of a `blocking = true` plugin in one; a plugin
with its own slow step (a big message to parse) may keep one of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from typing import Any, Callable, Sequence

from . import metrics

__all__ = ["ThreadLane", "DEFAULT_THREADS"]

DEFAULT_THREADS = 8


class ThreadLane:
    def __init__(self, name: str, size: int = DEFAULT_THREADS) -> None:
        self.name = name
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._threads = 0
        self.busy = 0
        self._busy_gauge = metrics.child(metrics.plugin_threads_busy, name)

    async def call(self, function: Callable[..., Any], args: Sequence[Any] = ()) -> Any:
        """`function(*args)` in a thread of the lane: its result, or what it raised."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()

        def finished(result: Any, error: BaseException | None) -> None:  # on the loop
            self.busy -= 1
            self._busy_gauge.dec()
            self._slots.release()
            if not outcome.done():  # else the caller timed out or was cancelled
                # The error goes back as a value and is raised by the caller: some
                # exceptions (StopIteration, GeneratorExit) cannot travel through a
                # Future, or would end the awaiting coroutine instead of reaching it.
                outcome.set_result((result, error))

        def work() -> None:  # in a thread of the lane
            result, error = None, None
            try:
                result = function(*args)
            except BaseException as exc:  # the caller's containment deals with it
                error = exc
            try:
                loop.call_soon_threadsafe(finished, result, error)
            except RuntimeError:  # the loop is closed: the proxy stopped meanwhile
                pass

        try:
            if self.busy >= self._threads:  # every thread is busy: one more
                thread = threading.Thread(target=self._serve, name=f"plugin {self.name}", daemon=True)
                thread.start()
                self._threads += 1
        except BaseException:
            self._slots.release()
            raise
        self.busy += 1
        self._busy_gauge.inc()
        context = contextvars.copy_context()  # the session's log id goes along
        self._jobs.put(lambda: context.run(work))
        result, error = await outcome
        if error is not None:
            raise error
        return result

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
