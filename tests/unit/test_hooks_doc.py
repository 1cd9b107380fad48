"""docs/hooks.md and mailproxy/hookspecs.py describe the same hooks: each hook has a
section saying what it receives, returns and how results combine, naming every
argument; and the page names no hook that does not exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from mailproxy import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
SECTION = re.compile(r"^### `(\w+)`\n(.*?)(?=^##|\Z)", re.MULTILINE | re.DOTALL)
# A backticked name that looks like a hook: a protocol's prefix, or the credential check.
HOOKISH = re.compile(r"`((?:smtp|pop3|imap)_\w+|authenticate)(?:\(|`)")


def hooks() -> dict[str, inspect.Signature]:
    attribute = f"{hookspecs.PROJECT}_spec"
    return {
        name: inspect.signature(function)
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, attribute)
    }


def sections(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for match in SECTION.finditer(text):
        assert match.group(1) not in found, f"two sections for {match.group(1)}"
        found[match.group(1)] = match.group(2)
    return found


def test_every_hook_has_a_section_and_every_section_is_a_hook():
    documented = set(sections(DOC.read_text()))
    assert documented - set(hooks()) == set(), "docs/hooks.md has sections for hooks that do not exist"
    assert set(hooks()) - documented == set(), "hooks missing from docs/hooks.md"


def test_the_page_names_no_hook_that_does_not_exist():
    named = set(HOOKISH.findall(DOC.read_text()))
    assert named - set(hooks()) == set()


@pytest.mark.parametrize("name", sorted(hooks()))
def test_a_hook_section_says_what_it_receives_returns_and_how_results_combine(name):
    body = sections(DOC.read_text())[name]
    for label in ("**Receives:**", "**Returns:**", "**Combines:**"):
        assert label in body, f"{name}: no {label}"
    receives = body.split("**Receives:**", 1)[1].split("**Returns:**", 1)[0]
    for argument in hooks()[name].parameters:
        assert f"`{argument}`" in receives, f"{name}: `{argument}` is not described under Receives"


def test_the_sections_follow_the_order_of_the_module():
    assert list(sections(DOC.read_text())) == list(hooks())
