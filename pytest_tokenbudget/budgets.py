"""Budget limits: what keys exist, how they are validated, and how measured figures are held against them.

Every limit is inclusive. ``max`` limits fail when the figure is above, ``min`` limits when below, ``forbid``
limits when anything was found. A figure that is unknown (``None``) fails its limit, with the reason: a budget
that cannot be checked must not pass. A figure that is ``None`` because there was nothing to measure (a hit rate
with no LLM call, a preamble rate with no text: the caller names those in ``nothing_to_measure``) is not unknown,
and its limit passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Number = int | float


@dataclass(frozen=True)
class LimitSpec:
    key: str
    metric: str
    """The figure it is held against: a `records.Usage` field or a `detectors.Analysis` metric."""
    kind: Literal["max", "min", "forbid"]
    value_type: Literal["int", "number", "rate", "bool"]
    help: str


LIMITS: dict[str, LimitSpec] = {
    spec.key: spec
    for spec in (
        LimitSpec("input_tokens", "input_tokens", "max", "int", "input tokens incl. cache reads and writes"),
        LimitSpec("output_tokens", "output_tokens", "max", "int", "output tokens"),
        LimitSpec("total_tokens", "total_tokens", "max", "int", "input + output tokens"),
        LimitSpec("cache_write_tokens", "cache_write_tokens", "max", "int", "tokens written to the prompt cache"),
        LimitSpec("cost_usd", "cost_usd", "max", "number", "cost in USD, each call priced on its own"),
        LimitSpec("llm_calls", "llm_calls", "max", "int", "LLM calls (responses)"),
        LimitSpec("max_repeated_tool_calls", "max_repeat", "max", "int", "longest run of identical tool calls"),
        LimitSpec("max_identical_tool_calls", "max_identical", "max", "int", "same tool+arguments anywhere"),
        LimitSpec("min_cache_hit_rate", "cache_hit_rate", "min", "rate", "cache-read / all input tokens"),
        LimitSpec(
            "max_duplicate_context_tokens",
            "duplicate_context_tokens",
            "max",
            "int",
            "tokens of one content block sent uncached to sibling calls",
        ),
        LimitSpec("forbid_preamble", "preambles", "forbid", "bool", "no answer opens with a sycophantic preamble"),
        LimitSpec("max_preamble_rate", "preamble_rate", "max", "rate", "share of answers opening with a preamble"),
    )
}
USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cache_write_tokens", "cost_usd", "llm_calls")


class LimitError(ValueError):
    """A limit that is not a known key or not a valid value; the message says which and how to fix it."""


def _check_value(spec: LimitSpec, value: Any) -> Number | bool:
    if spec.value_type == "bool":
        if not isinstance(value, bool):
            raise LimitError(f"{spec.key}={value!r}: must be True or False")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a whole number" if spec.value_type == "int" else "a number"
        raise LimitError(f"{spec.key}={value!r}: must be {kind}, got {type(value).__name__}")
    if spec.value_type == "int" and not (isinstance(value, int) or float(value).is_integer()):
        raise LimitError(f"{spec.key}={value!r}: must be a whole number")
    if value < 0:
        raise LimitError(f"{spec.key}={value!r}: must not be negative")
    if spec.value_type == "rate" and value > 1:
        raise LimitError(f"{spec.key}={value!r}: is a rate between 0 and 1")
    return int(value) if spec.value_type == "int" else value


def validate_limits(limits: Mapping[str, Any]) -> dict[str, Number | bool]:
    """Checked copy of ``limits``; `LimitError` names the first bad key (unknown keys list the valid ones)."""
    checked: dict[str, Number | bool] = {}
    for key, value in limits.items():
        spec = LIMITS.get(key)
        if spec is None:
            raise LimitError(f"unknown budget key {key!r}; valid keys: {', '.join(LIMITS)}")
        checked[key] = _check_value(spec, value)
    return checked


def _parse_scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        return float(text.replace("_", ""))
    except ValueError:
        return text


def parse_limits(text: str | Iterable[str]) -> dict[str, Number | bool]:
    """Parse ``total_tokens=200000 cost_usd=0.50`` (the ini form) into validated limits."""
    words = text.split() if isinstance(text, str) else [w for line in text for w in line.split()]
    raw: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise LimitError(f"{word!r}: expected KEY=VALUE, e.g. total_tokens=200000")
        raw[key] = _parse_scalar(value)
    return validate_limits(raw)


@dataclass(frozen=True)
class Violation:
    key: str
    actual: Number | None
    limit: Number | bool
    message: str


def _fmt(value: Number | None, spec: LimitSpec) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return str(value)
    if spec.key == "cost_usd":
        return f"${value:,.4f}"
    if spec.value_type == "rate":
        return f"{value:.1%}"
    return f"{value:,}"


def evaluate(
    limits: Mapping[str, Number | bool],
    figures: Mapping[str, Number | None],
    *,
    unknown_reason: Callable[[str], str] | None = None,
    explain: Callable[[str], str] | None = None,
    nothing_to_measure: Mapping[str, str] | None = None,
) -> list[Violation]:
    """The limits that ``figures`` break. ``unknown_reason(key)`` says why a figure is unknown;
    ``explain(key)`` adds the evidence for a detector limit; ``nothing_to_measure`` maps the figures that are
    ``None`` for want of anything to measure to why (their limits pass)."""
    violations: list[Violation] = []
    for key, limit in limits.items():
        spec = LIMITS[key]
        actual = figures.get(spec.metric)
        if actual is None and spec.metric in (nothing_to_measure or {}):
            continue
        if spec.kind == "forbid":
            if limit is False:
                continue
            broken = actual is None or actual > 0
            headline = f"{key}: {_fmt(actual, spec)} preamble(s) found"
        elif spec.kind == "min":
            broken = actual is None or actual < limit
            headline = f"{key}: {_fmt(actual, spec)} < {_fmt(float(limit), spec)}"
        else:
            broken = actual is None or actual > limit
            headline = f"{key}: {_fmt(actual, spec)} > limit {_fmt(limit, spec)}"
        if not broken:
            continue
        if actual is None:
            reason = unknown_reason(key) if unknown_reason else "the figure was not reported"
            headline = f"{key}: unknown, so the limit {_fmt(limit, spec)} cannot be verified: {reason}"
        elif actual is not None and isinstance(actual, (int, float)) and spec.kind == "max" and limit:
            headline += f" (+{(actual - limit) / limit:.1%})"
        detail = explain(key) if explain and key not in USAGE_KEYS else ""
        # Every line of the evidence sits under its headline (a multi-line detail keeps its own nesting).
        detail = detail.replace("\n", "\n    ")
        violations.append(Violation(key, actual, limit, headline + (f"\n    {detail}" if detail else "")))
    return violations


def usage_ratios(limits: Mapping[str, Number | bool], figures: Mapping[str, Number | None]) -> dict[str, float]:
    """How much of each ``max`` limit was used (0..1+), for the early-warning alert."""
    ratios: dict[str, float] = {}
    for key, limit in limits.items():
        spec = LIMITS[key]
        actual = figures.get(spec.metric)
        if spec.kind == "max" and actual is not None and isinstance(limit, (int, float)) and limit > 0:
            ratios[key] = actual / limit
    return ratios
