"""docs/operations.md's metric reference is what scripts/metric_reference.py makes of
mailproxy.metrics.CATALOGUE: every metric is in it, under one area, and a metric added
to the catalogue without regenerating the page is reported by name."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailproxy import metrics
from mailproxy.metrics import CATALOGUE, MetricInfo

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "metric_reference.py"
DOC = REPO / "docs" / "operations.md"


def _load_script():
    spec = importlib.util.spec_from_file_location("metric_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_script()

NEW_UPSTREAM_METRIC = MetricInfo(
    "mailproxy_upstream_reconnects_total", "counter", "Upstream sessions reopened.", ("upstream",)
)


def section(document: str) -> str:
    return document.split(reference.BEGIN, 1)[1].split(reference.END, 1)[0]


def test_the_committed_reference_is_what_the_catalogue_generates():
    document = DOC.read_text(encoding="utf-8")
    assert reference.stale(document, CATALOGUE) is None, "run: python scripts/metric_reference.py"
    assert section(document) == "\n" + reference.render(CATALOGUE)


@pytest.mark.parametrize("name", [metric.name for metric in CATALOGUE])
def test_every_metric_of_the_catalogue_has_its_row(name):
    rows = re.findall(r"^\| `(mailproxy_\w+)` \|", section(DOC.read_text(encoding="utf-8")), re.MULTILINE)
    assert rows.count(name) == 1


def test_the_areas_come_in_their_fixed_order():
    headings = re.findall(r"^### (.+)$", section(DOC.read_text(encoding="utf-8")), re.MULTILINE)
    assert headings == [area for area, _ in reference.AREAS]


def test_a_metric_added_without_regenerating_is_reported_by_name(monkeypatch, capsys):
    document = DOC.read_text(encoding="utf-8")
    catalogue = [*CATALOGUE, NEW_UPSTREAM_METRIC]
    assert "not documented: mailproxy_upstream_reconnects_total" in reference.stale(document, catalogue)

    monkeypatch.setattr(metrics, "CATALOGUE", catalogue)
    assert reference.main(["--check"]) == 1
    assert "mailproxy_upstream_reconnects_total" in capsys.readouterr().err
    assert DOC.read_text(encoding="utf-8") == document  # --check writes nothing


def test_a_metric_removed_from_the_catalogue_is_reported_by_name():
    problem = reference.stale(DOC.read_text(encoding="utf-8"), CATALOGUE[1:])
    assert problem == f"no longer defined: {CATALOGUE[0].name}"


def test_a_changed_help_text_makes_the_reference_stale():
    changed = [MetricInfo(m.name, m.kind, m.help + " Changed.", m.labels) for m in CATALOGUE]
    assert reference.stale(DOC.read_text(encoding="utf-8"), changed) is not None


@pytest.mark.parametrize("name", ["mailproxy_widgets_total", "mailproxy_upstreamish_total"])
def test_a_metric_in_no_area_is_an_error_not_a_missing_row(name, monkeypatch, capsys):
    catalogue = [*CATALOGUE, MetricInfo(name, "counter", "Widgets.", ())]
    with pytest.raises(reference.ReferenceProblem, match=f"{name}: in no area"):
        reference.render(catalogue)

    monkeypatch.setattr(metrics, "CATALOGUE", catalogue)
    assert reference.main(["--check"]) == 2
    assert name in capsys.readouterr().err


def test_regenerating_writes_the_new_metric_under_its_area_and_leaves_the_rest(tmp_path, monkeypatch):
    page = tmp_path / "operations.md"
    page.write_text(DOC.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(metrics, "CATALOGUE", [*CATALOGUE, NEW_UPSTREAM_METRIC])

    assert reference.main(["--doc", str(page)]) == 0
    assert reference.main(["--check", "--doc", str(page)]) == 0
    written = page.read_text(encoding="utf-8")
    upstreams = written.split("### Upstreams", 1)[1].split("###", 1)[0]
    assert "| `mailproxy_upstream_reconnects_total` | counter | `upstream` | Upstream sessions reopened. |" in upstreams
    before, after = DOC.read_text(encoding="utf-8").split(reference.BEGIN), written.split(reference.BEGIN)
    assert before[0] == after[0]
    assert before[1].split(reference.END)[1] == after[1].split(reference.END)[1]


def test_a_page_without_its_markers_is_an_error(tmp_path):
    page = tmp_path / "operations.md"
    page.write_text("# Operating mailproxy\n", encoding="utf-8")
    assert reference.main(["--check", "--doc", str(page)]) == 2


def test_the_script_checks_the_committed_page_from_the_command_line():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")
