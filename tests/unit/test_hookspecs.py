"""Every hook is documented and belongs to exactly one of the three ways results combine."""

from __future__ import annotations

import inspect

import pytest

from mailproxy import hookspecs
from mailproxy.plugins import new_plugin_manager

SPEC_ATTRIBUTE = f"{hookspecs.PROJECT}_spec"
GROUPS = {
    "POLICY_HOOKS": hookspecs.POLICY_HOOKS,
    "NOTIFY_HOOKS": hookspecs.NOTIFY_HOOKS,
    "FIRST_RESULT_HOOKS": hookspecs.FIRST_RESULT_HOOKS,
}


def spec_functions() -> dict[str, object]:
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if inspect.isfunction(value) and hasattr(value, SPEC_ATTRIBUTE)
    }


def test_the_module_defines_hooks():
    assert {"smtp_connect", "smtp_mail", "smtp_data", "smtp_disconnect", "authenticate"} <= set(
        spec_functions()
    )
    # The plugin manager sees the same set.
    manager = new_plugin_manager()
    registered = {name for name in vars(manager.hook) if not name.startswith("_")}
    assert registered == set(spec_functions())


@pytest.mark.parametrize("name", sorted(spec_functions()))
def test_hook_has_a_docstring(name):
    doc = inspect.getdoc(spec_functions()[name])
    assert doc and len(doc.split()) >= 5, f"{name} needs a docstring saying what it receives"


@pytest.mark.parametrize("name", sorted(spec_functions()))
def test_hook_is_in_exactly_one_group(name):
    groups = [group for group, names in GROUPS.items() if name in names]
    assert len(groups) == 1, f"{name} is in {groups or 'no group'}"


def test_groups_name_only_existing_hooks_once():
    listed = [name for names in GROUPS.values() for name in names]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(spec_functions())


def test_firstresult_flag_matches_the_group():
    for name, function in spec_functions().items():
        firstresult = getattr(function, SPEC_ATTRIBUTE)["firstresult"]
        assert firstresult is (name in hookspecs.FIRST_RESULT_HOOKS), name


def test_policy_hooks_take_a_session():
    for name in hookspecs.POLICY_HOOKS + hookspecs.NOTIFY_HOOKS:
        assert "session" in inspect.signature(spec_functions()[name]).parameters, name
