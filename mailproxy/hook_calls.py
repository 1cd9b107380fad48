"""Call one plugin's implementation of a hook: timed, isolated and counted.

`PluginHooks` holds every hook's implementations in the configured plugin order, and
makes each call (policy.py decides what the answers mean):
- a coroutine is awaited under the plugin's `timeout`, kept by the event loop's
  watchdog (deadlines.py), not a timer per call;
- a plain function runs inline, or, for a plugin with `blocking = true`, in a thread
  of its own lane (threads.py), so the timeout holds for it too;
- whatever the call raises, `SystemExit`, `KeyboardInterrupt` and the plugin's own
  `CancelledError` included, becomes `HookFailed`; only a cancellation of the
  session's task itself passes through.
Every call's duration is observed, and every failure counted, by plugin and hook.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import operator
import time
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Generator

import pluggy

from . import metrics
from .deadlines import Watchdog
from .plugins import LoadedPlugin
from .threads import DEFAULT_THREADS, ThreadLane
from .verdict import Verdict

log = logging.getLogger("mailproxy.policy")

# Threads one `blocking` plugin may hold at once. A call that times out keeps its
# thread until the plugin returns, so a plugin that hangs holds at most this many,
# and only its own callers wait for them.
BLOCKING_THREADS = DEFAULT_THREADS


class HookFailed(Exception):
    """A hook call that raised or timed out; `kind` is the metric label, `elapsed` the
    seconds it took."""

    def __init__(self, kind: str, elapsed: float) -> None:
        self.kind = kind
        self.elapsed = elapsed


@dataclass(frozen=True, slots=True)
class Implementation:
    plugin: LoadedPlugin
    function: Callable[..., Any]
    arguments: Callable[[dict[str, Any]], tuple[Any, ...]]  # the call's arguments, by name
    is_async: bool
    lane: ThreadLane | None  # where a plain hook of a `blocking` plugin runs
    durations: Any  # the plugin_duration child of this plugin and hook: every call observes it


def _picker(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The values of `names` in a hook's keyword arguments, as a tuple: one C call per
    hook call instead of a comprehension."""
    if len(names) == 1:
        name = names[0]
        return lambda kwargs: (kwargs[name],)
    return operator.itemgetter(*names) if names else lambda kwargs: ()


class _Resumed:
    """The rest of a coroutine whose first step has run: awaiting it goes on from where
    it stopped, as `await` would have (PEP 380's expansion of `yield from`)."""

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, yielded = self._coroutine, self._yielded
        self._yielded = None
        while True:
            thrown = None
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown in: a cancellation, most often
                thrown = exc
            # Sent or thrown in outside the handler, as `await` does: the coroutine
            # must not see the thrown exception as the one being handled.
            try:
                if thrown is None:
                    yielded = coroutine.send(sent)
                else:
                    yielded = coroutine.throw(thrown)
            except StopIteration as done:
                return done.value
            finally:
                thrown = None


