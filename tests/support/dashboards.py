"""The committed Grafana dashboards (grafana/dashboards/*.json) as the tests read them:
each panel's queries, each variable's query, and Grafana's substitution of variables."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Target:
    dashboard: str  # the file name
    panel: str
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard.removesuffix('.json')}: {self.panel} ({self.ref_id})"


def load() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(board: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included; rows themselves left out."""
    found = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def targets(boards: dict[str, dict]) -> list[Target]:
    return [Target(name, panel["title"], target["refId"], target["expr"])
            for name, board in boards.items() for panel in panels(board) for target in panel["targets"]]


def query_variables(board: dict) -> list[dict]:
    """The variables whose values a query finds, in the dashboard's order."""
    return [v for v in board["templating"]["list"] if v["type"] == "query"]


def label_values_query(variable: dict) -> tuple[str, str]:
    """(series selector, label) of a `label_values(selector, label)` variable."""
    found = LABEL_VALUES.match(variable["query"])
    assert found, f"variable {variable['name']}: not a label_values(selector, label) query: {variable['query']}"
    return found["match"], found["label"]


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with `$name` and `${name}` replaced by values[name], as Grafana does."""
    def value(found: re.Match) -> str:
        name = found[1] or found[2]
        assert name in values, f"no value for ${name} in {expr}"
        return values[name]
    return VARIABLE.sub(value, expr)


def all_of(variable: dict, options: list[str]) -> str:
    """What Grafana puts in a regex matcher for the variable's "All": its allValue if
    it has one, else every option, regex-escaped (in a PromQL string) and joined by |."""
    if variable.get("allValue"):
        return variable["allValue"]
    return "(" + "|".join(re.escape(option).replace("\\", "\\\\") for option in options) + ")"
