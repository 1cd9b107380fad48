"""Run one phase's hooks: in configured order, each call timed, isolated and counted.

The engine knows nothing of SMTP: it turns plugin answers into one `Verdict` for the
phase, and the protocol session decides what that means on the wire.

Isolation: whatever a plugin raises, `SystemExit`, `KeyboardInterrupt` and its own
`CancelledError` included, is that plugin's failure and gets its `fail_mode`; only a
cancellation of the session's task itself passes through. A plain hook runs inline,
unless its plugin says `blocking = true`: then it runs in a thread of its own, so the
timeout holds for it too (see `_ThreadLane`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pluggy

from . import metrics
from .config import PolicySettings
from .plugins import LoadedPlugin
from .verdict import Action, Verdict

log = logging.getLogger("mailproxy.policy")

FAILED_TEMPFAIL = Verdict.tempfail(451, "4.3.0", "Temporary local problem, try again later")
FAILED_REJECT = Verdict.reject(554, "5.3.0", "Rejected by local policy")
SCORE_TEMPFAIL = Verdict.tempfail(451, "4.7.1", "Message scored as suspicious, try again later")
SCORE_REJECT = Verdict.reject(550, "5.7.1", "Message scored as spam")

# Where a score belongs. These hooks judge one message, so their scores go with the
# transaction (the Envelope) and end with it; `smtp_command` does too while a
# transaction is open. Every other hook judges the client (connect, HELO, AUTH,
# commands outside a transaction): its scores stay on the Session.
TRANSACTION_HOOKS = frozenset({"smtp_mail", "smtp_rcpt", "smtp_data"})
# A repeated HELO/EHLO (after STARTTLS, say) or a new MAIL is judged anew: its scores
# replace those of the previous one instead of adding to them.
RESCORED_HOOKS = frozenset({"smtp_helo", "smtp_mail"})

# Threads one `blocking` plugin may hold at once. A call that times out keeps its
# thread until the plugin returns, so a plugin that hangs holds at most this many,
# and only its own callers wait for them.
BLOCKING_THREADS = 8


class _PluginFailed(Exception):
    """A hook call that raised or timed out; `kind` is the metric label."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


