"""The committed Grafana dashboards are grafana/generate.py's output, byte for byte, and
every query names only metrics mailproxy exports, with labels those metrics have
(mailproxy/metrics.py's CATALOGUE). That they show data is
tests/integration/test_dashboards_prometheus.py's part."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from mailproxy.metrics import CATALOGUE
from tests.support import dashboards

GENERATOR = dashboards.ROOT / "grafana" / "generate.py"
DATASOURCE_PROVISIONING = dashboards.ROOT / "grafana" / "provisioning" / "datasources" / "mailproxy.yml"
TARGET_LABELS = {"instance", "job"}  # Prometheus adds them to every series it scrapes
LABELS = {info.name: set(info.labels) for info in CATALOGUE}
KINDS = {info.name: info.kind for info in CATALOGUE}

SERIES = re.compile(r"\bmailproxy_\w+")
SELECTOR = re.compile(r"\b(mailproxy_\w+)\{([^}]*)\}")
MATCHED_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")

BOARDS = dashboards.load()
TARGETS = dashboards.targets(BOARDS)


@functools.cache
def generator():
    """grafana/generate.py as a module (grafana/ is no package)."""
    spec = importlib.util.spec_from_file_location("grafana_generate", GENERATOR)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def series_labels(series: str) -> set[str] | None:
    """The labels of a series name as Prometheus stores it; None if mailproxy exports
    no such series (a histogram is exported as its _bucket, _sum and _count)."""
    if series in LABELS and KINDS[series] != "histogram":
        return LABELS[series] | TARGET_LABELS
    for suffix in ("_bucket", "_sum", "_count"):
        metric = series.removesuffix(suffix)
        if series.endswith(suffix) and KINDS.get(metric) == "histogram":
            return LABELS[metric] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
    return None


def problems(expr: str) -> list[str]:
    """What in `expr` names a metric or label that mailproxy does not export."""
    found = []
    names = sorted(set(SERIES.findall(expr)))
    known = [name for name in names if series_labels(name) is not None]
    found += [f"{name}: no such series" for name in names if name not in known]
    for name, matchers in SELECTOR.findall(expr):
        labels = series_labels(name) or set()
        found += [f"{name}: no label {label}" for label in MATCHED_LABEL.findall(matchers)
                  if name in known and label not in labels]
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            found += [f"by ({label}): {name} has no such label" for name in known
                      if label not in series_labels(name)]
    return found


def test_the_committed_dashboards_are_the_generators_output():
    rendered = generator().render()
    assert sorted(BOARDS) == sorted(rendered)
    for name, text in rendered.items():
        assert (dashboards.DASHBOARDS_DIR / name).read_text(encoding="utf-8") == text, (
            f"grafana/dashboards/{name} is not what grafana/generate.py writes: edit generate.py and re-run it")


def test_the_output_is_the_same_every_time():
    assert generator().render() == generator().render()


def run_check(directory) -> subprocess.CompletedProcess:
    # This tree's mailproxy package, whatever the venv has installed.
    path = os.pathsep.join(filter(None, [str(dashboards.ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(GENERATOR), "--check", "--dir", str(directory)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})


def test_check_names_a_hand_edited_dashboard(tmp_path):
    assert run_check(dashboards.DASHBOARDS_DIR).returncode == 0
    copy = tmp_path / "dashboards"
    shutil.copytree(dashboards.DASHBOARDS_DIR, copy)
    edited = copy / "filtering.json"
    edited.write_text(edited.read_text().replace('"title": "Check results"', '"title": "Check outcomes"'))
    result = run_check(copy)
    assert result.returncode == 1
    assert "filtering.json: stale" in result.stderr
    assert "overview.json" not in result.stderr and "mailstores.json" not in result.stderr


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.id)
def test_a_panel_queries_only_exported_metrics_and_their_labels(target):
    assert SERIES.search(target.expr), f"no mailproxy metric in {target.expr}"
    assert problems(target.expr) == []


@pytest.mark.parametrize("expr, problem", [
    ("rate(mailproxy_no_such_total[1m])", "mailproxy_no_such_total: no such series"),
    ("mailproxy_messages_total_bucket", "mailproxy_messages_total_bucket: no such series"),
    ("mailproxy_spam_score", "mailproxy_spam_score: no such series"),  # a histogram's own name
    ('mailproxy_messages_total{protocol="smtp"}', "mailproxy_messages_total: no label protocol"),
    ("sum by (verb) (rate(mailproxy_messages_total[1m]))", "by (verb): mailproxy_messages_total has no such label"),
    ("sum by (le) (rate(mailproxy_spam_score_count[1m]))", "by (le): mailproxy_spam_score_count has no such label"),
])
def test_the_check_finds_a_wrong_name_or_label(expr, problem):
    assert problems(expr) == [problem]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_dashboard_has_the_variables_and_its_queries_use_them(name):
    board = BOARDS[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "instance", "listener", "protocol"} <= set(variables)
    assert variables["instance"]["query"] == "label_values(mailproxy_build_info, instance)"
    for variable in ("listener", "protocol"):
        series, label = dashboards.label_values_query(variables[variable])
        assert label == variable and series.startswith("mailproxy_connections_total{")
    for variable in dashboards.query_variables(board):
        series, label = dashboards.label_values_query(variable)
        assert problems(series) == [] and label in series_labels(SERIES.search(series)[0])
    exprs = [t.expr for t in TARGETS if t.dashboard == name]
    for variable in ("instance", "listener", "protocol"):
        assert any(f"${variable}" in expr for expr in exprs), f"{name}: no panel uses ${variable}"


def test_every_panel_has_a_description_and_uses_the_datasource_variable_which_starts_on_the_provisioned_one():
    [uid] = re.findall(r"^\s*uid:\s*(\S+)\s*$", DATASOURCE_PROVISIONING.read_text(), re.MULTILINE)
    for name, board in BOARDS.items():
        [datasource] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
        assert (datasource["type"], datasource["query"], datasource["current"]["value"]) == (
            "datasource", "prometheus", uid)
        for panel in dashboards.panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, panel["title"])
            assert panel.get("description"), (name, panel["title"])
