"""Mutation testing of the modules where a bug loses mail or opens a hole (`make mutate`).

Cosmic Ray makes the mutants; this script chooses which of them to run, runs each
module's own tests against them in a scratch copy of the tree, keeps to a time budget,
and writes a report of the survivors that `tests/mutation/equivalent.toml` does not
explain.

Each mutant is written into the module's file in the scratch copy, and the module's
test command runs there. The integration tests start `python -m mailproxy.cli run`
from the test's working directory, so the proxy process imports the mutated module
too: a mutant is killed by what a real client sees, not only by the unit tests.

    python scripts/mutate.py [--module PATH ...] [--timeout S] [--budget S]
                             [--survivors-only | --resume]

`--survivors-only` runs again only the mutants that survived the last run of each
module (kept in var/mutation/), to check new tests quickly. `--resume` runs the mutants
that the last run of each module left unrun (its budget ran out, or it was stopped), and
counts the others as they came out. For both, the module must not have changed since.

Exit status: 0 when every survivor is explained, 1 when some are not (or a module's
tests fail before any mutation), 2 when the budget ran out first.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cosmic_ray.commands import init as make_work_items
from cosmic_ray.mutating import mutate_and_test
from cosmic_ray.testing import run_tests
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests/mutation/modules.toml"
EQUIVALENTS = ROOT / "tests/mutation/equivalent.toml"
# What each module's runs found, mutant by mutant, kept with the code: a run on a new
# machine goes on where one elsewhere stopped (--resume, --survivors-only).
RECORDS = ROOT / "tests/mutation/results"
OUTPUT = ROOT / "var/mutation"
SCRATCH = OUTPUT / "tree"
PLUGIN_PATH = "_plugin_path"  # in the scratch tree: see make_scratch_tree
# Not copied into the scratch tree: history, the environment, caches and earlier runs.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "var", "__pycache__", ".hypothesis",
                                    ".pytest_cache", "*.egg-info")
TIMEOUT_OUTPUT = "timeout"  # what Cosmic Ray records as the output of a timed-out run
BASELINE_FACTOR = 3  # per-mutant timeout: at least this many times the unmutated run


@dataclass
class Target:
    path: str
    tests: list[str]
    functions: list[str] = field(default_factory=list)


@dataclass
class Survivor:
    function: str
    operator: str
    line: str
    mutant: str
    previous: str  # the line before `line`, which tells apart lines such as `continue`
    diff: str
    why: str | None = None  # the reason it is equivalent, when the file gives one
    explained_by: tuple | None = None  # the key of that entry

    def keys(self, module: str) -> list[tuple[str, str, str, str, str]]:
        """The keys an entry of the equivalents file may have for it: with `after`, and without."""
        return [(module, self.function, self.line, self.mutant, self.previous),
                (module, self.function, self.line, self.mutant, "")]


@dataclass
class Outcome:
    module: str
    counts: Counter = field(default_factory=Counter)
    survivors: list[Survivor] = field(default_factory=list)
    baseline_failed: str | None = None


def load_config(path: Path) -> tuple[dict, list[Target]]:
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    targets = [Target(**entry) for entry in data["module"]]
    return data["settings"], targets


def load_equivalents(path: Path) -> dict[tuple[str, str, str, str, str], str]:
    with path.open("rb") as handle:
        entries = tomllib.load(handle).get("equivalent", [])
    return {(e["module"], e["function"], e["line"], e["mutant"], e.get("after", "")): e["why"]
            for e in entries}


def make_scratch_tree() -> None:
    if SCRATCH.exists():
        shutil.rmtree(SCRATCH)
    shutil.copytree(ROOT, SCRATCH, ignore=NOT_COPIED, symlinks=True)
    # The shipped plugins are the package `mailproxy_plugins`, which the editable
    # install finds in the working tree's plugins/. A directory on PYTHONPATH that maps
    # the name to the copy's plugins/ comes first, for the tests and for the proxies
    # they start alike, so a mutated plugin is the one that runs.
    (SCRATCH / PLUGIN_PATH).mkdir()
    (SCRATCH / PLUGIN_PATH / "mailproxy_plugins").symlink_to("../plugins")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRATCH / PLUGIN_PATH),
                                                             os.environ.get("PYTHONPATH")]))


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations are. With `from __future__ import annotations` they are
    never evaluated, so a mutant inside one can only survive."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations.append(node.returns)
        elif isinstance(node, ast.arg):
            annotations.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for a in filter(None, annotations):
            spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def skip_reason(mutation, spans, skip_operators: list[re.Pattern], functions: list[str]) -> str | None:
    if any(start <= tuple(mutation.start_pos) < end for start, end in spans):
        return "inside a type annotation"
    name = mutation.operator_name
    if any(pattern.search(name) for pattern in skip_operators):
        return "operator skipped by modules.toml"
    if functions and mutation.definition_name not in functions:
        return "outside the functions chosen in modules.toml"
    return None


def changed_lines(diff: str) -> tuple[str, str, str]:
    """The original and the mutated source lines of a one-mutation diff, and the last
    non-blank line before them, stripped."""
    removed, added, previous = [], [], ""
    for line in diff.splitlines():
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:].strip())
        elif line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:].strip())
        elif line.startswith(" ") and line.strip() and not removed:
            previous = line.strip()
    return " / ".join(removed), " / ".join(added), previous


def test_command(settings: dict, target: Target) -> str:
    return shlex.join([sys.executable, "-m", "pytest", *settings["pytest-args"], *target.tests])


def run_module(target: Target, settings: dict, timeout: float, deadline: float,
               equivalents: dict, mode: str) -> Outcome:
    """Run one module's mutants; `mode` is "full", "survivors" or "resume"."""
    outcome = Outcome(target.path)
    command = test_command(settings, target)
    print(f"\n== {target.path}: {command}", flush=True)
    started = time.monotonic()
    tests_ok, output = run_tests(command, timeout * 3)
    if tests_ok != TestOutcome.SURVIVED:  # "survived" = the tests passed
        outcome.baseline_failed = output
        print(f"   the tests fail before any mutation; skipping {target.path}", flush=True)
        return outcome
    # A mutant's run that takes longer than the unmutated one only because the machine
    # is busy must not count as a hang: the timeout is at least three such runs.
    unmutated = time.monotonic() - started
    if unmutated * BASELINE_FACTOR > timeout:
        timeout = unmutated * BASELINE_FACTOR
        print(f"   the unmutated tests took {unmutated:.0f} s: per-mutant timeout {timeout:.0f} s", flush=True)

    name = target.path.replace("/", ".")
    database = OUTPUT / (name + ".sqlite")
    fingerprint = database.with_suffix(".source-sha256")
    source_hash = hashlib.sha256(Path(target.path).read_bytes()).hexdigest()
    record = Record(RECORDS / (name + ".json"), source_hash)
    here = database.exists() and fingerprint.exists() and fingerprint.read_text() == source_hash
    fresh = mode == "full" or not here  # a new database, from the record (none for a full run)
    if fresh:
        if mode != "full" and not record.results:
            print(f"   no run of {target.path} as it is now, here or in {record.path.relative_to(ROOT)}; "
                  "run it in full first", flush=True)
            return outcome
        database.unlink(missing_ok=True)
        fingerprint.write_text(source_hash)
        if mode == "full":
            record.results.clear()
            record.save()
    with use_db(str(database), mode=WorkDB.Mode.create) as db:
        if fresh:
            populate(db, target, settings)
            restored = record.restore(db)
            if restored:
                print(f"   {restored} results taken from {record.path.relative_to(ROOT)}", flush=True)
        else:
            record.absorb(db)
        pending = reopen(db, outcome, equivalents, survivors=mode == "survivors")
        print(f"   {len(pending)} mutants to run ({outcome.counts['skipped']} filtered out)", flush=True)
        for done, (item, earlier_diff) in enumerate(pending, 1):
            if time.monotonic() + timeout > deadline:
                outcome.counts["not run (budget)"] += 1
                continue
            result = mutate_and_test(item.mutations, command, timeout)
            if earlier_diff is not None and result.diff != earlier_diff:
                sys.exit(f"{target.path} changed since its last run: run it in full")
            db.set_result(item.job_id, result)
            record.add(item.mutations[0], result)
            count(outcome, item.mutations[0], result, equivalents)
            if done % 25 == 0 or done == len(pending):
                print(f"   {done}/{len(pending)} {dict(outcome.counts)}", flush=True)
    return outcome


