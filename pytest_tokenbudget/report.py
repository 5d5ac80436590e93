"""The session table: one row per measured test, then totals. Pure text in, text out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from .baseline import FAILING
from .records import sum_or_unknown
from .result import STATUS_OVER, STATUS_REGRESSED, STATUS_WARN, TestResult

HEADERS = (
    "test",
    "calls",
    "input",
    "cache read",
    "cache write",
    "output",
    "hit rate",
    "cost",
    "max repeat",
    "dup tokens",
    "preambles",
    "vs baseline",
    "budget",
)


def fmt_int(value: Any) -> str:
    return "unknown" if value is None else f"{value:,}"


def fmt_cost(value: Any) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def fmt_rate(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def status_text(result: TestResult) -> str:
    if result.status == STATUS_OVER:
        expected = " (xfail)" if result.outcome == "xfailed" else ""
        return f"OVER{expected}: " + ", ".join(v.split(":", 1)[0] for v in result.violations)
    if result.status == STATUS_REGRESSED:
        regressed = list((result.baseline or {}).get("regressed", []))
        if not regressed:
            return "REGRESSED: no baseline entry"
        return "REGRESSED: " + str(regressed[0]) + (f" (+{len(regressed) - 1} more)" if len(regressed) > 1 else "")
    if result.status == STATUS_WARN:
        return "warn: " + ", ".join(w.split(":", 1)[0] for w in result.warnings)
    return result.status


def _total(results: Sequence[TestResult], key: str) -> Any:
    # Node-id order: float sums must not depend on the order xdist workers finished in.
    return sum_or_unknown(r.usage.get(key) for r in sorted(results, key=lambda r: r.nodeid))


def delta_text(result: TestResult) -> str:
    """The change of total tokens against the baseline: ``+25.8%``, ``=``, ``new`` (no entry), blank (not compared)."""
    comparison = result.baseline
    if comparison is None:
        return ""
    if comparison["status"] in ("new", "missing"):
        return str(comparison["status"])
    delta = comparison["deltas"].get("total_tokens")
    if delta is None:
        return "="
    if delta["percent"] is not None:
        return f"{delta['percent']:+.1f}%"
    return "unknown" if delta["change"] is None else f"{delta['change']:+,}"


def total_delta_text(results: Sequence[TestResult]) -> str:
    """Total tokens of the compared tests against the sum of their baseline entries."""
    old = new = 0
    for r in results:
        entry = (r.baseline or {}).get("entry")
        if not entry or entry.get("total_tokens") is None or r.usage.get("total_tokens") is None:
            continue
        old += entry["total_tokens"]
        new += r.usage["total_tokens"]
    if not old:
        return ""
    return "=" if old == new else f"{(new - old) / old:+.1%}"


def rows(results: Sequence[TestResult]) -> list[list[str]]:
    table = []
    for r in sorted(results, key=lambda r: r.nodeid):
        u, m = r.usage, r.metrics
        unknown = f" ({u['unknown_calls']} unknown)" if u.get("unknown_calls") else ""
        table.append(
            [
                r.nodeid,
                f"{u.get('llm_calls', 0)}{unknown}",
                fmt_int(u.get("input_tokens")),
                fmt_int(u.get("cache_read_tokens")),
                fmt_int(u.get("cache_write_tokens")),
                fmt_int(u.get("output_tokens")),
                fmt_rate(u.get("cache_hit_rate")),
                fmt_cost(u.get("cost_usd")),
                fmt_int(m.get("max_repeat", 0)),
                fmt_int(m.get("duplicate_context_tokens")),
                fmt_int(m.get("preambles", 0)),
                delta_text(r),
                status_text(r),
            ]
        )
    return table


def totals(results: Sequence[TestResult]) -> list[str]:
    inputs, reads = _total(results, "input_tokens"), _total(results, "cache_read_tokens")
    rate = None if not inputs or reads is None else reads / inputs
    over = sum(r.status == STATUS_OVER for r in results)
    regressed = sum(r.status == STATUS_REGRESSED for r in results)
    verdict = ", ".join(
        part for part in (f"{over} over budget" if over else "", f"{regressed} regressed" if regressed else "") if part
    )
    return [
        f"TOTAL ({len(results)} tests)",
        fmt_int(sum(r.usage.get("llm_calls", 0) for r in results)),
        fmt_int(inputs),
        fmt_int(reads),
        fmt_int(_total(results, "cache_write_tokens")),
        fmt_int(_total(results, "output_tokens")),
        fmt_rate(rate),
        fmt_cost(_total(results, "cost_usd")),
        "",
        "",
        "",
        total_delta_text(results),
        verdict,
    ]


def terminal_table(results: Sequence[TestResult]) -> str:
    body = [*rows(results), totals(results)]
    align = ("left", *("right",) * (len(HEADERS) - 2), "left")
    return tabulate(body, headers=HEADERS, tablefmt="simple", disable_numparse=True, colalign=align)


def summary_line(results: Sequence[TestResult]) -> str:
    total = _total(results, "total_tokens")
    cost = _total(results, "cost_usd")
    over = sum(r.status == STATUS_OVER for r in results)
    regressed = sum(r.status == STATUS_REGRESSED for r in results)
    return f"tokenbudget: {len(results)} tests, {fmt_int(total)} tokens, {fmt_cost(cost)}, {over} over budget" + (
        f", {regressed} regressed" if regressed else ""
    )


def sections(results: Sequence[TestResult]) -> list[tuple[str, list[tuple[str, str]]]]:
    """What the table cannot say, as (heading, [(node id, text)]): regressions, tightenable baselines, budget
    alerts, over budget, tests without a baseline entry (text blank). Headings without entries are left out."""
    ordered = sorted(results, key=lambda r: r.nodeid)

    def status(r: TestResult) -> str | None:
        return None if r.baseline is None else str(r.baseline["status"])

    found: list[tuple[str, list[tuple[str, str]]]] = [
        ("token regressions", [(r.nodeid, n) for r in ordered if status(r) in FAILING for n in r.notes]),
        (
            "baseline can be tightened (run with --tokenbudget-update-baseline)",
            [
                (r.nodeid, n.removeprefix("baseline can be tightened: "))
                for r in ordered
                if status(r) == "improved" and r.outcome == "passed"
                for n in r.notes
            ],
        ),
        ("budget alerts", [(r.nodeid, w) for r in ordered for w in r.warnings]),
        (
            "over budget",
            [(r.nodeid, v.splitlines()[0]) for r in ordered if r.status == STATUS_OVER for v in r.violations],
        ),
        (
            "no baseline entry (record with --tokenbudget-update-baseline)",
            [(r.nodeid, "") for r in ordered if status(r) == "new"],
        ),
    ]
    return [(title, entries) for title, entries in found if entries]


def notes(results: Sequence[TestResult]) -> list[str]:
    """`sections` as indented text lines for the terminal."""
    lines: list[str] = []
    for title, entries in sections(results):
        lines.append(f"{title}:")
        lines += [f"  {nodeid}: {text}" if text else f"  {nodeid}" for nodeid, text in entries]
    return lines
