"""pytest fixtures for mailproxy plugin authors; the kit itself is `mailproxy.testing`.

Registered through the `pytest11` entry point `mailproxy`, so that every pytest run in
an environment with mailproxy installed has them (`-p no:mailproxy` turns them off).
This module imports nothing of mailproxy until a fixture is used: pytest loads it at
start-up, before a project's `pythonpath` setting applies, and importing mailproxy
then would pin that copy of it for the whole run.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

FIXTURES = ("mailproxy_policy", "mailproxy_proxy")
# Markers of the plugins that run async tests themselves: such a test is theirs.
OTHER_RUNNERS = ("asyncio", "anyio", "trio")


@pytest.fixture
def mailproxy_policy():
    """`mailproxy.testing.policy_session`: load a plugin, script an SMTP session."""
    from mailproxy.testing import policy_session

    return policy_session


@pytest.fixture
def mailproxy_proxy(tmp_path):
    """Start a `mailproxy.testing.PluginProxy` (same arguments); every proxy started is
    stopped after the test, and one that does not exit cleanly fails it."""
    from mailproxy.testing import PluginProxy

    started = []

    def start(plugin, options=None, **settings):
        proxy = PluginProxy(plugin, options, directory=tmp_path / f"mailproxy{len(started)}", **settings)
        started.append(proxy.start())
        return proxy

    yield start
    unclean = []
    for proxy in started:
        code = proxy.stop()
        if code != 0:
            unclean.append(f"the proxy exited with {code}; its log:\n{proxy.log()}")
    if unclean:
        pytest.fail("\n".join(unclean), pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an `async def` test that uses a mailproxy fixture in an event loop."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    if not any(name in pyfuncitem.fixturenames for name in FIXTURES):
        return None
    if any(pyfuncitem.get_closest_marker(marker) for marker in OTHER_RUNNERS):
        return None
    arguments = {
        name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters if name in pyfuncitem.funcargs
    }
    asyncio.run(test(**arguments))
    return True
