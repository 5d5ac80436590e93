"""The session table: one row per measured test, then totals. Pure text in, text out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from .result import STATUS_OVER, STATUS_WARN, TestResult

HEADERS = (
    "test", "calls", "input", "cache read", "cache write", "output", "hit rate", "cost",
    "max repeat", "dup tokens", "preambles", "budget",
)


def fmt_int(value: Any) -> str:
    return "unknown" if value is None else f"{value:,}"


def fmt_cost(value: Any) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def fmt_rate(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def status_text(result: TestResult) -> str:
    if result.status == STATUS_OVER:
        return "OVER: " + ", ".join(v.split(":", 1)[0] for v in result.violations)
    if result.status == STATUS_WARN:
        return "warn: " + ", ".join(w.split(":", 1)[0] for w in result.warnings)
    if not result.limits:
        return result.status
    return result.status


def _total(results: Sequence[TestResult], key: str) -> Any:
    values = [r.usage.get(key) for r in results]
    if any(v is None for v in values):
        return None
    return sum(values)


def rows(results: Sequence[TestResult]) -> list[list[str]]:
    table = []
    for r in sorted(results, key=lambda r: r.nodeid):
        u, m = r.usage, r.metrics
        unknown = f" ({u['unknown_calls']} unknown)" if u.get("unknown_calls") else ""
        table.append([
            r.nodeid, f"{u.get('llm_calls', 0)}{unknown}", fmt_int(u.get("input_tokens")),
            fmt_int(u.get("cache_read_tokens")), fmt_int(u.get("cache_write_tokens")),
            fmt_int(u.get("output_tokens")), fmt_rate(u.get("cache_hit_rate")), fmt_cost(u.get("cost_usd")),
            fmt_int(m.get("max_repeat", 0)), fmt_int(m.get("duplicate_context_tokens")),
            fmt_int(m.get("preambles", 0)), status_text(r),
        ])
    return table


def totals(results: Sequence[TestResult]) -> list[str]:
    inputs, reads = _total(results, "input_tokens"), _total(results, "cache_read_tokens")
    rate = None if not inputs or reads is None else reads / inputs
    over = sum(r.status == STATUS_OVER for r in results)
    return [
        f"TOTAL ({len(results)} tests)", fmt_int(sum(r.usage.get("llm_calls", 0) for r in results)),
        fmt_int(inputs), fmt_int(reads), fmt_int(_total(results, "cache_write_tokens")),
        fmt_int(_total(results, "output_tokens")), fmt_rate(rate), fmt_cost(_total(results, "cost_usd")),
        "", "", "", f"{over} over budget" if over else "",
    ]


def terminal_table(results: Sequence[TestResult]) -> str:
    body = [*rows(results), totals(results)]
    return tabulate(body, headers=HEADERS, tablefmt="simple", disable_numparse=True, stralign="right")


def summary_line(results: Sequence[TestResult]) -> str:
    total = _total(results, "total_tokens")
    cost = _total(results, "cost_usd")
    over = sum(r.status == STATUS_OVER for r in results)
    return (f"tokenbudget: {len(results)} tests, {fmt_int(total)} tokens, {fmt_cost(cost)}, "
            f"{over} over budget")
