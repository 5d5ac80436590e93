"""The ``tokenbudget`` command: read recorded traffic, reports and baselines without running a test.

* ``inspect CASSETTE_OR_DIR...``: what recorded traffic cost, per interaction and per cassette.
* ``diff OLD NEW``: two cassettes (or folders of them), two reports, or a baseline and a report: the change in
  tokens and dollars per item and in total, for reviewing a pull request that re-records cassettes.
* ``merge REPORT... -o OUT``: one report from the reports of several CI shards.
* ``check REPORT --baseline FILE``: the baseline comparison as a separate CI step (exit status 1 on a regression).

Exit status 2, with a message naming the file and the fault, for input that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import baseline, reports
from .records import sum_or_unknown
from .report import fmt_cost, fmt_int, fmt_rate

CASSETTE_SUFFIXES = (".yaml", ".yml", ".json")
DIFF_KEYS = ("total_tokens", "input_tokens", "output_tokens", "cost_usd", "llm_calls")
EXIT_OK, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2


CASSETTES_ONLY_NOTE = "from cassettes alone: only requested tool calls are visible; sibling structure unknown"
SPAN_METRICS = {
    "duplicate_context_tokens": "needs the parent spans that make calls siblings; cassettes record none",
    "resends": "counted from spans (http.request.resend_count); a cassette shows each attempt as an interaction",
}
"""Detector figures a cassette cannot give: reported as unknown (``None``), never as 0, with the reason."""


class CliError(Exception):
    """Input the command cannot use; the message names the file and what is wrong (exit status 2)."""


@contextmanager
def _reading(path: Path | str, what: str = "cannot read it") -> Iterator[None]:
    """Any unexpected error while handling ``path`` becomes a `CliError` naming it: exit status 2, no traceback."""
    try:
        yield
    except CliError:
        raise
    except Exception as err:
        raise CliError(f"{path}: {what}: {type(err).__name__}: {err}") from err


# --- inspect -----------------------------------------------------------------------------------------------------


def cassette_files(path: Path) -> list[Path]:
    """``path`` itself, or every cassette-like file under it (recursively, sorted)."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CASSETTE_SUFFIXES)
        if not found:
            raise CliError(f"{path}: no cassettes (*.yaml, *.yml, *.json) in this folder")
        return found
    if not path.exists():
        raise CliError(f"{path}: no such file or folder")
    return [path]


def _price_overrides(lines: Sequence[str]) -> Mapping[str, Any]:
    from .pricing import PriceConfigError, parse_price_overrides

    try:
        return parse_price_overrides(lines)
    except PriceConfigError as err:
        raise CliError(f"--price: {err}") from None


