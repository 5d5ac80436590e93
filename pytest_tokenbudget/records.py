"""Typed records of what an agent spent, independent of the instrumentation that reported it.

Every number is ``int | None``: ``None`` means *unknown* (the source did not report it), never zero, so a
call whose usage is unknown can be shown as such and cannot silently pass a budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


def canonical_json(value: Any) -> str:
    """One spelling for equal JSON values: sorted keys, no whitespace, so key order never matters."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass(frozen=True)
class ToolCall:
    """One tool invocation: executed (an ``execute_tool`` span) or requested by a model response."""

    name: str
    arguments: str
    """Canonical JSON of the arguments (see `canonical_json`); ``"{}"`` when the source recorded none."""
    call_id: str | None = None
    error: str | None = None
    """The error type when the tool failed (``tool_error``, ``rate_limit`` ...), else ``None``."""
    parent_span_id: str | None = None
    span_id: str | None = None
    start_time: int = 0
    """Nanoseconds since the epoch; orders calls within a test."""
    source: str = "execute_tool"
    """``execute_tool`` (a span of the tool run) or ``requested`` (a tool call in a model's output)."""
    requested_by: str | None = None
    """The response id of the LLM call whose output requested this call, when known."""

    @property
    def key(self) -> tuple[str, str]:
        """What makes two calls "the same call": tool name and canonical arguments."""
        return (self.name, self.arguments)


@dataclass(frozen=True)
class LLMCall:
    """One model response, with token usage normalised to the OTel GenAI semantic conventions.

    ``input_tokens`` INCLUDES cache reads and cache writes (semconv), whatever the source reported.
    """

    provider: str | None
    model: str | None
    response_id: str | None = None
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    stop_reason: str | None = None
    output_text: str | None = None
    """The assistant's text blocks joined by newlines; ``None`` when content was not recorded."""
    output_texts: tuple[str, ...] = ()
    """Each assistant text block on its own, in order (the first one is where a preamble would be)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls this response requested."""
    span_id: str | None = None
    parent_span_id: str | None = None
    trace_id: str | None = None
    resend_count: int = 0
    """How many times the SDK re-sent this call's request (retries after 429/529), each with the full prompt."""
    start_time: int = 0
    end_time: int = 0
    error: str | None = None
    """The error type of a call that failed (no usage then)."""
    source: str = "span"
    """Which instrumentation or channel reported it: ``span`` or ``http``."""
    operation: str = "chat"
    request: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    """The request body as sent (from recorded HTTP traffic), when known: cache_control, blocks, tools."""
    input_messages: Any = field(default=None, compare=False, hash=False)
    """``gen_ai.input.messages`` (parsed JSON) when the span recorded content."""
    system_instructions: Any = field(default=None, compare=False, hash=False)
    cost_usd: float | None = None
    """Filled in by `pricing.price_calls`; ``None`` when unpriced or usage unknown."""

    @property
    def usage_known(self) -> bool:
        return self.error is None and self.input_tokens is not None and self.output_tokens is not None

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


def sum_or_unknown(values: Iterable[Any]) -> Any:
    """The sum, or ``None`` when any part is unknown: a total over an unknown figure is unknown, not smaller."""
    total: Any = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


@dataclass(frozen=True)
class Usage:
    """What a test (or a scenario) spent in total. ``None`` where any contributing call was unknown."""

    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cache_read_tokens: int | None = 0
    cache_write_tokens: int | None = 0
    reasoning_tokens: int | None = 0
    cost_usd: float | None = 0.0
    llm_calls: int = 0
    tool_calls: int = 0
    unknown_calls: int = 0
    """LLM calls whose usage was not reported (they make the token sums unknown)."""
    unpriced_models: tuple[str, ...] = ()

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens

    @property
    def cache_hit_rate(self) -> float | None:
        """Cache-read tokens over all input tokens (incl. cache); ``None`` when unknown or no input."""
        if self.input_tokens is None or self.cache_read_tokens is None or self.input_tokens == 0:
            return None
        return self.cache_read_tokens / self.input_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
            "llm_calls": self.llm_calls,
            "tool_calls": self.tool_calls,
            "unknown_calls": self.unknown_calls,
            "cache_hit_rate": None if self.cache_hit_rate is None else round(self.cache_hit_rate, 6),
        }

    @classmethod
    def of(cls, calls: Iterable[LLMCall], tools: Iterable[object] = ()) -> Usage:
        calls = list(calls)
        known = [c for c in calls if c.error is None]
        unknown = [c for c in known if not c.usage_known]
        costs = [c.cost_usd for c in known]
        return cls(
            input_tokens=sum_or_unknown(c.input_tokens for c in known),
            output_tokens=sum_or_unknown(c.output_tokens for c in known),
            cache_read_tokens=sum_or_unknown(c.cache_read_tokens or 0 if c.usage_known else None for c in known),
            cache_write_tokens=sum_or_unknown(c.cache_write_tokens or 0 if c.usage_known else None for c in known),
            reasoning_tokens=sum_or_unknown(c.reasoning_tokens or 0 if c.usage_known else None for c in known),
            cost_usd=None if any(v is None for v in costs) else float(sum(v for v in costs if v is not None)),
            llm_calls=len(known),
            tool_calls=len(list(tools)),
            unknown_calls=len(unknown),
            unpriced_models=tuple(sorted({c.model or "?" for c in known if c.usage_known and c.cost_usd is None})),
        )
