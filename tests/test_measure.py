"""Combining span records with recorded HTTP responses: each response counts once."""

from __future__ import annotations

from pytest_tokenbudget.measure import combine
from pytest_tokenbudget.records import LLMCall


def span(**fields: object) -> LLMCall:
    base: dict[str, object] = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-6",
        "input_tokens": 120,
        "output_tokens": 9,
        "source": "span",
        "span_id": "s1",
    }
    return LLMCall(**{**base, **fields})  # type: ignore[arg-type]


def recorded(rid: str, **fields: object) -> LLMCall:
    base: dict[str, object] = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-6-20251001",
        "response_id": rid,
        "input_tokens": 120,
        "output_tokens": 9,
        "source": "http",
        "request": {"messages": []},
    }
    return LLMCall(**{**base, **fields})  # type: ignore[arg-type]


def test_span_and_response_with_the_same_id_count_once() -> None:
    (call,) = combine([span(response_id="msg_1")], [recorded("msg_1")])
    assert call.span_id == "s1" and call.request == {"messages": []}


def test_a_span_without_response_id_is_matched_by_usage_and_model() -> None:
    calls = combine(
        [span(), span(span_id="s2", output_tokens=30)], [recorded("msg_1"), recorded("msg_2", output_tokens=30)]
    )
    assert [(c.span_id, c.response_id) for c in calls] == [("s1", "msg_1"), ("s2", "msg_2")]


def test_unmatched_recorded_responses_are_added() -> None:
    calls = combine([span(output_tokens=1)], [recorded("msg_1")])  # different usage: not the same response
    assert [(c.source, c.response_id) for c in calls] == [("span", None), ("http", "msg_1")]
    calls = combine([span()], [recorded("msg_1", model="gpt-4o")])  # another model: not the same response
    assert len(calls) == 2


def test_without_spans_the_recording_is_the_whole_story() -> None:
    assert [c.response_id for c in combine([], [recorded("a"), recorded("b")])] == ["a", "b"]