def inspect_cassette(path: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every interaction of one cassette with its usage and cost, and the cassette's totals and findings."""
    return _inspect(path, overrides)[0]


def _inspect(path: Path, overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """`inspect_cassette`'s result, and the priced calls and tool calls behind it (for totals over cassettes)."""
    from . import detectors, traffic
    from .pricing import price_calls
    from .records import LLMCall, Usage

    try:
        interactions = traffic.load_cassette(path)
    except traffic.CassetteFormatError as err:
        raise CliError(str(err)) from None
    rows: list[dict[str, Any]] = []
    calls: list[LLMCall] = []
    for interaction in interactions:
        request, response = interaction.request, interaction.response
        number = interaction.index + 1
        row: dict[str, Any] = {
            "number": number,
            "index": interaction.index,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "stream": response.is_event_stream,
            "llm": False,
            "notes": [],
        }
        try:
            call, faults = traffic.read_interaction(interaction)
        except Exception as err:  # a parser bug must still name the file and the interaction
            raise CliError(f"{path}: interaction {number}: cannot read it: {type(err).__name__}: {err}") from None
        if call is not None:
            call = price_calls([call], overrides)[0]
            calls.append(call)
            row.update(
                {
                    "llm": True,
                    "provider": call.provider,
                    "model": call.model,
                    "response_id": call.response_id,
                    "input_tokens": call.input_tokens,
                    "cache_read_tokens": call.cache_read_tokens,
                    "cache_write_tokens": call.cache_write_tokens,
                    "output_tokens": call.output_tokens,
                    "total_tokens": call.total_tokens,
                    "cache_hit_rate": Usage.of([call]).as_dict()["cache_hit_rate"],
                    "cost_usd": None if call.cost_usd is None else round(call.cost_usd, 8),
                    "tool_calls": [t.name for t in call.tool_calls],
                    "error": call.error,
                    "stop_reason": call.stop_reason,
                    "notes": list(faults),
                }
            )
        rows.append(row)
    tools = detectors.merge_tool_calls(calls, ())
    usage = Usage.of(calls, tools)
    analysis = detectors.analyse(calls, ())
    result = {
        "path": str(path),
        "interactions": rows,
        "usage": usage.as_dict(),
        "unpriced_models": list(usage.unpriced_models),
        "failed_calls": sum(c.error is not None for c in calls),
        "metrics": {**analysis.metrics, **dict.fromkeys(SPAN_METRICS)},
        "unknown_metrics": dict(SPAN_METRICS),
        "findings": analysis.as_dict()["findings"],
    }
    return result, calls, list(tools)


def inspect_paths(paths: Sequence[Path], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from .records import Usage

    inspected = []
    for path in paths:
        for file in cassette_files(path):
            with _reading(file):
                inspected.append(_inspect(file, overrides))
    cassettes = [result for result, _, _ in inspected]
    usage = Usage.of([c for _, calls, _ in inspected for c in calls], [t for _, _, tools in inspected for t in tools])
    failed = sum(item["failed_calls"] for item in cassettes)
    return {
        "cassettes": cassettes,
        "totals": {"cassettes": len(cassettes), "usage": usage.as_dict(), "failed_calls": failed},
        "notes": [CASSETTES_ONLY_NOTE, *(f"{key} unknown: {why}" for key, why in SPAN_METRICS.items())],
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _usage_line(usage: Mapping[str, Any], failed: int = 0) -> str:
    unknown = f" ({usage['unknown_calls']} with unknown usage)" if usage.get("unknown_calls") else ""
    errors = f", {_plural(failed, 'failed call')} (no usage)" if failed else ""
    return (
        f"{_plural(usage['llm_calls'], 'LLM call')}{unknown}{errors}, {_plural(usage['tool_calls'], 'tool call')}, "
        f"input {fmt_int(usage['input_tokens'])} (cache read {fmt_int(usage['cache_read_tokens'])}, "
        f"write {fmt_int(usage['cache_write_tokens'])}), output {fmt_int(usage['output_tokens'])}, "
        f"hit rate {fmt_rate(usage['cache_hit_rate'])}, cost {fmt_cost(usage['cost_usd'])}"
    )


def render_inspection(result: Mapping[str, Any]) -> str:
    from tabulate import tabulate

    out: list[str] = []
    for item in result["cassettes"]:
        out.append(f"{item['path']}: {_usage_line(item['usage'], item['failed_calls'])}")
        table = []
        notes: list[str] = []
        for row in item["interactions"]:
            request = f"{row['method']} {row['path']}"
            notes += [f"  #{row['number']}: {note}" for note in row["notes"]]
            if not row["llm"]:
                table.append([row["number"], request, row["status"], "(not an LLM call)", *[""] * 7])
                continue
            table.append(
                [
                    row["number"],
                    request,
                    row["status"],
                    row["model"] or "?",
                    fmt_int(row["input_tokens"]),
                    fmt_int(row["cache_read_tokens"]),
                    fmt_int(row["cache_write_tokens"]),
                    fmt_int(row["output_tokens"]),
                    fmt_rate(row["cache_hit_rate"]),
                    fmt_cost(row["cost_usd"]),
                    f"error: {row['error']}" if row["error"] else ", ".join(row["tool_calls"]),
                ]
            )
        headers = [
            "#",
            "request",
            "status",
            "model",
            "input",
            "cache read",
            "cache write",
            "output",
            "hit rate",
            "cost",
            "tool calls / error",
        ]
        rendered = tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)
        out += [f"  {line}" for line in rendered.splitlines()]
        out += notes
        if item["unpriced_models"]:
            out.append(f"  no price for: {', '.join(item['unpriced_models'])} (add one with --price)")
        for finding in item["findings"]:
            out.append(f"  finding [{finding['detector']}]: {finding['summary']}")
            out += [f"    {line}" for line in finding["details"]]
        out.append("")
    out += result["notes"]
    totals = result["totals"]
    out.append(
        f"TOTAL ({_plural(totals['cassettes'], 'cassette')}): {_usage_line(totals['usage'], totals['failed_calls'])}"
    )
    return "\n".join(out)


# --- reading any of the three document kinds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a diff: ``kind`` is ``cassettes`` or ``tests``; ``items`` name -> figures; ``outcomes`` the
    pytest outcome of each test, when the side is a report."""

    kind: str
    what: str
    items: dict[str, dict[str, Any]]
    outcomes: dict[str, str] = field(default_factory=dict)


def _pick(figures: Mapping[str, Any]) -> dict[str, Any]:
    return {key: figures.get(key) for key in DIFF_KEYS}


def _read_json(path: Path) -> tuple[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"{path}: cannot read: {err}") from None
    try:
        return text, json.loads(text)
    except ValueError as err:
        raise CliError(f"{path}: not JSON: {err}") from None


def read_side(path: Path, overrides: Mapping[str, Any] | None = None) -> Side:
    if path.is_dir():
        items = {}
        for file in cassette_files(path):
            with _reading(file):
                items[file.relative_to(path).as_posix()] = _pick(inspect_cassette(file, overrides)["usage"])
        return Side("cassettes", "cassettes", items)
    if not path.exists():
        raise CliError(f"{path}: no such file or folder")
    with _reading(path):
        if path.suffix.lower() == ".json":
            text, data = _read_json(path)
            schema = data.get("schema") if isinstance(data, dict) else None
            if schema == reports.SCHEMA:
                tests = _report(path, text)["tests"]
                return Side(
                    "tests",
                    "report",
                    {k: _pick(v["usage"]) for k, v in tests.items()},
                    {k: v["outcome"] for k, v in tests.items()},
                )
            if schema == baseline.SCHEMA:
                entries = _baseline_entries(path, text)
                return Side("tests", "baseline", {k: _pick(v) for k, v in entries.items()})
            if not (isinstance(data, dict) and "interactions" in data):
                raise CliError(f"{path}: neither a cassette, a pytest-tokenbudget report nor a baseline")
        return Side("cassettes", "cassette", {path.name: _pick(inspect_cassette(path, overrides)["usage"])})


def _report(path: Path, text: str | None = None) -> dict[str, Any]:
    with _reading(path):
        try:
            return reports.parse(text, str(path)) if text is not None else reports.load(path)
        except reports.ReportError as err:
            raise CliError(str(err)) from None


def _baseline_entries(path: Path, text: str | None = None) -> dict[str, dict[str, Any]]:
    if text is None:
        if not path.is_file():
            raise CliError(f"{path}: no such baseline file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CliError(f"{path}: cannot read the baseline: {err}") from None
    with _reading(path):
        try:
            return baseline.parse(text, str(path))
        except baseline.BaselineError as err:
            raise CliError(str(err)) from None


# --- diff --------------------------------------------------------------------------------------------------------


def _minus(new: Any, old: Any) -> Any:
    if new is None or old is None:
        return None
    change = new - old
    return round(change, 8) if isinstance(change, float) else change


def _sums(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    sums = {k: sum_or_unknown(v.get(k) for v in items) for k in DIFF_KEYS}
    if sums["cost_usd"] is not None:
        sums["cost_usd"] = round(sums["cost_usd"], 8)
    return sums


def _one_sided(side: Side, names: Sequence[str]) -> dict[str, Any]:
    return {name: {"figures": side.items[name], "outcome": side.outcomes.get(name)} for name in names}


def diff_sides(old: Side, new: Side) -> dict[str, Any]:
    """Per item present on both sides its change, and the totals over those items only: an item on one side
    (a new test, an xfailed test the baseline never records, a removed cassette) is listed apart, never summed
    into the change, so the total compares like with like."""
    if old.kind != new.kind:
        raise CliError(
            f"cannot compare {old.what} with {new.what}: give two cassettes (or folders), two reports, "
            "or a baseline and a report"
        )
    old_items, new_items = dict(old.items), dict(new.items)
    if old.what == new.what == "cassette" and len(old_items) == len(new_items) == 1:
        (old_name,), (new_name,) = old_items, new_items
        name = new_name if old_name == new_name else f"{old_name} -> {new_name}"
        old_items, new_items = {name: old_items[old_name]}, {name: new_items[new_name]}
        old, new = Side(old.kind, old.what, old_items), Side(new.kind, new.what, new_items)
    items: dict[str, Any] = {}
    for name in sorted(set(old_items) & set(new_items)):
        before, after = old_items[name], new_items[name]
        items[name] = {
            "status": "same" if before == after else "changed",
            "old": before,
            "new": after,
            "change": {k: _minus(after.get(k), before.get(k)) for k in DIFF_KEYS},
        }
    totals: dict[str, Any] = {
        "items": len(items),
        "old": _sums([v["old"] for v in items.values()]),
        "new": _sums([v["new"] for v in items.values()]),
    }
    totals["change"] = {k: _minus(totals["new"][k], totals["old"][k]) for k in DIFF_KEYS}
    return {
        "kind": f"{old.what} -> {new.what}",
        "items": items,
        "only_in_old": _one_sided(old, sorted(set(old_items) - set(new_items))),
        "only_in_new": _one_sided(new, sorted(set(new_items) - set(old_items))),
        "totals": totals,
    }


def _signed_int(value: Any) -> str:
    return "unknown" if value is None else f"{value:+,}"


def _signed_cost(value: Any) -> str:
    return "unknown" if value is None else f"{'+' if value >= 0 else '-'}${abs(value):,.4f}"


def _percent(old: Any, change: Any) -> str:
    if old is None or change is None:
        return "unknown"
    if not old:
        return "" if not change else "new"
    return f"{change / old:+.1%}"


def _one_sided_lines(label: str, entries: Mapping[str, Any]) -> list[str]:
    if not entries:
        return []
    lines = [f"only in {label} ({len(entries)}, not in TOTAL):"]
    for name, entry in entries.items():
        outcome = f" ({entry['outcome']})" if entry["outcome"] else ""
        figures = entry["figures"]
        lines.append(
            f"  {name}{outcome}: {fmt_int(figures.get('total_tokens'))} tokens, {fmt_cost(figures.get('cost_usd'))}"
        )
    return lines


def render_diff(result: Mapping[str, Any], changed_only: bool = False) -> str:
    from tabulate import tabulate

    table = []
    for name, item in result["items"].items():
        if changed_only and item["status"] == "same":
            continue
        old, new, change = item["old"], item["new"], item["change"]
        table.append(
            [
                name,
                item["status"],
                fmt_int(old.get("total_tokens")),
                fmt_int(new.get("total_tokens")),
                _signed_int(change["total_tokens"]),
                _percent(old.get("total_tokens"), change["total_tokens"]),
                fmt_cost(old.get("cost_usd")),
                fmt_cost(new.get("cost_usd")),
                _signed_cost(change["cost_usd"]),
            ]
        )
    totals = result["totals"]
    change = totals["change"]
    table.append(
        [
            f"TOTAL ({totals['items']} on both sides)",
            "",
            fmt_int(totals["old"]["total_tokens"]),
            fmt_int(totals["new"]["total_tokens"]),
            _signed_int(change["total_tokens"]),
            _percent(totals["old"]["total_tokens"], change["total_tokens"]),
            fmt_cost(totals["old"]["cost_usd"]),
            fmt_cost(totals["new"]["cost_usd"]),
            _signed_cost(change["cost_usd"]),
        ]
    )
    headers = ["", "", "old tokens", "new tokens", "change", "%", "old cost", "new cost", "cost change"]
    rendered = tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True, stralign="right")
    lines = [result["kind"], rendered]
    lines += _one_sided_lines("OLD", result["only_in_old"])
    lines += _one_sided_lines("NEW", result["only_in_new"])
    return "\n".join(lines)


# --- check -------------------------------------------------------------------------------------------------------


def _tolerances(doc: Mapping[str, Any], default: str | None, compare_fail: Sequence[str], source: str) -> Any:
    """The report's own tolerances (as the session used them), overridden by the command line."""
    try:
        recorded = doc.get("settings", {}).get("tolerance")
        base = baseline.Tolerances.from_dict(recorded) if recorded is not None else baseline.Tolerances()
    except baseline.BaselineError as err:
        raise CliError(f"{source}: settings.tolerance: {err}") from None
    try:
        extra = baseline.parse_compare_fail(compare_fail)
        chosen = baseline.parse_tolerance(default) if default is not None else base.default
    except baseline.BaselineError as err:
        raise CliError(f"tolerance option: {err}") from None
    return baseline.Tolerances(chosen, {**base.per_metric, **extra})


COMPARED_OUTCOMES = ("passed", "failed")
"""Outcomes of a test whose body ran: the others (skipped, xfailed ...) are counted by outcome, not compared."""


def check(
    report_path: Path,
    baseline_path: Path,
    *,
    default: str | None,
    compare_fail: Sequence[str],
    strict: bool,
    out: TextIO,
) -> int:
    doc = _report(report_path)
    entries = _baseline_entries(baseline_path)
    tolerances = _tolerances(doc, default, compare_fail, str(report_path))
    counts = {"compared": 0, "regressed": 0, "improved": 0, "new": 0}
    others: Counter[str] = Counter()
    lines: list[str] = []
    for nodeid in sorted(doc["tests"]):
        entry = doc["tests"][nodeid]
        if entry["outcome"] not in COMPARED_OUTCOMES:
            others[entry["outcome"]] += 1
            lines.append(f"{entry['outcome']} {nodeid}: not compared")
            continue
        counts["compared"] += 1
        with _reading(report_path, f"cannot compare test {nodeid!r} with {baseline_path}"):
            comparison = baseline.compare(
                entries.get(nodeid),
                baseline.entry_of(entry["usage"], entry["metrics"]),
                tolerances,
                strict=strict,
                source=str(baseline_path),
            )
        if comparison.failed:
            counts["regressed"] += 1
            lines.append(f"FAIL {nodeid}")
            lines += [f"  {line}" for line in comparison.message().splitlines()]
        elif comparison.status == baseline.STATUS_IMPROVED:
            counts["improved"] += 1
            lines.append(f"tighten {nodeid}: {comparison.note()}")
        elif comparison.status == baseline.STATUS_NEW:
            counts["new"] += 1
            lines.append(f"new {nodeid}: no baseline entry")
    lines.append(
        ", ".join(f"{n} {what}" for what, n in [*counts.items(), *sorted(others.items())])
        + f" (tolerance {tolerances.default}"
        + "".join(f", {k}:{v}" for k, v in sorted(tolerances.per_metric.items()))
        + ")"
    )
    out.write("\n".join(lines) + "\n")
    return EXIT_REGRESSION if counts["regressed"] else EXIT_OK


def merge(paths: Sequence[Path], output: Path, out: TextIO) -> int:
    """Write one report from the shards' reports; ``output``'s folder must exist (a typo there is an error, not
    a new folder somewhere)."""
    docs = [(str(path), _report(path)) for path in paths]
    try:
        merged = reports.merge(docs)
    except reports.ReportError as err:
        raise CliError(str(err)) from None
    if not output.parent.is_dir():
        raise CliError(f"{output}: cannot write the merged report: no such folder {output.parent}")
    try:
        reports.write(output, reports.dumps(merged))
    except OSError as err:
        raise CliError(f"{output}: cannot write the merged report: {err}") from None
    out.write(f"{output}: {merged['totals']['tests']} tests from {len(docs)} reports\n")
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenbudget", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="usage, cost and findings of recorded cassettes (files or folders)")
    p.add_argument("paths", nargs="+", type=Path, metavar="CASSETTE_OR_DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="'MODEL input=3 output=15'",
        help="price override, USD per million tokens (repeatable)",
    )

    p = sub.add_parser("diff", help="change in tokens and dollars between two cassettes/folders/reports/baselines")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--changed", action="store_true", help="leave out unchanged items")
    p.add_argument("--price", action="append", default=[], metavar="'MODEL input=3 output=15'")

    p = sub.add_parser("merge", help="one report from several shards' JSON reports")
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")

    p = sub.add_parser("check", help="compare a JSON report with a baseline; exit 1 on a regression")
    p.add_argument("report", type=Path, metavar="REPORT")
    p.add_argument("--baseline", type=Path, required=True, metavar="FILE")
    p.add_argument("--tolerance", default=None, help="default tolerance (default: the report's, else 5%%)")
    p.add_argument(
        "--compare-fail",
        action="append",
        default=[],
        metavar="METRIC:TOL",
        help="per-metric tolerance, e.g. 'total_tokens:5%% llm_calls:0' (repeatable)",
    )
    p.add_argument("--strict", action="store_true", help="a test without a baseline entry fails")
    return parser


def run(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "inspect":
        result = inspect_paths(args.paths, _price_overrides(args.price))
        out.write((json.dumps(result, indent=2, sort_keys=True) if args.json else render_inspection(result)) + "\n")
        return EXIT_OK
    if args.command == "diff":
        overrides = _price_overrides(args.price)
        result = diff_sides(read_side(args.old, overrides), read_side(args.new, overrides))
        out.write(
            (json.dumps(result, indent=2, sort_keys=True) if args.json else render_diff(result, args.changed)) + "\n"
        )
        return EXIT_OK
    if args.command == "merge":
        return merge(args.reports, args.output, out)
    return check(
        args.report, args.baseline, default=args.tolerance, compare_fail=args.compare_fail, strict=args.strict, out=out
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    try:
        return run(args, sys.stdout)
    except CliError as err:
        print(f"tokenbudget: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # not tied to one input file: still exit status 2 with one line, no traceback
        print(f"tokenbudget: error: {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_ERROR
