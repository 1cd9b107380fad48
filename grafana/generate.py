"""mailproxy's Grafana dashboards, written as code with grafana-foundation-sdk.

    .venv/bin/python grafana/generate.py           # writes grafana/dashboards/*.json
    .venv/bin/python grafana/generate.py --check   # exit 1, naming the files that differ

The JSON is committed and must equal what this script writes: edit a panel here, never
in Grafana's JSON. Every query is written against the names in mailproxy/metrics.py;
`selector()` narrows a metric to the chosen instance, and to the chosen listener and
protocol where the metric has those labels, so no query filters on a label its metric
lacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueColorMode, BigValueGraphMode
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from mailproxy.metrics import CATALOGUE

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
# The datasource grafana/provisioning/datasources/mailproxy.yml creates; the
# `datasource` variable starts on it, and every panel queries the variable.
DATASOURCE_UID = "mailproxy-prometheus"
DATASOURCE_NAME = "mailproxy Prometheus"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

LABELS = {info.name: info.labels for info in CATALOGUE}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Narrowed by the variables of the same name, on the metrics that have the label.
NARROWING_LABELS = ("listener", "protocol")
REFUSAL_CLASSES = "4xx|5xx|err|no|bad"  # SMTP, POP3 and IMAP replies that refuse
WIDTH = 24  # Grafana's grid


# --- PromQL --------------------------------------------------------------------------------


def selector(series: str, *matchers: str) -> str:
    """`series{...}` narrowed to the dashboard's variables, plus `matchers`."""
    metric = series
    for suffix in HISTOGRAM_SERIES:
        if series.endswith(suffix) and series.removesuffix(suffix) in LABELS:
            metric = series.removesuffix(suffix)
    labels = LABELS[metric]  # a KeyError here: a name that is not in metrics.py
    narrowed = ['instance=~"$instance"', *(f'{label}=~"${label}"' for label in NARROWING_LABELS if label in labels)]
    return f"{series}{{{', '.join([*narrowed, *matchers])}}}"


def _sum(by: str, inner: str) -> str:
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def per_second(series: str, by: str, *matchers: str) -> str:
    return _sum(by, f"rate({selector(series, *matchers)}[$__rate_interval])")


def ratio(part: str, whole: str) -> str:
    return f"{part} / {whole}"


def quantile(q: float, histogram: str, by: str, *matchers: str) -> str:
    grouping = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, {per_second(histogram + '_bucket', grouping, *matchers)})"


# --- panels --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Section:
    """A row of the dashboard: its title and panels, laid out left to right."""

    title: str
    panels: tuple


def _targets(panel, queries: list[Query], instant: bool = False, fmt: PromQueryFormat | None = None):
    for ref_id, query in zip("ABCDEFGH", queries):
        target = prometheus.Dataquery().ref_id(ref_id).expr(query.expr).legend_format(query.legend or "__auto")
        if instant:
            target = target.instant()
        if fmt is not None:
            target = target.format(fmt)
        panel = panel.with_target(target)
    return panel


def graph(title: str, description: str, unit: str, *queries: Query, width: int = 12):
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).height(8).span(width))
    return _targets(panel, list(queries))


def single_stat(title: str, description: str, unit: str, *queries: Query, width: int = 6):
    panel = (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .height(5).span(width).graph_mode(BigValueGraphMode.AREA).color_mode(BigValueColorMode.VALUE)
             .reduce_options(common.ReduceDataOptions().values(False).calcs(["lastNotNull"])))
    return _targets(panel, list(queries))


def histogram_heatmap(title: str, description: str, histogram: str, unit: str, width: int = 12):
    """Observations per bucket of `histogram`, as Prometheus keeps them (no recalculation)."""
    expr = _sum("le", f"increase({selector(histogram + '_bucket')}[$__rate_interval])")
    panel = (heatmap.Panel().title(title).description(description).datasource(DATASOURCE)
             .height(8).span(width).calculate(False).unit(unit))
    return _targets(panel, [Query(expr, "{{le}}")], fmt=PromQueryFormat.HEATMAP)


def label_table(title: str, description: str, expr: str, width: int = 12, height: int = 5,
                show_value: bool = True):
    """One row per series of an instant query, its labels as columns."""
    hidden = {"Time": True} if show_value else {"Time": True, "Value": True}
    hide = DataTransformerConfig(id_val="organize", options={"excludeByName": hidden})
    panel = (table.Panel().title(title).description(description).datasource(DATASOURCE)
             .height(height).span(width).with_transformation(hide))
    return _targets(panel, [Query(expr)], instant=True, fmt=PromQueryFormat.TABLE)


# --- variables -----------------------------------------------------------------------------