class _ThreadLane:
    """Runs one `blocking` plugin's plain hooks in threads, at most BLOCKING_THREADS at
    once; a call that finds them all busy waits for one, within its own timeout.

    Python cannot stop a thread: a call that timed out runs on in the background until
    the plugin returns, and is counted in `busy` until then. The threads are daemon
    threads, so one still stuck at shutdown does not keep the process alive.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._slots = asyncio.Semaphore(BLOCKING_THREADS)
        self.busy = 0

    async def call(self, function: Callable[..., Any], args: Sequence[Any]) -> Any:
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()

        def finished(result: Any, error: BaseException | None) -> None:  # on the loop
            self.busy -= 1
            self._slots.release()
            if outcome.done():  # the caller timed out or was cancelled
                return
            if error is None:
                outcome.set_result(result)
            else:
                outcome.set_exception(error)

        def work() -> None:  # in the thread
            result, error = None, None
            try:
                result = function(*args)
            except BaseException as exc:  # the caller's containment deals with it
                error = exc
            try:
                loop.call_soon_threadsafe(finished, result, error)
            except RuntimeError:  # the loop is closed: the proxy stopped meanwhile
                pass

        self.busy += 1
        try:
            context = contextvars.copy_context()  # the session's log id goes along
            thread = threading.Thread(target=context.run, args=(work,), name=f"plugin {self._name}", daemon=True)
            thread.start()
        except BaseException:
            self.busy -= 1
            self._slots.release()
            raise
        return await outcome


@dataclass(frozen=True, slots=True)
class _Impl:
    plugin: LoadedPlugin
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    is_async: bool
    lane: _ThreadLane | None  # where a plain hook of a `blocking` plugin runs


def _session_cancelled() -> bool:
    """Whether the running task has been asked to stop, as opposed to a plugin raising
    CancelledError of its own accord."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class PolicyEngine:
    def __init__(
        self,
        manager: pluggy.PluginManager,
        plugins: list[LoadedPlugin],
        settings: PolicySettings | None = None,
    ) -> None:
        self._settings = settings or PolicySettings()
        order = {p.name: i for i, p in enumerate(plugins)}
        by_name = {p.name: p for p in plugins}
        lanes = {p.name: _ThreadLane(p.name) for p in plugins if p.settings.blocking}
        self._impls: dict[str, tuple[_Impl, ...]] = {}
        for name, caller in vars(manager.hook).items():
            if not isinstance(caller, pluggy.HookCaller):
                continue
            impls = []
            for impl in caller.get_hookimpls():
                plugin = by_name.get(impl.plugin_name)
                if plugin is None:
                    continue
                is_async = inspect.iscoroutinefunction(impl.function)
                lane = None if is_async else lanes.get(plugin.name)
                impls.append(_Impl(plugin, impl.function, tuple(impl.argnames), is_async, lane))
            impls.sort(key=lambda i: order[i.plugin.name])
            self._impls[name] = tuple(impls)

    def has(self, hook: str) -> bool:
        return bool(self._impls.get(hook))

    async def _call(self, impl: _Impl, hook: str, kwargs: dict[str, Any]) -> Any:
        name = impl.plugin.name
        timeout = impl.plugin.settings.timeout
        deadline = None
        started = time.perf_counter()
        try:
            args = [kwargs[a] for a in impl.argnames]
            if not impl.is_async and impl.lane is None:
                # A plain function runs to its end whatever the clock says: no timeout
                # to arm for it, only a warning when it overstays.
                result = impl.function(*args)
                self._warn_if_stalled(name, hook, time.perf_counter() - started, timeout)
                if not inspect.isawaitable(result):
                    return result
            # asyncio.timeout, not wait_for: the hook runs in this task, so whatever
            # it raises comes here (a SystemExit out of a task of its own would stop
            # the event loop).
            deadline = asyncio.timeout(timeout)
            async with deadline:
                if impl.is_async:
                    return await impl.function(*args)
                if impl.lane is not None:
                    result = await impl.lane.call(impl.function, args)
                if inspect.isawaitable(result):
                    result = await result
                return result
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and _session_cancelled():
                raise
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                metrics.child(metrics.plugin_errors, name, hook, "timeout").inc()
                log.warning("plugin %s: %s timed out after %ss%s", name, hook, timeout, self._busy(impl))
                raise _PluginFailed("timeout") from None
            metrics.child(metrics.plugin_errors, name, hook, "exception").inc()
            log.exception("plugin %s: %s raised", name, hook)
            raise _PluginFailed("exception") from None
        finally:
            metrics.child(metrics.plugin_duration, name, hook).observe(time.perf_counter() - started)

    @staticmethod
    def _busy(impl: _Impl) -> str:
        if impl.lane is None:
            return ""
        # A thread cannot be stopped: a timed-out call holds its thread until it returns.
        return f" ({impl.lane.busy} of its {BLOCKING_THREADS} threads still busy)"

    @staticmethod
    def _warn_if_stalled(name: str, hook: str, elapsed: float, timeout: float) -> None:
        if elapsed > timeout:
            log.warning(
                "plugin %s: %s ran %.1fs inside the event loop, past its %ss timeout, and "
                "held up every session meanwhile; set blocking = true for it",
                name, hook, elapsed, timeout,
            )

    def _on_failure(self, impl: _Impl) -> Verdict:
        mode = impl.plugin.settings.fail_mode
        if mode == "continue":
            return Verdict.cont()
        return FAILED_REJECT if mode == "reject" else FAILED_TEMPFAIL

    async def run(self, hook: str, session: Any, envelope: Any = None, **kwargs: Any) -> Verdict:
        """Run a policy hook; return the verdict that decides the command.

        Scores are recorded on the session or the envelope, as the hook decides (see
        TRANSACTION_HOOKS). Their sum is held against the configured thresholds after a
        phase that scored, and at every transaction phase: a threshold refuses the
        message, never a command such as RSET or QUIT for an old score.
        """
        impls = self._impls.get(hook)
        if not impls:
            return Verdict.cont()
        kwargs["session"] = session
        kwargs["envelope"] = envelope
        scores = self._scores_for(hook, session, envelope)
        if hook in RESCORED_HOOKS:
            scores.forget_scores(hook)
        scored = False
        for impl in impls:
            plugin = impl.plugin
            try:
                verdict = await self._call(impl, hook, kwargs)
            except _PluginFailed:
                verdict = self._on_failure(impl)
            if verdict is None:
                continue
            # Checked before `.action` is read: a plugin returning True or a string must be
            # contained like one that raised, not crash the session with AttributeError.
            if not isinstance(verdict, Verdict):
                metrics.child(metrics.plugin_errors, plugin.name, hook, "bad_result").inc()
                log.error("plugin %s: %s returned %r, not a Verdict", plugin.name, hook, verdict)
                verdict = self._on_failure(impl)
            if verdict.action is Action.CONTINUE:
                continue
            enforced = not plugin.settings.observe
            metrics.child(metrics.verdicts, plugin.name, hook, verdict.action.value, str(enforced).lower()).inc()
            log.info(
                "session %s: plugin %s %s: %s%s%s",
                getattr(session, "id", "-"),
                plugin.name,
                hook,
                verdict.action.value,
                f" {verdict.symbol}={verdict.points:+g}" if verdict.symbol else "",
                "" if enforced else " (observe mode, not enforced)",
            )
            if not enforced:
                continue
            if verdict.action is Action.SCORE:
                scores.add_score(verdict.symbol or plugin.name, verdict.points, plugin.name, hook)
                scored = True
                continue
            return verdict
        if scored or hook in TRANSACTION_HOOKS:
            return self._score_verdict(session, envelope)
        return Verdict.cont()

    @staticmethod
    def _scores_for(hook: str, session: Any, envelope: Any) -> Any:
        """The Session or the Envelope: where this hook's scores belong."""
        if envelope is None:
            return session
        in_transaction = envelope.mail_from is not None
        if hook in TRANSACTION_HOOKS or (hook == "smtp_command" and in_transaction):
            return envelope
        return session

    def _score_verdict(self, session: Any, envelope: Any) -> Verdict:
        total = session.score + (envelope.score if envelope is not None else 0.0)
        reject_at, tempfail_at = self._settings.reject_score, self._settings.tempfail_score
        if reject_at is not None and total >= reject_at:
            return SCORE_REJECT
        if tempfail_at is not None and total >= tempfail_at:
            return SCORE_TEMPFAIL
        return Verdict.cont()

    async def first_result(self, hook: str, **kwargs: Any) -> tuple[Any, int]:
        """Ask implementations in order; the first answer other than None wins.

        Returns (answer, failures): a failing implementation counts as no answer, and
        the caller can tell "nobody knew" from "somebody could not tell".
        """
        failures = 0
        for impl in self._impls.get(hook, ()):
            try:
                result = await self._call(impl, hook, kwargs)
            except _PluginFailed:
                failures += 1
                continue
            if result is not None:
                return result, failures
        return None, failures

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Tell every implementation; results are ignored and failures only counted."""
        for impl in self._impls.get(hook, ()):
            try:
                await self._call(impl, hook, kwargs)
            except _PluginFailed:
                pass
