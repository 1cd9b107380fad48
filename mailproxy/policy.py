"""Run one phase's hooks in configured order, and turn the answers into one `Verdict`.

The engine knows nothing of SMTP: the protocol session decides what the verdict means
on the wire. Each call is made by hook_calls.py (timed, isolated, counted); a call that
failed gets its plugin's `fail_mode`.

Each verdict other than `continue` is recorded in the why-trace (trace.py) of the
scope its scores go to; the score thresholds and the action stage are in actions.py.
`transaction_ended` writes a transaction's trace line.
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

from . import actions, metrics, trace
from .actions import SCORE_REJECT, SCORE_TEMPFAIL, Thresholds
from .config import PolicySettings
from .hook_calls import HookFailed, Implementation, PluginHooks
from .plugins import LoadedPlugin
from .session import POLICY, TraceEntry
from .verdict import Action, Verdict

# SCORE_REJECT and SCORE_TEMPFAIL live in actions.py, and are imported from here too.
__all__ = ["PolicyEngine", "FAILED_TEMPFAIL", "FAILED_REJECT", "SCORE_REJECT", "SCORE_TEMPFAIL"]

log = logging.getLogger("mailproxy.policy")

FAILED_TEMPFAIL = Verdict.tempfail(451, "4.3.0", "Temporary local problem, try again later")
FAILED_REJECT = Verdict.reject(554, "5.3.0", "Rejected by local policy")

# Where a score belongs. These hooks judge one message, so their scores go with the
# transaction (the Envelope) and end with it; `smtp_command` does too while a
# transaction is open. Every other hook judges the client (connect, HELO, AUTH,
# commands outside a transaction): its scores stay on the Session.
TRANSACTION_HOOKS = frozenset({"smtp_mail", "smtp_rcpt", "smtp_data"})
# A repeated HELO/EHLO (after STARTTLS, say) or a new MAIL is judged anew: its scores
# replace those of the previous one instead of adding to them.
RESCORED_HOOKS = frozenset({"smtp_helo", "smtp_mail"})


class PolicyEngine:
    def __init__(
        self,
        manager: pluggy.PluginManager,
        plugins: list[LoadedPlugin],
        settings: PolicySettings | None = None,
    ) -> None:
        self._settings = settings = settings or PolicySettings()
        self._thresholds = Thresholds.of(settings)
        self._thresholds_authenticated = (
            self._thresholds if settings.authenticated is None else Thresholds.of(settings.authenticated)
        )
        # Without a refusal threshold no score is ever held against one.
        self._judges = self._thresholds.can_refuse or self._thresholds_authenticated.can_refuse
        # Whether the action stage (`act`) has anything to do for a message.
        self.acts = self._thresholds.acts or self._thresholds_authenticated.acts or settings.trace_header
        self._hooks = PluginHooks(manager, plugins)

    def has(self, hook: str) -> bool:
        return bool(self._hooks.of(hook))

    def _on_failure(self, impl: Implementation) -> Verdict:
        mode = impl.plugin.settings.fail_mode
        if mode == "continue":
            return Verdict.cont()
        return FAILED_REJECT if mode == "reject" else FAILED_TEMPFAIL

    async def run(self, hook: str, session: Any, envelope: Any = None, **kwargs: Any) -> Verdict:
        """Run a policy hook; return the verdict that decides the command.

        A hook may answer one Verdict or a list (or tuple) of them, taken in order as if
        given one after the other. Scores and trace entries are recorded on the session
        or the envelope, as the hook decides (see TRANSACTION_HOOKS). Their sum is held
        against the configured thresholds after a phase that scored, and at every
        transaction phase: a threshold refuses the message, never a command such as
        RSET or QUIT for an old score.
        """
        impls = self._hooks.of(hook)
        if not impls:
            return Verdict.cont()
        kwargs["session"] = session
        kwargs["envelope"] = envelope
        scope = self._scores_for(hook, session, envelope)
        if hook in RESCORED_HOOKS:
            scope.forget_scores(hook)
        scored = False
        for impl in impls:
            failed = ""
            try:
                answer, elapsed = await self._hooks.call(impl, hook, kwargs)
            except HookFailed as failure:
                answer, elapsed, failed = self._on_failure(impl), failure.elapsed, failure.kind
            if answer is None:
                continue
            if isinstance(answer, Verdict):
                if answer.action is Action.CONTINUE:
                    continue
                answers = (answer,)
            else:
                # Checked before `.action` is read: a plugin returning True or a string
                # must be contained like one that raised, not crash the session.
                answers = self._several(impl.plugin.name, hook, answer)
                if answers is None:
                    answers, failed = (self._on_failure(impl),), "bad_result"
            for verdict in answers:
                if verdict.action is Action.CONTINUE:
                    continue
                if not self._heed(impl.plugin, hook, verdict, scope, elapsed, failed, session):
                    continue  # observe mode
                if verdict.action is Action.SCORE:
                    scored = True
                    continue
                return verdict
        if self._judges and (scored or hook in TRANSACTION_HOOKS):
            return self._judge(hook, session, envelope, scope)
        return Verdict.cont()

    @staticmethod
    def _several(name: str, hook: str, answer: Any) -> tuple[Verdict, ...] | None:
        """A list or tuple of verdicts (None items skipped); None for anything else."""
        if isinstance(answer, (list, tuple)) and all(v is None or isinstance(v, Verdict) for v in answer):
            return tuple(v for v in answer if v is not None)
        metrics.child(metrics.plugin_errors, name, hook, "bad_result").inc()
        log.error("plugin %s: %s returned %r, not a Verdict", name, hook, answer)
        return None

    @staticmethod
    def _heed(
        plugin: LoadedPlugin, hook: str, verdict: Verdict, scope: Any, elapsed: float, failed: str, session: Any
    ) -> bool:
        """Count, log and trace a verdict; book its points. Returns whether it is
        enforced (not in observe mode)."""
        enforced = not plugin.settings.observe
        action = verdict.action.value
        metrics.child(metrics.verdicts, plugin.name, hook, action, str(enforced).lower()).inc()
        if verdict.symbol:
            metrics.symbol_counter(plugin.name, verdict.symbol, str(enforced).lower()).inc()
        log.info(
            "session %s: plugin %s %s: %s%s%s",
            getattr(session, "id", "-"),
            plugin.name,
            hook,
            action,
            f" {verdict.symbol}={verdict.points:+g}" if verdict.symbol else "",
            "" if enforced else " (observe mode, not enforced)",
        )
        scoring = verdict.action is Action.SCORE
        symbol = (verdict.symbol or plugin.name) if scoring else (verdict.symbol or "")
        reason = f"plugin failed ({failed})" if failed else verdict.reason
        entry = TraceEntry(plugin.name, hook, action, symbol, verdict.points, reason, elapsed * 1000, not enforced)
        scope.record(entry)
        if enforced and scoring:
            scope.add_score(symbol, verdict.points, plugin.name, hook)
        return enforced

    @staticmethod
    def _scores_for(hook: str, session: Any, envelope: Any) -> Any:
        """The Session or the Envelope: where this hook's scores belong."""
        if envelope is None:
            return session
        in_transaction = envelope.mail_from is not None
        if hook in TRANSACTION_HOOKS or (hook == "smtp_command" and in_transaction):
            return envelope
        return session

    def thresholds_for(self, session: Any) -> Thresholds:
        """`[policy.authenticated]` for a session that logged in, if configured."""
        return self._thresholds_authenticated if session.authenticated else self._thresholds

    def _judge(self, hook: str, session: Any, envelope: Any, scope: Any) -> Verdict:
        """The session's and the transaction's points against the refusal thresholds; a
        refusal is traced, as the `[policy]` section's verdict, where the hook's are."""
        thresholds = self.thresholds_for(session)
        total = session.score + (envelope.score if envelope is not None else 0.0)
        action = thresholds.action(total)
        if action not in (actions.REJECT, actions.TEMPFAIL):
            return Verdict.cont()
        verdict = actions.refusal(action, total, actions.total_symbols(session, envelope))
        limit = actions.format_points(thresholds.limit(action))
        why = f"score {actions.format_points(total)} >= {action}_score {limit}"
        scope.record(TraceEntry(POLICY, hook, verdict.action.value, reason=why))
        return verdict

    def act(self, session: Any, envelope: Any) -> Verdict:
        """The action stage, once the message's score is final: when it streams, as DATA
        is answered (no hook can score after that); when it is taken whole, after the
        data hooks. Returns the score's refusal, or `continue` after adding the header
        lines the message is delivered with (X-Spam-*, X-Mailproxy-Trace)."""
        metrics.child(metrics.spam_score, session.listener).observe(session.score + envelope.score)
        if self._judges:
            verdict = self._judge("smtp_data", session, envelope, envelope)
            if verdict.action.is_refusal:
                return verdict
        thresholds = self.thresholds_for(session)
        total = session.score + envelope.score
        headers = actions.spam_headers(thresholds, total, actions.total_symbols(session, envelope))
        if self._settings.trace_header:
            items = trace.header_items(session.id, total, trace.entries_of(session, envelope))
            headers.append((actions.TRACE_HEADER_NAME, actions.folded(actions.TRACE_HEADER_NAME, items, ";")))
        # Not through `add_header`: these values are folded over several lines.
        envelope.added_headers += headers
        return Verdict.cont()

    def claimed_headers(self, session: Any) -> tuple[str, ...]:
        """The header fields the action stage writes on this session's messages: a
        client's own fields of those names are dropped from what it sends, so that
        nothing downstream reads the client's X-Spam-Flag beside the proxy's."""
        thresholds = self.thresholds_for(session)
        names = actions.SPAM_HEADER_NAMES if thresholds.add_header is not None or thresholds.spam_headers else ()
        return names + (actions.TRACE_HEADER_NAME,) if self._settings.trace_header else names

    def transaction_ended(
        self,
        session: Any,
        envelope: Any,
        outcome: str | None = None,
        reply: Any = None,
        by: str | None = None,
        sender: str | None = None,
    ) -> None:
        """Log the trace line of a transaction that ended, once per envelope: `outcome`
        (from the reply's code if not given), the final `reply` and `by` whom ("policy":
        the plugin or threshold that refused). A refused MAIL began no transaction: its
        line names the `sender`, and the envelope is used again. With `envelope` None:
        the line of a session refused at connect."""
        outcome = outcome or trace.outcome_of(reply)
        if envelope is not None and envelope.mail_from is not None:
            if envelope.outcome is not None:
                return
            envelope.outcome = outcome
        if trace.log.isEnabledFor(logging.INFO):
            thresholds = self.thresholds_for(session)
            trace.log.info("%s", trace.line(session, envelope, thresholds, outcome, reply, by, sender))

    async def first_result(self, hook: str, **kwargs: Any) -> tuple[Any, int]:
        """Ask implementations in order; the first answer other than None wins.

        Returns (answer, failures): a failing implementation counts as no answer, and
        the caller can tell "nobody knew" from "somebody could not tell".
        """
        failures = 0
        for impl in self._hooks.of(hook):
            try:
                result, _ = await self._hooks.call(impl, hook, kwargs)
            except HookFailed:
                failures += 1
                continue
            if result is not None:
                return result, failures
        return None, failures

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Tell every implementation; results are ignored and failures only counted."""
        for impl in self._hooks.of(hook):
            try:
                await self._hooks.call(impl, hook, kwargs)
            except HookFailed:
                pass
