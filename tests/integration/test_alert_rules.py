"""The alert rules in config/prometheus: promtool accepts them and passes their unit
tests, the sample prometheus.yml is valid and a real Prometheus loads the rules through
it, and every metric and label an alert expression names is one mailproxy exports
(metrics.CATALOGUE), so that a renamed metric cannot leave an alert that never fires."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mailproxy import metrics
from tests.support.servers import free_port, wait_for_listen

pytestmark = pytest.mark.integration

RULES = Path(__file__).parents[2] / "config" / "prometheus"
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"
ALERTS = {
    "MailproxyDown", "MailproxyUpstreamDown", "MailproxyUpstreamErrors", "MailproxyNoTraffic",
    "MailproxyAuthFailureSpike", "MailproxyCertificateExpiry", "MailproxyRejectRatioSpike",
    "MailproxyPluginTimeouts", "MailproxySharedStateErrors",
}
# Labels Prometheus puts on every series of a target, and its own series of each scrape.
TARGET_LABELS = {"job", "instance"}
SCRAPE_SERIES = {"up": TARGET_LABELS}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=540)


def test_promtool_check_rules():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)  # the day-long series take half a minute, more on a busy machine
def test_promtool_rule_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_of_the_sample():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


@pytest.fixture(scope="module")
def alerts(tmp_path_factory) -> list[dict]:
    """The alerting rules as /api/v1/rules of a real Prometheus started with the sample
    prometheus.yml lists them: name, query (the expression as Prometheus parsed and
    printed it), labels, annotations."""
    directory = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    command = [
        PROMETHEUS, f"--config.file={RULES / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(directory / "prometheus.log", "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_listen(port, timeout=30, process=process)
        groups = rule_groups_once_ready(f"http://127.0.0.1:{port}", timeout=30)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return [rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"]


def rule_groups_once_ready(url: str, timeout: float) -> list[dict]:
    """/api/v1/rules answers 503 until Prometheus has loaded its configuration."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=5) as response:
                return json.load(response)["data"]["groups"]
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_prometheus_loads_every_alert_with_severity_and_runbook(alerts):
    assert {rule["name"] for rule in alerts} == ALERTS
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule
        assert f"docs/operations.md#{rule['name'].lower()}" in rule["annotations"]["runbook"], rule


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = (RULES / "alerts_test.yml").read_text()
    for name in ALERTS:
        assert f"- name: {name} fires" in tests, name
        assert f"- name: {name} stays quiet" in tests, name


# Reading PromQL as Prometheus prints it back: grouping clauses and selectors.
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RANGE_OR_OFFSET = re.compile(r"\[[^\]]*\]|\boffset\s+\w+")
SELECTOR = re.compile(r"(?P<name>[A-Za-z_:][\w:]*)\s*(?P<matchers>\{[^}]*\})?(?P<call>\s*\()?")
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
KEYWORDS = {"and", "or", "unless", "bool"}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, operator, value), ...]) of each series selector."""
    expr = RANGE_OR_OFFSET.sub("", GROUPING.sub("", expr))
    found = []
    for match in SELECTOR.finditer(expr):
        if match["call"] or match["name"] in KEYWORDS:
            continue  # a function or an aggregation, or an operator
        found.append((match["name"], MATCHER.findall(match["matchers"] or "")))
    return found


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}


def exported_series() -> dict[str, metrics.MetricInfo]:
    """Every series name mailproxy exposes (a histogram's _bucket, _count and _sum)."""
    names = {}
    for info in metrics.CATALOGUE:
        suffixes = ("_bucket", "_count", "_sum") if info.kind == "histogram" else ("",)
        names.update({info.name + suffix: info for suffix in suffixes})
    return names


def test_selectors_reads_promql():
    expr = ('sum without (stage) (rate(a_total{stage="connect",upstream=~"x|y"}[5m] offset 1d)) '
            '> 4 * b_count unless on (job) up == 1')
    assert selectors(expr) == [
        ("a_total", [("stage", "=", "connect"), ("upstream", "=~", "x|y")]), ("b_count", []), ("up", []),
    ]
    assert grouping_labels(expr) == {"stage", "job"}


def expression_problems(expr: str, exported: dict[str, metrics.MetricInfo]) -> list[str]:
    """What an alert expression names that mailproxy does not export: a metric, a label,
    a label value (a `=` or `=~` matcher's alternatives must be values the metric's help
    text names), or a label to group by that none of its metrics has."""
    problems = []
    labels_in_reach = set(TARGET_LABELS)
    for name, matchers in selectors(expr):
        if name in SCRAPE_SERIES:
            labels, help_text = SCRAPE_SERIES[name], ""
        elif name in exported:
            labels, help_text = set(exported[name].labels) | TARGET_LABELS, exported[name].help
        else:
            problems.append(f"{name} is not in metrics.CATALOGUE")
            continue
        labels_in_reach |= labels
        for label, operator, value in matchers:
            if label not in labels:
                problems.append(f"{name} has no label {label}")
            elif label not in TARGET_LABELS and operator in ("=", "=~"):
                problems += [
                    f'{name}{{{label}{operator}"{value}"}}: its help names no value {word}'
                    for word in value.split("|") if not re.search(rf"\b{re.escape(word)}\b", help_text)
                ]
    unknown = grouping_labels(expr) - labels_in_reach
    if unknown:
        problems.append(f"groups by {sorted(unknown)}, which none of its metrics has")
    return problems


def test_alert_expressions_use_only_exported_metrics_and_labels(alerts):
    exported = exported_series()
    problems = [(rule["name"], p) for rule in alerts if (p := expression_problems(rule["query"], exported))]
    assert problems == []
    # The reader found every metric the alerts are about.
    assert {name for rule in alerts for name, _ in selectors(rule["query"])} == {
        "up", "mailproxy_upstream_up", "mailproxy_upstream_failures_total",
        "mailproxy_upstream_connect_duration_seconds_count", "mailproxy_connections_total",
        "mailproxy_auth_attempts_total", "mailproxy_tls_certificate_expiry_timestamp_seconds",
        "mailproxy_messages_total", "mailproxy_plugin_errors_total", "mailproxy_state_errors_total",
    }
