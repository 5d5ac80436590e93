"""One measured test from start to verdict, with no knowledge of pytest.

`TestRun` opens the span capture and the cassette, measures on demand (live, for the fixture), and turns the
final measurement into a `TestResult` with its budget verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import budgets, cassettes
from .baseline import Check, Comparison
from .capture import SpanCapture
from .measure import Measurement, Settings, measure
from .result import (
    STATUS_MEASURED,
    STATUS_OK,
    STATUS_OVER,
    STATUS_REGRESSED,
    STATUS_UNKNOWN,
    STATUS_WARN,
    CallSummary,
    TestResult,
)


@dataclass
class TestRun:
    nodeid: str
    limits: Mapping[str, Any]
    capture: SpanCapture
    settings: Settings
    cassette_path: Path | None = None
    record_mode: str = "none"
    warn_ratio: float = 0.8
    external_cassette: Any = None
    """A cassette someone else opened (pytest-recording's ``vcr`` fixture); read, never opened twice."""
    baseline: Check | None = None
    """The test's committed baseline entry and tolerances; ``None`` when no comparison is wanted."""
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    _stack: ExitStack = field(default_factory=ExitStack)
    _cassette: Any = None
    _measured: dict[tuple[int, int, int, int], Measurement] = field(default_factory=dict)

    def start(self) -> None:
        self._stack.enter_context(self.capture.capturing())
        if self.cassette_path is not None:
            self._cassette = self._stack.enter_context(
                cassettes.use_cassette(
                    self.cassette_path,
                    self.record_mode,
                    self.nodeid,
                    drop_unused_requests=self.record_mode == "all",
                )
            )

    def stop(self) -> None:
        self._stack.close()

    @property
    def misses(self) -> list[str]:
        return list(getattr(self._cassette, "misses", []))

    def interactions(self) -> list[tuple[Any, Any]]:
        if self._cassette is not None:
            return list(self._cassette.seen)
        if self.external_cassette is not None:
            return cassettes.played_interactions(self.external_cassette)
        return []

    def measure(self, since_span: int = 0, since_interaction: int = 0) -> Measurement:
        """What was spent since the given marks; memoised on the evidence, so live fixture reads stay cheap."""
        spans = self.capture.spans()[since_span:]
        interactions = self.interactions()[since_interaction:]
        key = (since_span, since_interaction, len(spans), len(interactions))
        if key not in self._measured:
            self._measured[key] = measure(spans, interactions, self.settings)
        return self._measured[key]

    def violations(self, measurement: Measurement) -> list[budgets.Violation]:
        return measurement.check(self.limits)

    def failure_message(
        self, measurement: Measurement, violations: list[budgets.Violation], scope: str | None = None
    ) -> str:
        where = f"scenario {scope!r} of {self.nodeid}" if scope else self.nodeid
        lines = [f"token budget exceeded for {where}"]
        lines += [f"  {v.message}" for v in violations]
        top = measurement.top_calls()
        if top:
            lines.append("  most expensive calls:")
            lines += [f"    {i}. {CallSummary.of(c).describe()}" for i, c in enumerate(top, 1)]
        return "\n".join(lines)

    def compare(self, measurement: Measurement) -> Comparison | None:
        if self.baseline is None:
            return None
        return self.baseline.compare(measurement.usage.as_dict(), measurement.analysis.metrics)

    def regression(self, measurement: Measurement) -> Comparison | None:
        """The comparison when it must fail the test (a regression, or no entry under strict), else ``None``."""
        comparison = self.compare(measurement)
        if comparison is None or not comparison.failed or self.baseline is None or not self.baseline.enforce:
            return None
        return comparison

    def result(self, measurement: Measurement, compared: bool = True) -> TestResult:
        """The verdict; ``compared=False`` (the test body never ran: skipped, setup failed) skips the baseline."""
        violations = [v.message for v in self.violations(measurement)]
        # A scenario over its own limits failed the test: the test is over budget too.
        violations += [f"scenario {sc['name']!r} {v}" for sc in self.scenarios for v in sc["violations"]]
        figures = measurement.figures()
        ratios = budgets.usage_ratios(self.limits, figures)
        warnings = [
            f"{key}: {ratio:.0%} of its limit used"
            for key, ratio in sorted(ratios.items())
            if self.warn_ratio <= ratio <= 1
        ]
        if violations:
            status = STATUS_OVER
        elif not self.limits:
            status = STATUS_UNKNOWN if measurement.usage.unknown_calls else STATUS_MEASURED
        elif warnings:
            status = STATUS_WARN
        else:
            status = STATUS_OK
        comparison = self.compare(measurement) if compared else None
        enforced = self.baseline is not None and self.baseline.enforce
        if status != STATUS_OVER and comparison is not None and comparison.failed and enforced:
            status = STATUS_REGRESSED
        note = comparison.note() if comparison is not None else None
        return TestResult(
            nodeid=self.nodeid,
            usage=measurement.usage.as_dict(),
            limits=dict(self.limits),
            metrics=dict(measurement.analysis.metrics),
            findings=measurement.analysis.as_dict()["findings"],
            violations=violations + self.misses,
            warnings=warnings,
            top_calls=[CallSummary.of(c) for c in measurement.top_calls()],
            scenarios=list(self.scenarios),
            cassette=None if self.cassette_path is None else str(self.cassette_path),
            status=STATUS_OVER if self.misses else status,
            baseline=None if comparison is None else comparison.as_dict(),
            notes=[note] if note else [],
        )