def _session_cancelled() -> bool:
    """Whether the running task has been asked to stop, as opposed to a plugin raising
    CancelledError of its own accord."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class PluginHooks:
    def __init__(self, manager: pluggy.PluginManager, plugins: list[LoadedPlugin]) -> None:
        self._watchdog = Watchdog()
        order = {p.name: i for i, p in enumerate(plugins)}
        by_name = {p.name: p for p in plugins}
        lanes = {p.name: ThreadLane(p.name, BLOCKING_THREADS) for p in plugins if p.settings.blocking}
        self._implementations: dict[str, tuple[Implementation, ...]] = {}
        for name, caller in vars(manager.hook).items():
            if not isinstance(caller, pluggy.HookCaller):
                continue
            found = []
            for impl in caller.get_hookimpls():
                plugin = by_name.get(impl.plugin_name)
                if plugin is None:
                    continue
                is_async = inspect.iscoroutinefunction(impl.function)
                lane = None if is_async else lanes.get(plugin.name)
                durations = metrics.child(metrics.plugin_duration, plugin.name, name)
                found.append(Implementation(plugin, impl.function, _picker(tuple(impl.argnames)), is_async, lane,
                                            durations))
            found.sort(key=lambda i: order[i.plugin.name])
            self._implementations[name] = tuple(found)

    def of(self, hook: str) -> tuple[Implementation, ...]:
        """The hook's implementations, in the configured plugin order."""
        return self._implementations.get(hook, ())

    async def call(self, impl: Implementation, hook: str, kwargs: dict[str, Any]) -> tuple[Any, float]:
        """One implementation's answer and the seconds it took."""
        name = impl.plugin.name
        timeout = impl.plugin.settings.timeout
        timed_out = False
        started = time.perf_counter()
        try:
            args = impl.arguments(kwargs)
            if impl.is_async:
                # Its first step at once: most calls end there, with nothing awaited
                # (a cache's or the memory state's answer), and such a call cannot be
                # cancelled, so it needs no deadline.
                coroutine = impl.function(*args)
                try:
                    yielded = coroutine.send(None)
                except StopIteration as done:
                    result, pending = done.value, None
                else:
                    pending = _Resumed(coroutine, yielded)
            elif impl.lane is not None:
                pending = impl.lane.call(impl.function, args)
            else:
                # A plain function runs to its end whatever the clock says: no timeout
                # to arm for it, only a warning when it overstays, raising or not.
                try:
                    result = impl.function(*args)
                finally:
                    elapsed = time.perf_counter() - started
                    if elapsed > timeout:
                        self._warn_if_stalled(name, hook, elapsed, timeout)
                # It may still hand back an awaitable; None and a Verdict, the usual
                # answers, need no closer look.
                usual = result is None or type(result) is Verdict
                pending = None if usual or not inspect.isawaitable(result) else result
            if pending is not None:
                # Awaited in this task, not wait_for's: whatever the hook raises comes
                # here (a SystemExit out of a task of its own would stop the event loop).
                # The watchdog's deadline, not asyncio.timeout's timer: see deadlines.py.
                deadline = self._watchdog.arm(timeout - (time.perf_counter() - started))
                try:
                    result = await pending
                    if impl.lane is not None and inspect.isawaitable(result):
                        result = await result  # a blocking hook that handed back a coroutine
                finally:
                    self._watchdog.disarm(deadline)
                    # However the call ended, the watchdog's request is withdrawn, as
                    # asyncio.timeout's exit does; a hook that swallowed it and answered
                    # anyway is taken at its word.
                    timed_out = deadline.expired_alone()
        except BaseException as exc:
            elapsed = time.perf_counter() - started
            impl.durations.observe(elapsed)
            # What a cancelled call raises: CancelledError, or what a client library
            # turns it into.
            if timed_out and isinstance(exc, (asyncio.CancelledError, TimeoutError)):
                metrics.child(metrics.plugin_errors, name, hook, "timeout").inc()
                log.warning("plugin %s: %s timed out after %ss%s", name, hook, timeout, self._busy(impl))
                raise HookFailed("timeout", elapsed) from None
            if isinstance(exc, asyncio.CancelledError) and _session_cancelled():
                raise
            metrics.child(metrics.plugin_errors, name, hook, "exception").inc()
            if getattr(exc, "expected", False):  # a failure its raiser explains: one line
                log.warning("plugin %s: %s failed: %s", name, hook, exc)
            else:
                log.exception("plugin %s: %s raised", name, hook)
            raise HookFailed("exception", elapsed) from None
        elapsed = time.perf_counter() - started
        impl.durations.observe(elapsed)
        return result, elapsed

    @staticmethod
    def _busy(impl: Implementation) -> str:
        if impl.lane is None:
            return ""
        # A thread cannot be stopped: a timed-out call holds its thread until it returns.
        return f" ({impl.lane.busy} of its {BLOCKING_THREADS} threads still busy)"

    @staticmethod
    def _warn_if_stalled(name: str, hook: str, elapsed: float, timeout: float) -> None:
        log.warning(
            "plugin %s: %s ran %.1fs inside the event loop, past its %ss timeout, and "
            "held up every session meanwhile; set blocking = true for it",
            name, hook, elapsed, timeout,
        )
