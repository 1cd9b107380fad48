"""Run one phase's hooks: in configured order, each call timed, isolated and counted.

The engine knows nothing of SMTP: it turns plugin answers into one `Verdict` for the
phase, and the protocol session decides what that means on the wire.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

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


class _PluginFailed(Exception):
    """A hook call that raised or timed out; `kind` is the metric label."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


@dataclass(frozen=True, slots=True)
class _Impl:
    plugin: LoadedPlugin
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    is_async: bool


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
        self._impls: dict[str, tuple[_Impl, ...]] = {}
        for name, caller in vars(manager.hook).items():
            if not isinstance(caller, pluggy.HookCaller):
                continue
            impls = [
                _Impl(
                    by_name[impl.plugin_name],
                    impl.function,
                    tuple(impl.argnames),
                    inspect.iscoroutinefunction(impl.function),
                )
                for impl in caller.get_hookimpls()
                if impl.plugin_name in by_name
            ]
            impls.sort(key=lambda i: order[i.plugin.name])
            self._impls[name] = tuple(impls)

    def has(self, hook: str) -> bool:
        return bool(self._impls.get(hook))

    async def _call(self, impl: _Impl, hook: str, kwargs: dict[str, Any]) -> Any:
        name = impl.plugin.name
        started = time.perf_counter()
        try:
            args = [kwargs[a] for a in impl.argnames]
            if impl.is_async:
                return await asyncio.wait_for(impl.function(*args), impl.plugin.settings.timeout)
            result = impl.function(*args)
            if inspect.isawaitable(result):
                return await asyncio.wait_for(result, impl.plugin.settings.timeout)
            return result
        except asyncio.TimeoutError:
            metrics.child(metrics.plugin_errors, name, hook, "timeout").inc()
            log.warning("plugin %s: %s timed out after %ss", name, hook, impl.plugin.settings.timeout)
            raise _PluginFailed("timeout") from None
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.child(metrics.plugin_errors, name, hook, "exception").inc()
            log.exception("plugin %s: %s raised", name, hook)
            raise _PluginFailed("exception") from None
        finally:
            metrics.child(metrics.plugin_duration, name, hook).observe(time.perf_counter() - started)

    def _on_failure(self, impl: _Impl) -> Verdict:
        mode = impl.plugin.settings.fail_mode
        if mode == "continue":
            return Verdict.cont()
        return FAILED_REJECT if mode == "reject" else FAILED_TEMPFAIL

    async def run(self, hook: str, session: Any, envelope: Any = None, **kwargs: Any) -> Verdict:
        """Run a policy hook; return the verdict that decides the command.

        Scores are added to `envelope` (when given); once the transaction's score
        crosses a configured threshold, that decides the command too.
        """
        impls = self._impls.get(hook)
        if not impls:
            return Verdict.cont()
        kwargs["session"] = session
        kwargs["envelope"] = envelope
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
                if envelope is not None:
                    envelope.add_score(verdict.symbol or plugin.name, verdict.points)
                continue
            return verdict
        return self._score_verdict(envelope)

    def _score_verdict(self, envelope: Any) -> Verdict:
        if envelope is None:
            return Verdict.cont()
        reject_at, tempfail_at = self._settings.reject_score, self._settings.tempfail_score
        if reject_at is not None and envelope.score >= reject_at:
            return SCORE_REJECT
        if tempfail_at is not None and envelope.score >= tempfail_at:
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