def populate(db: WorkDB, target: Target, settings: dict) -> None:
    """Every mutant of the module as a work item; those filtered out marked so."""
    skip_operators = [re.compile(p) for p in settings.get("skip-operators", [])]
    spans = annotation_spans(Path(target.path).read_text())
    make_work_items([Path(target.path)], db, {})
    for item in list(db.pending_work_items):
        reason = skip_reason(item.mutations[0], spans, skip_operators, target.functions)
        if reason:
            db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason))


class Record:
    """A module's results by mutant (operator and occurrence, the same on every machine
    for the same source), in a JSON file beside the equivalents. Survivors keep their
    diff for the report. A record of another version of the module is empty."""

    def __init__(self, path: Path, source_hash: str) -> None:
        self.path = path
        self.source_hash = source_hash
        self.results: dict[str, dict] = {}
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("source_sha256") == source_hash:
                self.results = data["results"]

    @staticmethod
    def key(mutation) -> str:
        return f"{mutation.operator_name}#{mutation.occurrence}"

    def add(self, mutation, result: WorkResult) -> None:
        self.results[self.key(mutation)] = self._entry(result)
        self.save()

    def absorb(self, db: WorkDB) -> None:
        """Take in the results of this machine's runs (a run from before the record)."""
        for item, result in db.completed_work_items:
            if result.worker_outcome != WorkerOutcome.SKIPPED:
                self.results[self.key(item.mutations[0])] = self._entry(result)
        self.save()

    @staticmethod
    def _entry(result: WorkResult) -> dict:
        entry = {"worker": result.worker_outcome.value,
                 "test": result.test_outcome.value if result.test_outcome else None}
        if result.output == TIMEOUT_OUTPUT:
            entry["output"] = TIMEOUT_OUTPUT
        if result.test_outcome == TestOutcome.SURVIVED:
            entry["diff"] = result.diff
        return entry

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"source_sha256": self.source_hash, "results": dict(sorted(self.results.items()))}
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(data, indent=1) + "\n")
        scratch.replace(self.path)

    def restore(self, db: WorkDB) -> int:
        """Mark the pending work items this record has a result for; how many."""
        restored = 0
        for item in list(db.pending_work_items):
            entry = self.results.get(self.key(item.mutations[0]))
            if entry is None:
                continue
            test = TestOutcome(entry["test"]) if entry["test"] else None
            db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome(entry["worker"]),
                                                  output=entry.get("output"), test_outcome=test,
                                                  diff=entry.get("diff")))
            restored += 1
        return restored


