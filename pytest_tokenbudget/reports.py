"""Session results as files CI reads: a versioned JSON document, a Markdown summary, GitHub's step summary.

The JSON document is deterministic: tests keyed and sorted by node id, keys sorted, 2-space indent, and every
figure that depends on when or how the session ran (start time, duration, xdist workers) under the one
top-level key ``timing``, so a serial run and a ``-n 2`` run give the same bytes once ``timing`` is dropped.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from . import baseline
from .records import sum_or_unknown
from .report import HEADERS, rows, sections, totals
from .result import STATUS_OVER, STATUS_REGRESSED, TestResult

SCHEMA = "pytest-tokenbudget/report"
VERSION = 1
TIMING_KEY = "timing"
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
SUM_KEYS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "llm_calls",
    "tool_calls",
    "unknown_calls",
)
TEST_KEYS = ("usage", "limits", "metrics", "findings", "baseline", "status", "outcome")
"""Keys every test entry has (readers rely on them; `load` checks them)."""


class ReportError(ValueError):
    """A report file that cannot be read or is not a pytest-tokenbudget report; names the file and the fault."""


def usage_totals(usages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summed usage (``None`` where any test's figure is unknown) and the overall cache hit rate."""
    summed = {key: sum_or_unknown(u.get(key, 0) for u in usages) for key in SUM_KEYS}
    if summed["cost_usd"] is not None:
        summed["cost_usd"] = round(summed["cost_usd"], 8)
    inputs, reads = summed["input_tokens"], summed["cache_read_tokens"]
    summed["cache_hit_rate"] = None if not inputs or reads is None else round(reads / inputs, 6)
    return summed


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def totals_of(tests: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``totals`` section, computed from the per-test entries (so a merged report's totals are exact)."""
    entries = [tests[k] for k in sorted(tests)]
    return {
        "tests": len(entries),
        "usage": usage_totals([e["usage"] for e in entries]),
        "status": _counts(str(e["status"]) for e in entries),
        "outcomes": _counts(str(e["outcome"]) for e in entries),
        "baseline": _counts("not_compared" if e["baseline"] is None else str(e["baseline"]["status"]) for e in entries),
        "over_budget": sum(e["status"] == STATUS_OVER for e in entries),
        "regressions": sum(e["status"] == STATUS_REGRESSED for e in entries),
        "warnings": sum(bool(e.get("warnings")) for e in entries),
    }


def _relative(path: str | None, rootdir: Path | None) -> str | None:
    if path is None or rootdir is None:
        return path
    try:
        return Path(path).relative_to(rootdir).as_posix()
    except ValueError:
        return path


def result_entry(result: TestResult, rootdir: Path | None = None) -> dict[str, Any]:
    data = result.to_dict()
    del data["nodeid"]
    data["cassette"] = _relative(result.cassette, rootdir)
    return data


def document(
    results: Iterable[TestResult],
    *,
    rootdir: Path | None = None,
    settings: Mapping[str, Any] | None = None,
    timing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report: per node id its usage, limits, findings, baseline comparison and status, plus totals."""
    tests = {r.nodeid: result_entry(r, rootdir) for r in sorted(results, key=lambda r: r.nodeid)}
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "settings": dict(settings or {}),
        "tests": tests,
        "totals": totals_of(tests),
        TIMING_KEY: dict(timing or {}),
    }


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(path: Path, text: str) -> None:
    from .atomic import write_atomic

    write_atomic(path, text)


_OPTIONAL_LISTS = ("violations", "warnings", "notes", "top_calls", "scenarios")


def _check_figures(where: str, figures: Any, name: str) -> None:
    if not isinstance(figures, dict):
        raise ReportError(f"{where}: {name} must be an object of figures, not {figures!r}")
    for key, value in figures.items():
        if value is not None and not baseline.is_number(value):
            raise ReportError(f"{where}: {name}.{key} = {value!r} is not a number or null")


def _check_test(source: str, nodeid: str, entry: Any) -> None:
    """One test entry has the shape the readers rely on (`TEST_KEYS`, numbers where figures are)."""
    where = f"{source}: test {nodeid!r}"
    if not isinstance(entry, dict):
        raise ReportError(f"{where} must be an object")
    missing = [key for key in TEST_KEYS if key not in entry]
    if missing:
        raise ReportError(f"{where} lacks {', '.join(missing)}")
    _check_figures(where, entry["usage"], "usage")
    _check_figures(where, entry["metrics"], "metrics")
    if not isinstance(entry["limits"], dict):
        raise ReportError(f"{where}: limits = {entry['limits']!r} must be an object")
    for key in ("status", "outcome"):
        if not isinstance(entry[key], str):
            raise ReportError(f"{where}: {key} = {entry[key]!r} must be a string")
    for key in ("findings", *_OPTIONAL_LISTS):
        if key in entry and not isinstance(entry[key], list):
            raise ReportError(f"{where}: {key} = {entry[key]!r} must be a list")
    compared = entry["baseline"]
    if compared is not None and not (isinstance(compared, dict) and isinstance(compared.get("status"), str)):
        raise ReportError(f"{where}: baseline = {compared!r} must be null or an object with a status")


def parse(text: str, source: str) -> dict[str, Any]:
    """A report document from its text; `ReportError` names ``source`` and what is wrong (a test entry without
    its keys, a figure that is not a number or null, settings that are not an object ...)."""
    doc, tests = baseline.read_document(text, source, kind="report", schema=SCHEMA, version=VERSION, error=ReportError)
    for key in ("settings", "totals", TIMING_KEY):
        if key in doc and not isinstance(doc[key], dict):
            raise ReportError(f"{source}: {key} = {doc[key]!r} must be an object")
    tolerance = doc.get("settings", {}).get("tolerance")
    if tolerance is not None and not isinstance(tolerance, dict):
        raise ReportError(f"{source}: settings.tolerance = {tolerance!r} must be an object")
    for nodeid, entry in tests.items():
        _check_test(source, nodeid, entry)
    return doc


def load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot read the report: {err}") from None
    return parse(text, str(path))


def _settings_conflict(first: tuple[str, Mapping[str, Any]], other: tuple[str, Mapping[str, Any]]) -> str | None:
    """Why two shards' settings disagree (the first differing setting, with both values), or ``None``."""
    (first_source, mine), (other_source, theirs) = first, other

    def spelled(settings: Mapping[str, Any], key: str) -> str:
        return json.dumps(settings[key], sort_keys=True, ensure_ascii=False) if key in settings else "(absent)"

    for key in sorted(set(mine) | set(theirs)):
        if spelled(mine, key) != spelled(theirs, key):
            return (
                f"{first_source} and {other_source} were run with different settings: {key} = "
                f"{spelled(mine, key)} in {first_source}, {spelled(theirs, key)} in {other_source}"
            )
    return None


def merge(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One report from several shards' reports (``(source, document)`` pairs). A node id found in two shards
    is an error naming both files: the shards would disagree about what the test spent. So are shards run with
    different settings (tolerance, baseline ...): one merged report states one set of settings."""
    tests: dict[str, Any] = {}
    origin: dict[str, str] = {}
    shards = []
    first: tuple[str, dict[str, Any]] | None = None
    for source, doc in docs:
        settings = dict(doc.get("settings") or {})
        if first is None:
            first = (source, settings)
        conflict = _settings_conflict(first, (source, settings))
        if conflict:
            raise ReportError(conflict)
        for nodeid, entry in doc["tests"].items():
            if nodeid in tests:
                raise ReportError(f"test {nodeid!r} is in both {origin[nodeid]} and {source}")
            tests[nodeid] = entry
            origin[nodeid] = source
        shards.append({"source": source, **dict(doc.get(TIMING_KEY) or {})})
    settings = first[1] if first is not None else {}
    ordered = {k: tests[k] for k in sorted(tests)}
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "settings": settings,
        "tests": ordered,
        "totals": totals_of(ordered),
        TIMING_KEY: {"shards": shards},
    }


# --- Markdown ----------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: Sequence[TestResult], title: str = "Token budget") -> str:
    """The session table as a GitHub table, then the regressions, tightenable baselines and alerts."""
    if not results:
        return f"## {title}\n\nNo measured tests.\n"
    body = [[_cell(cell) for cell in row] for row in [*rows(results), totals(results)]]
    table = tabulate(body, headers=HEADERS, tablefmt="github", disable_numparse=True, stralign="right")
    parts = [f"## {title}", "", table]
    for heading, entries in sections(results):
        parts += ["", f"### {heading[0].upper()}{heading[1:]}", ""]
        parts += [f"- `{nodeid}`: {text}" if text else f"- `{nodeid}`" for nodeid, text in entries]
    return "\n".join(parts) + "\n"


def append_step_summary(text: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Append ``text`` to the file GitHub Actions names in ``GITHUB_STEP_SUMMARY`` (when it is set)."""
    target = (os.environ if environ is None else environ).get(STEP_SUMMARY_ENV)
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
    return path


# --- the files a session writes ------------------------------------------------------------------------------------


def _timing(started: float) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": round(time.time() - started, 3),
    }


def baseline_update(results: Sequence[TestResult], options: baseline.Options, complete: bool) -> baseline.Update:
    """The new baseline: entries of tests that passed (within budget) replaced; pruned only after a session that
    ran to its end (``-x``, an interrupt or a crash must not drop the entries of tests that never ran)."""
    fresh = {
        r.nodeid: baseline.entry_of(r.usage, r.metrics)
        for r in results
        if r.outcome == "passed" and r.status != STATUS_OVER
    }
    prune = options.prune if complete else None
    return baseline.updated(options.entries, fresh, [r.nodeid for r in results], prune=prune)


def write_session_files(
    results: Sequence[TestResult],
    options: baseline.Options,
    *,
    complete: bool,
    rootdir: Path | None,
    json_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    started: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], bool]:
    """Write the baseline update, the JSON report, the Markdown summary and GitHub's step summary, as asked.
    Returns the lines for the terminal and whether every write succeeded (a failed one is reported, not raised,
    so the other files are still written)."""
    messages: list[str] = []
    ok = True
    ordered = sorted(results, key=lambda r: r.nodeid)

    def attempt(what: str, path: str | os.PathLike[str], action: Any) -> None:
        nonlocal ok
        try:
            action()
        except OSError as err:
            ok = False
            messages.append(f"tokenbudget: cannot write the {what} {path}: {err}")

    if options.update and (ordered or (options.prune is not None and complete)):
        update = baseline_update(ordered, options, complete)
        attempt("baseline", options.path, lambda: baseline.save(options.path, update.entries))
        messages.append(update.summary(options.display or options.path))
        if options.prune is not None and not complete:
            messages.append("tokenbudget baseline not pruned: the session did not run to its end")
    if json_path:
        doc = document(
            ordered,
            rootdir=rootdir,
            settings={**options.settings(), **dict(settings or {})},
            timing=_timing(started if started is not None else time.time()),
        )
        attempt("JSON report", json_path, lambda: write(Path(json_path), dumps(doc)))
        messages.append(f"tokenbudget JSON report: {json_path}")
    text = markdown(ordered)
    if markdown_path:
        attempt("Markdown summary", markdown_path, lambda: write(Path(markdown_path), text))
        messages.append(f"tokenbudget Markdown summary: {markdown_path}")
    environ = os.environ if environ is None else environ
    if ordered and environ.get(STEP_SUMMARY_ENV):
        attempt("step summary", environ[STEP_SUMMARY_ENV], lambda: append_step_summary(text, environ))
    return messages, ok
