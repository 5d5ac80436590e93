"""Span normalisation across instrumentations, built with the real OTel SDK."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from pytest_tokenbudget.spans import input_tokens_including_cache, normalise


def make_spans(*specs: tuple[str, dict[str, Any]], nest: bool = False) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("agent"):
        for name, attrs in specs:
            with tracer.start_as_current_span(name, attributes=attrs) as span:
                if attrs.get("error.type") == "tool_error":
                    span.set_status(Status(StatusCode.ERROR))
    return exporter.get_finished_spans()


ANTHROPIC_NATIVE = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "anthropic",
    "gen_ai.request.model": "claude-sonnet-4-5",
    "gen_ai.response.model": "claude-sonnet-4-5-20250929",
    "gen_ai.response.id": "msg_1",
    "gen_ai.usage.input_tokens": 1400,  # includes the 1000 read + 300 written
    "gen_ai.usage.cache_read.input_tokens": 1000,
    "gen_ai.usage.cache_write.input_tokens": 300,
    "gen_ai.usage.output_tokens": 50,
    "anthropic.message.stop_reason": "tool_use",
    "http.request.resend_count": 2,
    "gen_ai.output.messages": json.dumps(
        [
            {
                "role": "assistant",
                "parts": [
                    {"type": "text", "content": "Let me look."},
                    {"type": "tool_call", "id": "toolu_1", "name": "read_file", "arguments": {"path": "CLAUDE.md"}},
                ],
            }
        ]
    ),
}


def test_anthropic_native_names_are_semconv_inclusive() -> None:
    calls, tools = normalise(make_spans(("anthropic.messages.create", ANTHROPIC_NATIVE)))
    assert tools == []
    (call,) = calls
    assert (call.input_tokens, call.cache_read_tokens, call.cache_write_tokens, call.output_tokens) == (
        1400,
        1000,
        300,
        50,
    )
    assert call.model == "claude-sonnet-4-5-20250929"
    assert call.resend_count == 2
    assert call.stop_reason == "tool_use"
    assert call.output_texts == ("Let me look.",)
    (tool,) = call.tool_calls
    assert (tool.name, tool.arguments, tool.call_id, tool.source) == (
        "read_file",
        '{"path":"CLAUDE.md"}',
        "toolu_1",
        "requested",
    )
    assert call.parent_span_id is not None


def test_openllmetry_prompt_tokens_with_underscore_cache_names() -> None:
    # OpenLLMetry copies Anthropic's raw input (which excludes cache) when it is smaller than the cached parts.
    attrs = {
        "llm.request.type": "chat",
        "gen_ai.system": "Anthropic",
        "gen_ai.request.model": "claude-3-5-sonnet",
        "gen_ai.usage.prompt_tokens": 4,
        "gen_ai.usage.completion_tokens": 187,
        "gen_ai.usage.cache_creation_input_tokens": 1163,
        "gen_ai.usage.cache_read_input_tokens": 0,
        "gen_ai.completion.0.content": "Sure, here is the summary",
    }
    (call,), _ = normalise(make_spans(("anthropic.chat", attrs)))
    assert (call.input_tokens, call.cache_write_tokens, call.output_tokens) == (1167, 1163, 187)
    assert call.output_texts == ("Sure, here is the summary",)


def test_total_tokens_settles_inclusive_arithmetic() -> None:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": 2000,
        "gen_ai.usage.output_tokens": 10,
        "gen_ai.usage.total_tokens": 3010,
        "gen_ai.usage.cache_creation.input_tokens": 1000,
    }
    (call,), _ = normalise(make_spans(("chat", attrs)))
    assert call.input_tokens == 3000  # exclusive input: total proves the cache was not in it


def test_openinference_token_counts() -> None:
    attrs = {
        "openinference.span.kind": "LLM",
        "llm.provider": "anthropic",
        "llm.model_name": "claude-3-5-haiku",
        "llm.token_count.prompt": 1733 + 20,
        "llm.token_count.completion": 30,
        "llm.token_count.total": 1783,
        "llm.token_count.prompt_details.cache_read": 1733,
        "llm.output_messages.0.message.content": "Of course!",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "get_weather",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"city": "Paris"}',
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": "toolu_9",
    }
    (call,), _ = normalise(make_spans(("Messages", attrs)))
    assert (call.input_tokens, call.cache_read_tokens, call.output_tokens) == (1753, 1733, 30)
    assert call.provider == "anthropic" and call.model == "claude-3-5-haiku"
    assert call.tool_calls[0].arguments == '{"city":"Paris"}'


def test_same_response_from_two_instrumentations_counts_once() -> None:
    other = {
        "llm.request.type": "chat",
        "gen_ai.system": "Anthropic",
        "gen_ai.response.id": "msg_1",
        "gen_ai.usage.prompt_tokens": 1400,
        "gen_ai.usage.completion_tokens": 50,
        "gen_ai.usage.cache_read_input_tokens": 1000,
        "gen_ai.usage.cache_creation_input_tokens": 300,
    }
    calls, _ = normalise(make_spans(("anthropic.chat", other), ("anthropic.messages.create", ANTHROPIC_NATIVE)))
    assert len(calls) == 1
    assert calls[0].input_tokens == 1400
    assert calls[0].output_texts == ("Let me look.",)  # borrowed from the richer span


@pytest.mark.parametrize("missing", ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"])
def test_missing_usage_is_unknown_not_zero(missing: str) -> None:
    attrs = {k: v for k, v in ANTHROPIC_NATIVE.items() if k != missing}
    (call,), _ = normalise(make_spans(("anthropic.messages.create", attrs)))
    assert not call.usage_known
    assert call.total_tokens is None


def test_execute_tool_spans_and_errors() -> None:
    tool = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_invoice",
        "gen_ai.tool.call.id": "toolu_2",
        "gen_ai.tool.call.arguments": '{ "id" : "in_42" }',
        "error.type": "tool_error",
    }
    calls, (call,) = normalise(make_spans(("anthropic.custom_tool_use get_invoice", tool)))
    assert calls == []
    assert (call.name, call.arguments, call.call_id, call.error) == (
        "get_invoice",
        '{"id":"in_42"}',
        "toolu_2",
        "tool_error",
    )


def test_failed_call_without_usage_is_an_error() -> None:
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "error.type": "rate_limit_error"}
    (call,), _ = normalise(make_spans(("anthropic.messages.create", attrs)))
    assert call.error == "rate_limit_error"


def test_non_genai_spans_are_ignored() -> None:
    assert normalise(make_spans(("GET /health", {"http.request.method": "GET"}))) == ([], [])


@pytest.mark.parametrize(
    ("reported", "output", "total", "read", "write", "expected"),
    [
        (10, 5, None, 0, 0, 10),
        (4, 5, None, 1163, 0, 1167),
        (1167, 5, None, 1163, 0, 1167),
        (1167, 5, 1172, 1163, 0, 1167),
        (1167, 5, 2335, 1163, 0, 2330),
        (None, 5, None, 1, 1, None),
    ],
)
def test_inclusive_arithmetic(
    reported: int | None, output: int, total: int | None, read: int, write: int, expected: int | None
) -> None:
    assert input_tokens_including_cache(reported, output, total, read, write) == expected