def reopen(db: WorkDB, outcome: Outcome, equivalents: dict, survivors: bool) -> list:
    """What to run now: the survivors of the last run, with the diff each had then
    (`survivors`), or the mutants it left unrun; every other result counts as it was."""
    pending = []
    for item, result in db.completed_work_items:
        if survivors and result.test_outcome == TestOutcome.SURVIVED:
            pending.append((item, result.diff))
        elif result.worker_outcome == WorkerOutcome.SKIPPED:
            outcome.counts["skipped"] += 1
        else:
            count(outcome, item.mutations[0], result, equivalents)
    unrun = list(db.pending_work_items)
    if not survivors:
        return [(item, None) for item in unrun]
    outcome.counts["not run (budget)"] += len(unrun)
    return pending


def count(outcome: Outcome, mutation, result: WorkResult, equivalents: dict) -> None:
    if result.test_outcome in (None, TestOutcome.INCOMPETENT):  # the mutant could not be made
        outcome.counts["incompetent"] += 1
    elif result.test_outcome == TestOutcome.KILLED:
        outcome.counts["timeout" if result.output == TIMEOUT_OUTPUT else "killed"] += 1
    else:
        line, mutant, previous = changed_lines(result.diff)
        survivor = Survivor(mutation.definition_name or "<module>", mutation.operator_name,
                            line, mutant, previous, result.diff)
        for key in survivor.keys(outcome.module):
            if key in equivalents:
                survivor.why, survivor.explained_by = equivalents[key], key
                break
        outcome.counts["equivalent" if survivor.why else "survived"] += 1
        outcome.survivors.append(survivor)


