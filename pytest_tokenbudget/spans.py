"""Turn finished OpenTelemetry spans from any GenAI instrumentation into `LLMCall` and `ToolCall` records.

Instrumentations disagree on names and on arithmetic, so this module is the one place that knows them:

* the ``anthropic`` SDK (2.x) and the current GenAI semconv: ``gen_ai.usage.input_tokens`` *includes* cache
  reads and writes, given as ``gen_ai.usage.cache_read.input_tokens`` / ``gen_ai.usage.cache_write.input_tokens``;
* older semconv and OpenLLMetry: ``gen_ai.usage.prompt_tokens`` / ``completion_tokens``,
  ``gen_ai.usage.cache_read_input_tokens``, ``gen_ai.usage.cache_creation_input_tokens``,
  ``gen_ai.usage.cache_creation.input_tokens``;
* OpenInference: ``llm.token_count.prompt`` / ``completion`` / ``total`` and
  ``llm.token_count.prompt_details.cache_read`` / ``cache_write``.

Whether a reported input count already includes the cached tokens is decided per span, not assumed per
library: a span that also reports a total settles it (``total == input + output`` means inclusive); an input
smaller than its own cached parts can only be exclusive (raw Anthropic ``usage.input_tokens`` copied through);
otherwise the semconv meaning (inclusive) holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from .records import LLMCall, ToolCall, canonical_json

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})

INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion")
TOTAL_KEYS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")
CACHE_READ_KEYS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.details.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
CACHE_WRITE_KEYS = (
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.cache_write_input_tokens",
    "gen_ai.usage.details.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
REASONING_KEYS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
STOP_KEYS = ("anthropic.message.stop_reason", "gen_ai.response.finish_reasons", "llm.response.stop_reason")


def _first(attrs: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return value
    return None


def _int(attrs: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    value = _first(attrs, keys)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _str(attrs: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    value = _first(attrs, keys)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else str(value)


def _hex(span_id: int | None) -> str | None:
    return None if not span_id else format(span_id, "016x")


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def is_llm_span(attrs: Mapping[str, Any]) -> bool:
    operation = attrs.get("gen_ai.operation.name") or attrs.get("llm.request.type")
    if operation in LLM_OPERATIONS:
        return True
    if attrs.get("openinference.span.kind") == "LLM":
        return True
    return operation is None and _first(attrs, INPUT_KEYS + OUTPUT_KEYS) is not None


def is_tool_span(attrs: Mapping[str, Any]) -> bool:
    return attrs.get("gen_ai.operation.name") == "execute_tool" or attrs.get("openinference.span.kind") == "TOOL"


def input_tokens_including_cache(
    reported: int | None, output: int | None, total: int | None, cache_read: int | None, cache_write: int | None
) -> int | None:
    """The semconv input count (cache included) from whatever one span reported. See the module docstring."""
    if reported is None:
        return None
    cached = (cache_read or 0) + (cache_write or 0)
    if cached == 0:
        return reported
    if total is not None and output is not None:
        if total == reported + output:
            return reported
        if total == reported + cached + output:
            return reported + cached
    if reported < cached:
        return reported + cached
    return reported


def _output_parts(attrs: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, Any, str | None]]] | None:
    """Text blocks and requested tool calls of the response, from whichever content attributes are present."""
    messages = _json(attrs.get("gen_ai.output.messages"))
    if isinstance(messages, list):
        texts: list[str] = []
        tools: list[tuple[str, Any, str | None]] = []
        for message in messages:
            for part in (message or {}).get("parts", []) if isinstance(message, Mapping) else []:
                if not isinstance(part, Mapping):
                    continue
                if part.get("type") == "text" and isinstance(part.get("content"), str):
                    texts.append(part["content"])
                elif part.get("type") == "tool_call" and part.get("name"):
                    tools.append((str(part["name"]), part.get("arguments"), part.get("id")))
        return texts, tools
    # OpenLLMetry (gen_ai.completion.N.*) and OpenInference (llm.output_messages.N.message.*) flatten the output.
    for prefix, content_key, tool_prefix, name_key, args_key, id_key in (
        ("gen_ai.completion.", "content", "tool_calls.", "name", "arguments", "id"),
        (
            "llm.output_messages.",
            "message.content",
            "message.tool_calls.",
            "tool_call.function.name",
            "tool_call.function.arguments",
            "tool_call.id",
        ),
    ):
        indices = sorted(
            {
                int(k[len(prefix) :].split(".", 1)[0])
                for k in attrs
                if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0].isdigit()
            }
        )
        if not indices:
            continue
        texts, tools = [], []
        for i in indices:
            base = f"{prefix}{i}."
            content = attrs.get(base + content_key)
            if isinstance(content, str) and content:
                texts.append(content)
            j = 0
            while (name := attrs.get(f"{base}{tool_prefix}{j}.{name_key}")) is not None:
                tools.append(
                    (
                        str(name),
                        attrs.get(f"{base}{tool_prefix}{j}.{args_key}"),
                        attrs.get(f"{base}{tool_prefix}{j}.{id_key}"),
                    )
                )
                j += 1
        return texts, tools
    return None


def _error_type(span: ReadableSpan, attrs: Mapping[str, Any]) -> str | None:
    if attrs.get("error.type"):
        return str(attrs["error.type"])
    if span.status.status_code is StatusCode.ERROR:
        return span.status.description or "error"
    return None


def llm_call_from_span(span: ReadableSpan) -> LLMCall:
    attrs: Mapping[str, Any] = span.attributes or {}
    output = _int(attrs, OUTPUT_KEYS)
    cache_read = _int(attrs, CACHE_READ_KEYS)
    cache_write = _int(attrs, CACHE_WRITE_KEYS)
    input_tokens = input_tokens_including_cache(
        _int(attrs, INPUT_KEYS), output, _int(attrs, TOTAL_KEYS), cache_read, cache_write
    )
    response_id = _str(attrs, ("gen_ai.response.id", "llm.response.id"))
    parts = _output_parts(attrs)
    texts, requested = parts if parts is not None else ([], [])
    end = span.end_time or 0
    tool_calls = tuple(
        ToolCall(
            name=name,
            arguments=canonical_json(args if args is not None else {}),
            call_id=None if call_id is None else str(call_id),
            parent_span_id=_hex(span.context.span_id) if span.context else None,
            start_time=end,
            source="requested",
            requested_by=response_id,
        )
        for name, args, call_id in requested
    )
    error = _error_type(span, attrs)
    has_usage = input_tokens is not None or output is not None
    return LLMCall(
        provider=_str(attrs, PROVIDER_KEYS),
        model=_str(attrs, MODEL_KEYS),
        response_id=response_id,
        input_tokens=input_tokens,
        cache_read_tokens=cache_read if has_usage else None,
        cache_write_tokens=cache_write if has_usage else None,
        output_tokens=output,
        reasoning_tokens=_int(attrs, REASONING_KEYS),
        stop_reason=_str(attrs, STOP_KEYS),
        output_text="\n".join(texts) if parts is not None else None,
        output_texts=tuple(texts),
        tool_calls=tool_calls,
        span_id=_hex(span.context.span_id) if span.context else None,
        parent_span_id=_hex(span.parent.span_id) if span.parent else None,
        trace_id=format(span.context.trace_id, "032x") if span.context else None,
        resend_count=_int(attrs, ("http.request.resend_count",)) or 0,
        start_time=span.start_time or 0,
        end_time=end,
        error=error if not has_usage else None,
        source="span",
        operation=str(attrs.get("gen_ai.operation.name") or attrs.get("llm.request.type") or "chat"),
        input_messages=_json(attrs.get("gen_ai.input.messages")),
        system_instructions=_json(attrs.get("gen_ai.system_instructions")),
    )


def tool_call_from_span(span: ReadableSpan) -> ToolCall:
    attrs: Mapping[str, Any] = span.attributes or {}
    name = _str(attrs, ("gen_ai.tool.name", "tool.name")) or span.name
    arguments = _first(attrs, ("gen_ai.tool.call.arguments", "tool.parameters", "input.value"))
    return ToolCall(
        name=name,
        arguments=canonical_json(arguments if arguments is not None else {}),
        call_id=_str(attrs, ("gen_ai.tool.call.id", "tool_call.id")),
        error=_error_type(span, attrs),
        parent_span_id=_hex(span.parent.span_id) if span.parent else None,
        span_id=_hex(span.context.span_id) if span.context else None,
        start_time=span.start_time or 0,
        source="execute_tool",
    )


def merge_duplicates(calls: Sequence[LLMCall]) -> list[LLMCall]:
    """One record per response: calls sharing a ``response_id`` (two instrumentations, or a span and the
    recorded HTTP response) are merged, the first keeping its values and borrowing what it lacks."""
    merged: dict[str, LLMCall] = {}
    order: list[LLMCall | str] = []
    for call in calls:
        if call.response_id is None:
            order.append(call)
            continue
        if call.response_id in merged:
            merged[call.response_id] = fill_missing(merged[call.response_id], call)
        else:
            merged[call.response_id] = call
            order.append(call.response_id)
    return [merged[item] if isinstance(item, str) else item for item in order]


def fill_missing(primary: LLMCall, other: LLMCall) -> LLMCall:
    """``primary`` (one response as one source saw it) completed with what ``other`` (the same response seen
    elsewhere) knows and it does not."""
    updates: dict[str, Any] = {}
    for f in fields(LLMCall):
        mine, theirs = getattr(primary, f.name), getattr(other, f.name)
        if (mine is None or mine == () or (f.name == "resend_count" and not mine)) and theirs not in (None, ()):
            updates[f.name] = theirs
    if primary.usage_known and not other.usage_known:
        updates.pop("error", None)
    return replace(primary, **updates) if updates else primary


def normalise(spans: Iterable[ReadableSpan]) -> tuple[list[LLMCall], list[ToolCall]]:
    """Records for every LLM and tool span, ordered by start time, duplicates of one response merged."""
    calls: list[LLMCall] = []
    tools: list[ToolCall] = []
    for span in sorted(spans, key=lambda s: (s.start_time or 0, s.end_time or 0)):
        attrs = span.attributes or {}
        if is_tool_span(attrs):
            tools.append(tool_call_from_span(span))
        elif is_llm_span(attrs):
            calls.append(llm_call_from_span(span))
    return merge_duplicates(calls), tools
