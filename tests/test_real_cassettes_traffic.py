"""Every real recorded cassette of the shared corpus, read by `traffic`, gives the figures of its MANIFEST.tsv.

MANIFEST's ``input_tokens`` is the RAW field: for Anthropic it excludes cached tokens (so the semconv input of a
call is raw + cache_create + cache_read); for OpenAI it is ``prompt_tokens``, which already includes them. An
entry ``-(reason)`` is an interaction without usage: ``count_tokens`` and non-LLM requests are no call at all, a
legacy completion is a call with unknown usage, an error type is a failed call.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from corpus import CORPUS, PER_INTERACTION, manifest_rows, read_manifest, require

from pytest_tokenbudget.records import LLMCall, canonical_json
from pytest_tokenbudget.traffic import call_from_interaction, load_cassette

ROWS = manifest_rows()


def same_or_absent_zero(value: int | None, expected: int) -> bool:
    """A cache figure the API did not report (older responses) is ``None``; MANIFEST writes it as 0."""
    return value == expected or (value is None and expected == 0)


@pytest.mark.parametrize("row", ROWS)
def test_per_interaction_usage_and_file_totals(row: dict[str, str] | None) -> None:
    row = require(row)
    interactions = load_cassette(CORPUS / row["path"])
    entries = row[PER_INTERACTION].split("; ")
    assert len(interactions) == int(row["interactions"]) == len(entries)

    calls: list[LLMCall] = []
    totals = {"input": 0, "output": 0, "cache_create": 0, "cache_read": 0}
    errors = 0
    for interaction, entry in zip(interactions, entries, strict=True):
        call = call_from_interaction(interaction)
        where = f"{row['path']} interaction {interaction.index} ({entry})"
        errors += interaction.response.status >= 400 or (call is not None and call.error is not None)
        no_usage = re.fullmatch(r"-\((.+)\)", entry)
        if no_usage:
            reason = no_usage.group(1)
            if reason in ("count_tokens", "empty") or interaction.request.path.endswith("/count_tokens"):
                assert call is None, where
                continue
            assert call is not None, where
            calls.append(call)
            assert (call.input_tokens, call.output_tokens, call.cache_read_tokens) == (None, None, None), where
            assert not call.usage_known, where
            if reason == "completion":  # legacy Text Completions: a generation whose usage was never reported
                assert call.error is None, where
                assert call.output_text, where
            else:
                assert call.error == reason, where
            continue

        raw_input, output, cache_create, cache_read = (int(n) for n in entry.split("/"))
        assert call is not None, where
        calls.append(call)
        assert call.error is None and call.usage_known, where
        assert call.provider in row["providers"].split(","), where
        assert call.source == "http" and call.response_id, where
        semconv_input = raw_input + cache_create + cache_read if call.provider == "anthropic" else raw_input
        assert call.input_tokens == semconv_input, where
        assert call.output_tokens == output, where
        assert same_or_absent_zero(call.cache_write_tokens, cache_create), where
        assert same_or_absent_zero(call.cache_read_tokens, cache_read), where
        assert call.input_tokens is not None and call.output_tokens is not None
        cached = (call.cache_write_tokens or 0) + (call.cache_read_tokens or 0)
        totals["input"] += call.input_tokens - cached if call.provider == "anthropic" else call.input_tokens
        totals["output"] += call.output_tokens
        totals["cache_create"] += call.cache_write_tokens or 0
        totals["cache_read"] += call.cache_read_tokens or 0

    assert totals == {
        "input": int(row["input_tokens"]),
        "output": int(row["output_tokens"]),
        "cache_create": int(row["cache_creation_input_tokens"]),
        "cache_read": int(row["cache_read_input_tokens"]),
    }
    assert sum(c.usage_known for c in calls) == int(row["with_usage"])
    assert errors == int(row["errors"])
    assert sum(i.response.is_event_stream for i in interactions) == int(row["streams"])
    assert {c.provider for c in calls} == set(row["providers"].split(",")) or not calls
    assert all(c.request is not None and c.model for c in calls)


# For each LLM call of the file: (start of its first text block or None when it has none,
# [(tool name, canonical arguments, call id, error)]). Read off the raw cassettes by hand.
WEATHER_NY = ("get_weather", {"location": "New York, NY"})
EXPECTED: dict[str, list[tuple[str | None, list[tuple[str, Any, str, str | None]]]]] = {
    "openllmetry/test_anthropic_message_create_legacy.yaml": [("Sure, here's a joke about OpenTelemetry:\n\n", [])],
    "openllmetry/test_anthropic_message_streaming_legacy.yaml": [
        ("Here's an OpenTelemetry-themed joke for you:\n\nWhy did the developer feel so lost", [])
    ],
    "openllmetry/test_anthropic_tools_legacy.yaml": [
        (
            "Certainly! I'd be happy to help you with both the current weather in New York",
            [
                (
                    "get_weather",
                    {"location": "New York, NY", "unit": "fahrenheit"},
                    "toolu_012r6TBCWjRHG71j6zruYyUL",
                    None,
                ),
                ("get_time", {"timezone": "America/New_York"}, "toolu_01SkeBKkLCNYWNuivqFerGDd", None),
            ],
        )
    ],
    "openllmetry/test_anthropic_tools_history_legacy.yaml": [
        (None, [("get_time", {"timezone": "America/Los_Angeles"}, "toolu_01K5KhMEdg2McN7dAkB4Y4hi", None)])
    ],
    "openllmetry/test_anthropic_tools_streaming_legacy.yaml": [
        (
            "Certainly! I can help you with that information. To get the weather and current time in San Francisco",
            [
                (
                    "get_weather",
                    {"location": "San Francisco, CA", "unit": "celsius"},
                    "toolu_014x5X91kx3fvdhpLvwXZWE2",
                    None,
                ),
                ("get_time", {"timezone": "America/Los_Angeles"}, "toolu_0121kXsENLvoDZ72LCuAnCCz", None),
            ],
        )
    ],
    "pydantic-ai/test_multiple_parallel_tool_calls.yaml": [
        (
            "I'll help you find out who is the youngest by retrieving information about each family member.",
            [
                ("retrieve_entity_info", {"name": "Alice"}, "toolu_0167cfEnoQaPviGdVXA95zcu", None),
                ("retrieve_entity_info", {"name": "Bob"}, "toolu_01EEe2V5HD1Ac4rKiUR4HD2T", None),
                ("retrieve_entity_info", {"name": "Charlie"}, "toolu_01XFyAjstT3966qvRynZyVPo", None),
                ("retrieve_entity_info", {"name": "Daisy"}, "toolu_013mnQZbgtK2oe3Mo3XKJsx3", None),
            ],
        ),
        ("Based on the retrieved information, we can see the family relationships:", []),
    ],
    "pydantic-ai/test_anthropic_text_editor_code_execution_tool.yaml": [
        (
            "Sure! I'll do both steps simultaneously -- creating the file and viewing it at the same time!",
            [
                (
                    "text_editor_code_execution",
                    {"command": "create", "file_text": "Hello, world!", "path": "/tmp/hello.txt"},
                    "srvtoolu_016pLxxM63EiNXuNu4xif3v6",
                    "unavailable",
                ),
                (
                    "text_editor_code_execution",
                    {"command": "view", "path": "/tmp/hello.txt"},
                    "srvtoolu_01PZq4iFAcL7tePiLnstxaXh",
                    "unavailable",
                ),
                (
                    "text_editor_code_execution",
                    {"command": "create", "file_text": "Hello, world!", "path": "/tmp/hello.txt"},
                    "srvtoolu_01R4E6F3kJy4AHsq9D956u2Q",
                    None,
                ),
                (
                    "text_editor_code_execution",
                    {"command": "view", "path": "/tmp/hello.txt"},
                    "srvtoolu_01NCMtdMpuTRPDtCeaPC1WWw",
                    None,
                ),
            ],
        )
    ],
    "openinference/test_anthropic_instrumentation_multiple_tool_calling_streaming.yaml": [
        (
            "I'll check both the current weather and time in New York simultaneously right away!",
            [
                (*WEATHER_NY, "toolu_01Mo5Ee5Yb7vrzaxSNS5DVuP", None),
                ("get_time", {"timezone": "America/New_York"}, "toolu_01GDAGw1KUdi1DCPPprMKGHR", None),
            ],
        )
    ],
    "pydantic-ai/test_run_stream_sync_streams_real_model.yaml": [
        (None, [("get_capital", {"country": "UK"}, "call_ZR5UUuTt3pf61kjwAJIYdVMj", None)]),
        ("The capital of the UK is London.", []),
    ],
}


def covers(row: dict[str, str]) -> set[str]:
    return set(row["covers"].split(","))


@pytest.mark.parametrize("row", ROWS)
def test_tool_calls_and_first_text(row: dict[str, str] | None) -> None:
    row = require(row)
    if not covers(row) & {"tool", "preamble"}:
        assert row["path"] not in EXPECTED
        return
    assert row["path"] in EXPECTED, f"{row['path']} covers tools/preamble: add what it holds to EXPECTED"
    calls = [c for c in map(call_from_interaction, load_cassette(CORPUS / row["path"])) if c is not None]
    expected = EXPECTED[row["path"]]
    assert len(calls) == len(expected)
    for call, (first_text, tools) in zip(calls, expected, strict=True):
        if first_text is None:
            assert call.output_texts == ()
        else:
            assert call.output_texts[0].startswith(first_text)
            assert call.output_text is not None and call.output_text.startswith(first_text)
        assert [(t.name, t.arguments, t.call_id, t.error) for t in call.tool_calls] == [
            (name, canonical_json(arguments), call_id, error) for name, arguments, call_id, error in tools
        ]
        assert all(t.source == "requested" and t.requested_by == call.response_id for t in call.tool_calls)
    if "repeated_tool_identical_args" in covers(row):
        keys = [t.key for c in calls for t in c.tool_calls]
        assert len(keys) > len(set(keys))


def test_every_corpus_cassette_is_in_the_manifest() -> None:
    listed = {row["path"] for row in read_manifest()}
    on_disk = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml", ".json")}
    assert on_disk == listed