def equivalent_line(module: str, survivor: Survivor) -> str:
    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return (f"{{ module = {q(module)}, function = {q(survivor.function)}, line = {q(survivor.line)}, "
            f"mutant = {q(survivor.mutant)}, after = {q(survivor.previous)}, why = \"...\" }},")


def write_report(outcomes: list[Outcome], path: Path) -> None:
    lines = ["# Surviving mutants", "",
             "Kill each with a test, or, if no test can tell it from the original, add the",
             "line under it to tests/mutation/equivalent.toml with the reason.", ""]
    for outcome in outcomes:
        lines += [f"## {outcome.module}", "", f"counts: {dict(outcome.counts)}", ""]
        if outcome.baseline_failed:
            lines += ["The tests failed before any mutation:", "```", outcome.baseline_failed[-3000:], "```", ""]
        for s in outcome.survivors:
            if s.why:
                continue
            lines += [f"### {s.function}: {s.operator}", "```diff", s.diff.strip(), "```",
                      equivalent_line(outcome.module, s), ""]
        explained = [s for s in outcome.survivors if s.why]
        if explained:
            lines += ["Explained as equivalent:", ""]
            lines += [f"- {s.function}: `{s.line}` -> `{s.mutant}`: {s.why}" for s in explained]
            lines.append("")
    path.write_text("\n".join(lines))


def print_summary(outcomes: list[Outcome], equivalents: dict) -> None:
    # "tool error": Cosmic Ray could not make that mutant (it raised while mutating).
    columns = {"killed": "killed", "timeout": "timeout", "survived": "survived",
               "equivalent": "equivalent", "tool error": "incompetent",
               "over budget": "not run (budget)", "filtered out": "skipped"}
    print("\n" + f"{'module':34}" + "".join(f"{c:>13}" for c in columns))
    for o in outcomes:
        status = "  (tests fail unmutated)" if o.baseline_failed else ""
        print(f"{o.module:34}" + "".join(f"{o.counts[k]:>13}" for k in columns.values()) + status)
    # An entry that no longer matches a survivor is stale: the code moved or a test now
    # kills it. Only a run that finished a module can say so.
    seen = {s.explained_by for o in outcomes for s in o.survivors}
    finished = {o.module for o in outcomes if not o.counts["not run (budget)"] and not o.baseline_failed}
    for key in equivalents:
        if key[0] in finished and key not in seen:
            print(f"stale entry in {EQUIVALENTS.relative_to(ROOT)}: {key}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="only this module (repeatable)")
    parser.add_argument("--timeout", type=float, help="seconds for one mutant's tests")
    parser.add_argument("--budget", type=float, help="seconds for the whole run")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--survivors-only", action="store_true",
                       help="run again only the mutants that survived the last run")
    modes.add_argument("--resume", action="store_true",
                       help="run the mutants the last run left unrun")
    args = parser.parse_args()
    mode = "survivors" if args.survivors_only else "resume" if args.resume else "full"

    settings, targets = load_config(CONFIG)
    if args.module:
        unknown = set(args.module) - {t.path for t in targets}
        if unknown:
            parser.error(f"not in {CONFIG.relative_to(ROOT)}: {', '.join(sorted(unknown))}")
        targets = [t for t in targets if t.path in args.module]
    timeout = args.timeout or float(settings["timeout"])
    budget = args.budget or float(settings["budget"])
    equivalents = load_equivalents(EQUIVALENTS)

    OUTPUT.mkdir(parents=True, exist_ok=True)
    make_scratch_tree()
    print(f"mutating a copy of the tree in {SCRATCH.relative_to(ROOT)}; "
          f"per-mutant timeout {timeout:.0f} s, overall budget {budget:.0f} s", flush=True)
    os.chdir(SCRATCH)  # module paths and test commands are relative to the copy
    deadline = time.monotonic() + budget
    outcomes = [run_module(t, settings, timeout, deadline, equivalents, mode) for t in targets]

    report = OUTPUT / "survivors.md"
    write_report(outcomes, report)
    print_summary(outcomes, equivalents)
    print(f"report: {report.relative_to(ROOT)}")
    if any(o.counts["not run (budget)"] for o in outcomes):
        print("the budget ran out before every mutant was run")
        return 2
    unexplained = any(o.counts["survived"] or o.baseline_failed for o in outcomes)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
