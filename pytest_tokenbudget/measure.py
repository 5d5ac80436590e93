"""From raw evidence (finished spans, recorded HTTP interactions) to priced records and their findings.

Spans are the primary source (they carry parentage, tool runs and SDK resends). Recorded HTTP traffic fills
in what spans cannot give: request bodies (cache_control, the prompt prefix), and whole calls from SDKs that
emit no spans (openai). The same response seen both ways counts once (response id).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from . import budgets, detectors, spans, traffic
from .pricing import Rates, price_calls
from .records import LLMCall, ToolCall, Usage


@dataclass(frozen=True)
class Settings:
    price_overrides: Mapping[str, Rates] = field(default_factory=dict)
    detectors: detectors.DetectorSettings = field(default_factory=detectors.DetectorSettings)


@dataclass(frozen=True)
class Measurement:
    calls: tuple[LLMCall, ...]
    tools: tuple[ToolCall, ...]
    """Tool runs reported by ``execute_tool`` spans."""
    tool_calls: tuple[detectors.ToolEvent, ...]
    """Every tool call once, executed or only requested, in order (see `toolcalls`)."""
    usage: Usage
    analysis: detectors.Analysis

    def figures(self) -> dict[str, int | float | None]:
        """Every figure a budget key can be held against (usage and detector metrics)."""
        values: dict[str, int | float | None] = dict(self.usage.as_dict())
        values.update(self.analysis.metrics)
        return values

    def unknown_reason(self, key: str) -> str:
        """Why the figure behind budget ``key`` is unknown; detector keys add their own evidence after it."""
        usage = self.usage
        if key == "cost_usd" and usage.unpriced_models:
            return (
                f"no price for model(s) {', '.join(usage.unpriced_models)}; add a line to the "
                "tokenbudget_prices ini option (MODEL input=USD_PER_MTOK output=USD_PER_MTOK)"
            )
        if usage.unknown_calls:
            return f"{usage.unknown_calls} LLM call(s) reported no token usage (see the table's 'unknown' column)"
        if key not in budgets.USAGE_KEYS:
            return "the detector could not compute it (why follows)"
        return "no LLM call reported it"

    def check(self, limits: Mapping[str, Any]) -> list[budgets.Violation]:
        return budgets.evaluate(
            limits,
            self.figures(),
            unknown_reason=self.unknown_reason,
            explain=lambda key: detectors.explain(key, self.analysis),
            nothing_to_measure=self.analysis.unmeasured,
        )

    def top_calls(self, n: int = 3) -> list[LLMCall]:
        def weight(call: LLMCall) -> tuple[float, int]:
            return (call.cost_usd or 0.0, call.total_tokens or 0)

        return sorted((c for c in self.calls if c.error is None), key=weight, reverse=True)[:n]


def http_calls(interactions: Iterable[tuple[Any, Any]]) -> list[LLMCall]:
    """LLM calls from (vcr request, response dict) pairs the cassette played or recorded, in order."""
    calls: list[LLMCall] = []
    for request, response in interactions:
        try:
            call = traffic.call_from_interaction(traffic.interaction_from_vcr(request, response))
        except Exception:  # a body we cannot read is not a call we can count; spans may still have it
            continue
        if call is not None:
            calls.append(call)
    return calls


def combine(span_calls: Sequence[LLMCall], recorded: Sequence[LLMCall]) -> list[LLMCall]:
    """Span records enriched with the recorded request body, plus the calls no span reported.

    With spans present, recorded error responses without a response id are the SDK's retried attempts of a call
    whose span already counts them (``http.request.resend_count``), so only successful responses are added.
    Without spans (e.g. the openai SDK emits none) the recorded calls are the whole story, in cassette order.
    """
    if not span_calls:
        return list(recorded)
    by_id = {c.response_id: c for c in recorded if c.response_id}
    combined: list[LLMCall] = []
    for call in span_calls:
        key = call.response_id if call.response_id in by_id else _same_response(call, by_id.values())
        match = by_id.pop(key, None) if key else None
        if match is not None:
            call = spans.fill_missing(call, match)
        combined.append(call)
    combined.extend(by_id.values())
    return combined


def _same_response(call: LLMCall, recorded: Iterable[LLMCall]) -> str | None:
    """For a span that names no response id (some frameworks' spans): the first recorded response with the same
    usage and a compatible model, which is the one it reported. ``None`` when nothing matches."""
    if call.response_id is not None or not call.usage_known:
        return None
    for candidate in recorded:
        same_usage = (candidate.input_tokens, candidate.output_tokens) == (call.input_tokens, call.output_tokens)
        models = (call.model or "", candidate.model or "")
        if same_usage and (not all(models) or models[0].startswith(models[1]) or models[1].startswith(models[0])):
            return candidate.response_id
    return None


def measure(
    finished: Iterable[ReadableSpan],
    interactions: Iterable[tuple[Any, Any]] = (),
    settings: Settings | None = None,
) -> Measurement:
    settings = settings or Settings()
    span_calls, tools = spans.normalise(finished)
    calls = price_calls(combine(span_calls, http_calls(interactions)), settings.price_overrides)
    analysis = detectors.analyse(calls, tools, settings.detectors)
    merged = detectors.merge_tool_calls(calls, tools)
    return Measurement(tuple(calls), tuple(tools), merged, Usage.of(calls, merged), analysis)
