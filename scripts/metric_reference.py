"""The metric reference in docs/operations.md, generated from mailproxy/metrics.py.

    python scripts/metric_reference.py            # rewrite the section
    python scripts/metric_reference.py --check    # exit 1 if the section is stale

Every metric in `metrics.CATALOGUE` is listed under one area, in the areas' order
below and, within an area, in the order metrics.py defines them. The section lies
between the two marker comments; the rest of the page is written by hand.

Exit status: 0 when the section is (now) current, 1 when `--check` finds it stale,
2 when it cannot be generated (a metric in no area or in two, markers missing).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Render the catalogue of the tree this script is in, not of whichever mailproxy the
# interpreter happens to have installed.
sys.path.insert(0, str(ROOT))

from mailproxy import metrics  # noqa: E402
from mailproxy.metrics import MetricInfo  # noqa: E402

DOC = ROOT / "docs" / "operations.md"
BEGIN = "<!-- metric-reference:begin -->"
END = "<!-- metric-reference:end -->"

# (area, name prefixes). A metric belongs to the one area whose prefix it starts with:
# a new metric that fits none (or two) stops the generator instead of going missing.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Connections and sessions", ("mailproxy_connections_", "mailproxy_sessions_")),
    ("TLS", ("mailproxy_tls_",)),
    ("Commands and replies", ("mailproxy_commands_", "mailproxy_replies_", "mailproxy_relayed_bytes_")),
    ("Authentication", ("mailproxy_auth_",)),
    ("Upstreams", ("mailproxy_upstream_",)),
    ("Messages", ("mailproxy_messages_", "mailproxy_message_size_", "mailproxy_spam_score")),
    ("Plugins and checks", ("mailproxy_verdicts_", "mailproxy_symbols_", "mailproxy_plugin_")),
    ("DNS", ("mailproxy_dns_",)),
    ("Shared state", ("mailproxy_state_",)),
    ("Build", ("mailproxy_build_",)),
)

DOCUMENTED_NAME = re.compile(r"^\| `(mailproxy_\w+)` \|", re.MULTILINE)


class ReferenceProblem(Exception):
    """The reference cannot be generated or placed; the message says why."""


def area_of(metric: MetricInfo) -> str:
    areas = [area for area, prefixes in AREAS if metric.name.startswith(prefixes)]
    if len(areas) != 1:
        where = "no area" if not areas else f"{len(areas)} areas ({', '.join(areas)})"
        raise ReferenceProblem(
            f"{metric.name}: in {where}; give it exactly one in AREAS of scripts/metric_reference.py"
        )
    return areas[0]


def grouped(catalogue: list[MetricInfo]) -> list[tuple[str, list[MetricInfo]]]:
    members: dict[str, list[MetricInfo]] = {area: [] for area, _ in AREAS}
    for metric in catalogue:
        members[area_of(metric)].append(metric)
    return [(area, found) for area, found in members.items() if found]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(catalogue: list[MetricInfo]) -> str:
    """The section between the markers: one table per area."""
    out = ["", "Generated from `mailproxy/metrics.py` by `scripts/metric_reference.py`; edit those, not this section.", ""]
    for area, found in grouped(catalogue):
        out += [f"### {area}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for metric in found:
            labels = ", ".join(f"`{label}`" for label in metric.labels) or "none"
            out.append(f"| `{metric.name}` | {metric.kind} | {labels} | {_cell(metric.help)} |")
        out.append("")
    return "\n".join(out)


def _parts(document: str) -> tuple[str, str, str]:
    if document.count(BEGIN) != 1 or document.count(END) != 1 or document.index(BEGIN) > document.index(END):
        raise ReferenceProblem(f"the page needs one {BEGIN} line and, after it, one {END} line")
    head, rest = document.split(BEGIN)
    section, tail = rest.split(END)
    return head, section, tail


def splice(document: str, section: str) -> str:
    head, _, tail = _parts(document)
    return f"{head}{BEGIN}\n{section}{END}{tail}"


def stale(document: str, catalogue: list[MetricInfo]) -> str | None:
    """None when the page holds the reference `catalogue` generates; otherwise why not."""
    if splice(document, render(catalogue)) == document:
        return None
    documented = set(DOCUMENTED_NAME.findall(_parts(document)[1]))
    defined = {metric.name for metric in catalogue}
    problems = [
        f"{label}: {', '.join(sorted(names))}"
        for label, names in (("not documented", defined - documented), ("no longer defined", documented - defined))
        if names
    ]
    return "; ".join(problems) or "types, labels, help or order differ from metrics.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if the section is stale")
    parser.add_argument("--doc", type=Path, default=DOC, help=f"the page (default: {DOC.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    document = args.doc.read_text(encoding="utf-8")
    try:
        problem = stale(document, metrics.CATALOGUE)
        if problem is not None and not args.check:
            args.doc.write_text(splice(document, render(metrics.CATALOGUE)), encoding="utf-8")
            print(f"{args.doc}: metric reference rewritten ({problem})")
    except ReferenceProblem as exc:
        print(f"{args.doc}: {exc}", file=sys.stderr)
        return 2
    if problem is not None and args.check:
        print(
            f"{args.doc}: the metric reference is stale ({problem}); run python scripts/metric_reference.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
