"""A hook cut off at its timeout leaves the session as it found it, however the hook
takes its cancellation; and one engine holds hooks on several event loops to their own
timeouts (mailproxy/deadlines.py, hook_calls.PluginHooks.call)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

from prometheus_client import REGISTRY

from mailproxy import hookimpl
from mailproxy.plugins import LoadedPlugin, PluginSettings, new_plugin_manager
from mailproxy.policy import PolicyEngine
from mailproxy.session import Envelope, Session
from mailproxy.verdict import Action

_names = itertools.count()
QUICK = PluginSettings(timeout=0.1, fail_mode="continue")


def engine_of(*plugins) -> tuple[PolicyEngine, list[str]]:
    manager, loaded, names = new_plugin_manager(), [], []
    for plugin in plugins:
        name = f"timeouts-{next(_names)}"
        manager.register(plugin, name=name)
        loaded.append(LoadedPlugin(name, "test", plugin, QUICK))
        names.append(name)
    return PolicyEngine(manager, loaded), names


class CleanupFails:
    """Hangs; when cut off, its cleanup raises instead of letting CancelledError out."""

    @hookimpl
    async def smtp_mail(self):
        try:
            await asyncio.sleep(10)
        finally:
            raise ConnectionResetError("closing the lookup's socket failed")


class CancelsItself:
    """A plugin bug: raises CancelledError of its own accord, to be contained."""

    @hookimpl
    async def smtp_rcpt(self):
        raise asyncio.CancelledError()


class TurnsCancellationIntoTimeout:
    """As a client library does: its own TimeoutError when its wait is cancelled."""

    @hookimpl
    async def smtp_mail(self):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise TimeoutError("the lookup timed out") from None


def errors(name: str, hook: str, kind: str) -> float:
    labels = {"plugin": name, "hook": hook, "kind": kind}
    return REGISTRY.get_sample_value("mailproxy_plugin_errors_total", labels) or 0.0


def test_a_hook_whose_cleanup_fails_when_cut_off_leaves_the_session_uncancelled():
    engine, _ = engine_of(CleanupFails(), CancelsItself())

    async def session_task():
        session, envelope = Session("smtp", "test"), Envelope()
        mail = await engine.run("smtp_mail", session, envelope, address="a@b.example", params={})
        cancelling = asyncio.current_task().cancelling()
        # With the watchdog's request left behind, this plugin's own CancelledError
        # would be taken for a shutdown and end the session.
        rcpt = await engine.run("smtp_rcpt", session, envelope, address="c@d.example", params={})
        return mail.action, cancelling, rcpt.action

    async def main():
        return await asyncio.create_task(session_task())

    assert asyncio.run(main()) == (Action.CONTINUE, 0, Action.CONTINUE)


def test_a_cancellation_a_hook_turns_into_its_own_timeout_error_counts_as_a_timeout():
    engine, [name] = engine_of(TurnsCancellationIntoTimeout())
    before = errors(name, "smtp_mail", "timeout")

    async def main():
        verdict = await engine.run("smtp_mail", Session("smtp", "test"), Envelope(),
                                   address="a@b.example", params={})
        return verdict.action, asyncio.current_task().cancelling()

    assert asyncio.run(main()) == (Action.CONTINUE, 0)
    assert errors(name, "smtp_mail", "timeout") == before + 1
    assert errors(name, "smtp_mail", "exception") == 0


class Hangs:
    @hookimpl
    async def smtp_mail(self):
        await asyncio.sleep(3)


def test_one_engine_on_two_event_loops_holds_each_to_its_own_timeout():
    engine, _ = engine_of(Hangs())
    took: dict[str, float] = {}

    def worker(label: str, delay: float) -> None:
        time.sleep(delay)

        async def call():
            started = time.monotonic()
            await engine.run("smtp_mail", Session("smtp", "test"), Envelope(), address="a@b.example", params={})
            took[label] = time.monotonic() - started

        asyncio.run(call())

    threads = [threading.Thread(target=worker, args=(label, delay)) for label, delay in (("A", 0), ("B", 0.02))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # Each is cut off soon after its 0.1 s; a hook run to its end would take 3 s.
    assert sorted(took) == ["A", "B"]
    assert all(seconds < 2 for seconds in took.values()), took