def query_variable(name: str, label: str, query: str, all_value: str | None = ".*"):
    """A multi-value variable with All; `all_value` None makes All the list of its values."""
    variable = (dashboard.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
                .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
                .multi(True).include_all(True)
                .current(VariableOption(selected=True, text="All", value="$__all")))
    return variable.all_value(all_value) if all_value is not None else variable


def variables(protocols: str = "") -> list:
    """datasource, instance, protocol and listener. `protocols` (a regex) limits the
    protocol choices; All then stands for the protocols and listeners found, not `.*`."""
    all_value = None if protocols else ".*"
    datasource = (dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
                  .current(VariableOption(selected=True, text=DATASOURCE_NAME, value=DATASOURCE_UID)))
    only = f', protocol=~"{protocols}"' if protocols else ""
    return [
        datasource,
        query_variable("instance", "Instance", "label_values(mailproxy_build_info, instance)"),
        query_variable("protocol", "Protocol",
                       f'label_values(mailproxy_connections_total{{instance=~"$instance"{only}}}, protocol)',
                       all_value),
        query_variable("listener", "Listener",
                       'label_values(mailproxy_connections_total{instance=~"$instance", protocol=~"$protocol"}, '
                       "listener)", all_value),
    ]


# --- dashboards ----------------------------------------------------------------------------


def build(uid: str, title: str, description: str, variable_list: list, sections: list[Section]):
    board = (dashboard.Dashboard(title).uid(uid).description(description).tags(["mailproxy"])
             .time("now-1h", "now").refresh("30s").timezone("browser").editable())
    for variable in variable_list:
        board = board.with_variable(variable)
    panel_id = 0
    for section in sections:
        panel_id += 1
        board = board.with_row(dashboard.Row(section.title).id(panel_id))
        for panel in section.panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return board.build()


def overview():
    traffic = Section("Traffic", (
        graph("Connections", "Client connections accepted per second.", "cps",
              Query(per_second("mailproxy_connections_total", "protocol, listener"), "{{protocol}} {{listener}}"),
              width=8),
        graph("Messages by outcome", "Messages at end-of-data per second: delivered, rejected, tempfailed, "
              "unknown (the upstream never answered the end of the message).", "cps",
              Query(per_second("mailproxy_messages_total", "outcome"), "{{outcome}}"), width=8),
        graph("Sessions open", "Client sessions open now, per protocol.", "short",
              Query(_sum("protocol", selector("mailproxy_sessions_active")), "{{protocol}}"), width=8),
    ))
    rejects = Section("Rejects", (
        graph("Refusals sent", "4xx/5xx (SMTP), -ERR (POP3), NO/BAD (IMAP) replies per second, "
              "whether the upstream or mailproxy wrote them.", "cps",
              Query(per_second("mailproxy_replies_total", "protocol, class", f'class=~"{REFUSAL_CLASSES}"'),
                    "{{protocol}} {{class}}"), width=8),
        graph("Plugin refusals", "Verdicts that refused a command, by plugin and action.", "cps",
              Query(per_second("mailproxy_verdicts_total", "plugin, action", 'action=~"reject|tempfail|disconnect"'),
                    "{{plugin}} {{action}}"), width=8),
        graph("Connections turned away", "Connections refused by an admission limit: per_client (too many "
              "from one address) or total (the listener is full).", "cps",
              Query(per_second("mailproxy_connections_refused_total", "listener, reason"), "{{listener}} {{reason}}"),
              width=8),
    ))
    auth = Section("Authentication", (
        graph("Login attempts by result", "SMTP AUTH, POP3 and IMAP logins per second; anything but success "
              "is a failure (failure: wrong credentials, throttled: a delayed refusal without a check).", "cps",
              Query(per_second("mailproxy_auth_attempts_total", "protocol, result"), "{{protocol}} {{result}}"),
              width=WIDTH),
    ))
    upstreams = Section("Upstreams", (
        single_stat("Upstreams reachable", "Yes when the last readiness probe of every instance reached "
                    "the upstream.", "bool_yes_no",
                    Query(f'min by (upstream) ({selector("mailproxy_upstream_up")})', "{{upstream}}"),
                    width=8),
        graph("Upstream failures by stage", "Upstream connections that failed: connect, greeting, tls, "
              "timeout, lost.", "cps",
              Query(per_second("mailproxy_upstream_failures_total", "upstream, stage"), "{{upstream}} {{stage}}"),
              width=16),
        graph("Upstream round trip", "One command to the upstream until its complete reply.", "s",
              Query(quantile(0.5, "mailproxy_upstream_duration_seconds", "upstream"), "p50 {{upstream}}"),
              Query(quantile(0.99, "mailproxy_upstream_duration_seconds", "upstream"), "p99 {{upstream}}")),
        graph("Upstream connect time", "Opening an upstream session: TCP and, for implicit TLS, the handshake.",
              "s",
              Query(quantile(0.5, "mailproxy_upstream_connect_duration_seconds", "upstream"), "p50 {{upstream}}"),
              Query(quantile(0.99, "mailproxy_upstream_connect_duration_seconds", "upstream"), "p99 {{upstream}}")),
    ))
    filtering = Section("Filtering", (
        graph("Plugin latency (p99)", "99th percentile of the time one hook call of a plugin takes.", "s",
              Query(quantile(0.99, "mailproxy_plugin_duration_seconds", "plugin"), "{{plugin}}")),
        histogram_heatmap("Spam score distribution", "Final scores of the messages that reached the action "
                          "stage.", "mailproxy_spam_score", "none"),
    ))
    tls = Section("TLS", (
        graph("TLS handshakes by version", "Handshakes with clients per second, by the version agreed (none: "
              "the handshake failed).", "cps",
              Query(per_second("mailproxy_tls_handshakes_total", "version, result"), "{{version}} {{result}}")),
        single_stat("Sessions with TLS", "Successful TLS handshakes (STARTTLS or implicit) per connection "
                    "accepted.", "percentunit",
                    Query(ratio(per_second("mailproxy_tls_handshakes_total", "", 'result="success"'),
                                per_second("mailproxy_connections_total", "")), "TLS")),
        single_stat("Certificate expires in", "Time until the certificate each listener presents expires.",
                    "dtdurations",
                    Query(f'min by (listener) ({selector("mailproxy_tls_certificate_expiry_timestamp_seconds")})'
                          " - time()", "{{listener}}")),
    ))
    build_info = Section("Build", (
        label_table("Version", "The mailproxy and Python versions each instance runs.",
                    f'max by (instance, version, python) ({selector("mailproxy_build_info")})', width=WIDTH,
                    show_value=False),
    ))
    return build(
        "mailproxy-overview", "mailproxy / Overview",
        "Traffic, refusals, logins, upstream health and latency, plugins, TLS and versions of mailproxy.",
        variables(), [traffic, rejects, auth, upstreams, filtering, tls, build_info],
    )


