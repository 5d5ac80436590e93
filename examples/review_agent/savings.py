"""What tuning saved: the wasteful and the tuned run of the review agent side by side, from measured usage.

Pure: it reads the plain usage dicts and findings pytest-tokenbudget reports per test (`TestResult.usage`,
``.findings``), so the session summary and the tests that check it compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

BOTTLENECKS: dict[str, tuple[str, ...]] = {
    "retry storm": ("repeated_tool_calls", "resends"),
    "context re-fetching": ("identical_tool_calls", "cache"),
    "fan-out duplication": ("duplicate_context",),
    "preambles": ("preamble",),
}
"""The story's four bottlenecks and the pytest-tokenbudget detectors whose findings show each."""


@dataclass(frozen=True)
class Saving:
    wasteful: float
    tuned: float

    @property
    def amount(self) -> float:
        return self.wasteful - self.tuned

    @property
    def percent(self) -> float:
        return 100.0 * self.amount / self.wasteful if self.wasteful else 0.0


NOT_READ_FROM_CACHE = "input tokens not read from cache"
"""Input minus cache reads: the complement of the hit rate. Cache writes count here (billed above the base rate)."""

REQUIRED = ("total_tokens", "input_tokens", "cache_read_tokens", "cost_usd")


def not_read_from_cache(usage: Mapping[str, Any]) -> int:
    """Input tokens the model did not read from the prompt cache: uncached input plus cache writes."""
    return int(usage["input_tokens"]) - int(usage["cache_read_tokens"])


def savings(wasteful: Mapping[str, Any], tuned: Mapping[str, Any]) -> dict[str, Saving]:
    """Total tokens, input not read from cache, and cost, wasteful vs tuned. ``ValueError`` on unknown figures."""
    for name, usage in (("wasteful", wasteful), ("tuned", tuned)):
        missing = [key for key in REQUIRED if usage.get(key) is None]
        if missing:
            raise ValueError(f"the {name} run's {', '.join(missing)} is unknown: nothing to compare")
    return {
        "tokens": Saving(float(wasteful["total_tokens"]), float(tuned["total_tokens"])),
        NOT_READ_FROM_CACHE: Saving(float(not_read_from_cache(wasteful)), float(not_read_from_cache(tuned))),
        "cost": Saving(float(wasteful["cost_usd"]), float(tuned["cost_usd"])),
    }


def _row(name: str, usage: Mapping[str, Any]) -> list[str]:
    rate = usage.get("cache_hit_rate")
    return [
        name,
        str(usage["llm_calls"]),
        f"{usage['input_tokens']:,}",
        f"{usage['cache_read_tokens']:,}",
        f"{usage['output_tokens']:,}",
        f"{usage['total_tokens']:,}",
        "-" if rate is None else f"{rate:.0%}",
        f"${usage['cost_usd']:.4f}",
    ]


def comparison_lines(
    wasteful: Mapping[str, Any], tuned: Mapping[str, Any], findings: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The report: per scenario tokens and cost, the wasteful run's findings, and what tuning saved."""
    saved = savings(wasteful, tuned)  # first: it rejects unknown figures before the table formats them
    table = tabulate(
        [_row("wasteful", wasteful), _row("tuned", tuned)],
        headers=["scenario", "calls", "input", "cache read", "output", "total tokens", "hit rate", "cost"],
        disable_numparse=True,
    )
    lines = [*table.splitlines(), "", "the wasteful agent's four bottlenecks, as the detectors found them:"]
    for number, (title, detectors) in enumerate(BOTTLENECKS.items(), 1):
        found = [f for f in findings if f["detector"] in detectors]
        lines.append(f"  {number}. {title}" + ("" if found else ": not found"))
        for finding in found:
            lines.append(f"     {finding['summary']}")
            lines += [f"         {detail}" for detail in list(finding.get("details") or [])[:3]]
    lines.append("")
    for name, saving in saved.items():
        if name == "cost":
            amount = f"${saving.amount:.4f} of ${saving.wasteful:.4f}"
        else:
            amount = f"{saving.amount:,.0f} of {saving.wasteful:,.0f}"
        lines.append(f"tuned saves {amount} {name} ({saving.percent:.1f}%)")
    return lines
