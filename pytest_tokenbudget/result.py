"""One marked test's outcome as plain data: what the table, the reports, the baseline and xdist exchange.

Plain JSON-able dicts on the wire (pytest-xdist serialises reports), a typed view in code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .records import LLMCall

STATUS_OK = "ok"
STATUS_WARN = "warn"
STATUS_OVER = "over"
STATUS_UNKNOWN = "unknown"
STATUS_MEASURED = "measured"
STATUS_REGRESSED = "regressed"
"""Within its limits, but a figure grew beyond its baseline tolerance (see `baseline`)."""


@dataclass
class CallSummary:
    model: str | None
    input_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None

    @classmethod
    def of(cls, call: LLMCall) -> CallSummary:
        return cls(
            call.model,
            call.input_tokens,
            call.cache_read_tokens,
            call.cache_write_tokens,
            call.output_tokens,
            None if call.cost_usd is None else round(call.cost_usd, 8),
        )

    def describe(self) -> str:
        def n(value: int | None) -> str:
            return "?" if value is None else f"{value:,}"

        cost = "unpriced" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return (
            f"{self.model or '?'}: input {n(self.input_tokens)} (cache read {n(self.cache_read_tokens)}, "
            f"write {n(self.cache_write_tokens)}), output {n(self.output_tokens)}, {cost}"
        )


@dataclass
class TestResult:
    nodeid: str
    usage: dict[str, Any]
    limits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    """Detector figures: max_repeat, max_identical, resends, cache_hit_rate, duplicate_context_tokens, ..."""
    findings: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    top_calls: list[CallSummary] = field(default_factory=list)
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    cassette: str | None = None
    status: str = STATUS_MEASURED
    outcome: str = "passed"
    """The pytest outcome of the test (passed, failed, xfailed ...), filled in by the plugin."""
    baseline: dict[str, Any] | None = None
    """`baseline.Comparison.as_dict`: status, the committed entry, the moved metrics; ``None`` when not compared."""
    notes: list[str] = field(default_factory=list)
    """For the notes under the table: "baseline can be tightened ...", "no baseline entry ...", a regression."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestResult:
        data = dict(data)
        data["top_calls"] = [CallSummary(**c) for c in data.get("top_calls", [])]
        return cls(**data)