def mailstores():
    store_upstream = 'upstream=~"$upstream"'
    sessions = Section("Sessions", (
        graph("Sessions open", "POP3 and IMAP sessions open now.", "short",
              Query(_sum("protocol, listener", selector("mailproxy_sessions_active")), "{{protocol}} {{listener}}")),
        graph("Connections", "Connections accepted per second.", "cps",
              Query(per_second("mailproxy_connections_total", "protocol, listener"), "{{protocol}} {{listener}}")),
    ))
    logins = Section("Logins", (
        graph("Logins by result and mechanism", "USER/PASS, AUTH and LOGIN attempts per second, by result.",
              "cps",
              Query(per_second("mailproxy_auth_attempts_total", "protocol, mechanism, result"),
                    "{{protocol}} {{mechanism}} {{result}}"), width=WIDTH),
    ))
    commands = Section("Commands", (
        graph("Commands by verb", "Client commands per second (verbs outside the known set count as OTHER).",
              "cps", Query(per_second("mailproxy_commands_total", "protocol, verb"), "{{protocol}} {{verb}}")),
        graph("Replies by class", "Replies per second: POP3 ok/err, IMAP ok/no/bad/bye; origin upstream "
              "(relayed) or proxy (mailproxy's or a plugin's own).", "cps",
              Query(per_second("mailproxy_replies_total", "protocol, class, origin"),
                    "{{protocol}} {{class}} {{origin}}")),
    ))
    relay = Section("Relay", (
        graph("Relayed bytes", "Bytes relayed after the login: to_upstream (commands, uploads), to_client "
              "(responses, downloads).", "Bps",
              Query(per_second("mailproxy_relayed_bytes_total", "protocol, direction"), "{{protocol}} {{direction}}")),
        graph("Upstream latency by command (p99)", "99th percentile of one command's round trip to the "
              "chosen upstreams.", "s",
              Query(quantile(0.99, "mailproxy_upstream_duration_seconds", "upstream, command", store_upstream),
                    "{{upstream}} {{command}}")),
    ))
    upstream = query_variable("upstream", "Upstream",
                              'label_values(mailproxy_upstream_duration_seconds_count{instance=~"$instance"}, upstream)',
                              all_value=None)
    return build(
        "mailproxy-mailstores", "mailproxy / Mail stores",
        "POP3 and IMAP through mailproxy: sessions, logins, commands, replies, relayed bytes, upstream latency.",
        [*variables(protocols="pop3|imap"), upstream], [sessions, logins, commands, relay],
    )


def filtering():
    verdicts = Section("Verdicts", (
        graph("Verdicts by plugin, action and enforcement", "Plugin verdicts other than continue; "
              "enforced=false: the plugin is in observe mode and its verdict was not applied.", "cps",
              Query(per_second("mailproxy_verdicts_total", "plugin, action, enforced"),
                    "{{plugin}} {{action}} enforced={{enforced}}")),
        graph("Observe mode verdicts", "What plugins in observe mode would have done.", "cps",
              Query(per_second("mailproxy_verdicts_total", "plugin, action", 'enforced="false"'),
                    "{{plugin}} {{action}}")),
        label_table("Top symbols", "The ten symbols named most often over the dashboard's time range.",
                    "topk(10, " + _sum("plugin, symbol, enforced",
                                       f'increase({selector("mailproxy_symbols_total")}[$__range])') + ")", height=8),
        graph("Refusals written by mailproxy", "Refusing replies that mailproxy or a plugin wrote (not relayed "
              "from the upstream).", "cps",
              Query(per_second("mailproxy_replies_total", "protocol, class",
                               f'class=~"{REFUSAL_CLASSES}"', 'origin="proxy"'), "{{protocol}} {{class}}")),
    ))
    plugins = Section("Plugins", (
        graph("Plugin latency (p99)", "99th percentile of one hook call, by plugin and hook.", "s",
              Query(quantile(0.99, "mailproxy_plugin_duration_seconds", "plugin, hook"), "{{plugin}} {{hook}}")),
        graph("Plugin errors and timeouts", "Hook calls that raised (exception), ran past their timeout "
              "(timeout) or answered something that is no verdict; the plugin's fail_mode applied.", "cps",
              Query(per_second("mailproxy_plugin_errors_total", "plugin, hook, kind"), "{{plugin}} {{hook}} {{kind}}")),
        graph("Check results", "Results of the shipped checks (spf, dnsbl, helo, greylist, ratelimit).", "cps",
              Query(per_second("mailproxy_plugin_checks_total", "plugin, check, result"),
                    "{{plugin}} {{check}} {{result}}")),
        graph("Check latency (p99)", "99th percentile of one check's wait: an SPF evaluation, a DNS query, a round trip to Redis.", "s",
              Query(quantile(0.99, "mailproxy_plugin_check_duration_seconds", "plugin, check"),
                    "{{plugin}} {{check}}")),
    ))
    dns_and_state = Section("DNS and shared state", (
        graph("DNS query latency", "Queries sent (cache answers are not queries), by record type.", "s",
              Query(quantile(0.5, "mailproxy_dns_query_duration_seconds", "type"), "p50 {{type}}"),
              Query(quantile(0.99, "mailproxy_dns_query_duration_seconds", "type"), "p99 {{type}}"), width=8),
        graph("DNS results", "Queries per second by record type and result (answer, nxdomain, nodata, error).",
              "cps", Query(per_second("mailproxy_dns_query_duration_seconds_count", "type, result"),
                           "{{type}} {{result}}"), width=8),
        single_stat("DNS cache hit ratio", "Lookups of the checks' DNS cache answered from it.", "percentunit",
                    Query(ratio(per_second("mailproxy_dns_cache_lookups_total", "", 'result="hit"'),
                                per_second("mailproxy_dns_cache_lookups_total", "")), "hits"), width=8),
        graph("Shared-state errors", "Operations on the shared state (Redis) that failed; each caller's fail "
              "mode applied.", "cps",
              Query(per_second("mailproxy_state_errors_total", "backend, operation"), "{{backend}} {{operation}}"),
              width=WIDTH),
    ))
    score = Section("Spam score", (
        graph("Spam score quantiles", "The final score of the messages that reached the action stage.", "none",
              *(Query(quantile(q, "mailproxy_spam_score", ""), f"p{round(q * 100)}") for q in (0.5, 0.9, 0.99))),
        histogram_heatmap("Spam score distribution", "Messages per score bucket.", "mailproxy_spam_score", "none"),
    ))
    return build(
        "mailproxy-filtering", "mailproxy / Filtering",
        "What the plugins decide and what it costs: verdicts, symbols, checks, errors, DNS, shared state, scores.",
        variables(), [verdicts, plugins, dns_and_state, score],
    )


DASHBOARDS = {"overview.json": overview, "mailstores.json": mailstores, "filtering.json": filtering}


def render() -> dict[str, str]:
    """File name -> the dashboard's JSON text, byte for byte as committed."""
    return {
        name: json.dumps(make(), cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        for name, make in DASHBOARDS.items()
    }


def stale(directory: Path) -> list[str]:
    """The dashboards in `directory` that are missing or differ from what render() gives."""
    return [name for name, text in render().items()
            if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a dashboard is stale")
    parser.add_argument("--dir", type=Path, default=DASHBOARDS_DIR, help="where the dashboards are")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.dir)
        for name in names:
            print(f"{args.dir / name}: stale; run grafana/generate.py", file=sys.stderr)
        return 1 if names else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.dir / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
