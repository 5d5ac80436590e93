"""`tokenbudget inspect` on every cassette of the real-cassette corpus gives the figures of its MANIFEST.tsv.

MANIFEST's ``input_tokens`` is the RAW field: Anthropic's excludes cached tokens (semconv input = raw + cache
write + cache read), OpenAI's ``prompt_tokens`` includes them. ``-(reason)`` is an interaction without usage:
``count_tokens`` and non-LLM requests are no LLM call, a legacy completion is a call with unknown usage, an
error type is a failed call. The corpus must be present: a missing corpus fails, never skips.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from corpus import CORPUS, MISSING, PER_INTERACTION
from corpus import manifest_rows as rows
from corpus import read_manifest as manifest

from pytest_tokenbudget.cli import main


def inspect_json(capsys: pytest.CaptureFixture[str], *paths: Path) -> dict[str, Any]:
    assert main(["inspect", "--json", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("row", rows())
def test_inspect_matches_the_manifest(row: dict[str, str] | None, capsys: pytest.CaptureFixture[str]) -> None:
    if row is None:
        pytest.fail(MISSING)
    result = inspect_json(capsys, CORPUS / row["path"])
    (cassette,) = result["cassettes"]
    assert cassette["path"] == str(CORPUS / row["path"])
    entries = row[PER_INTERACTION].split("; ")
    assert len(cassette["interactions"]) == int(row["interactions"]) == len(entries)

    expected = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
    calls = failed = unknown = 0
    for interaction, entry in zip(cassette["interactions"], entries, strict=True):
        where = f"{row['path']} interaction {interaction['index']} ({entry})"
        no_usage = re.fullmatch(r"-\((.+)\)", entry)
        if no_usage and (
            no_usage.group(1) in ("count_tokens", "empty") or interaction["path"].endswith("/count_tokens")
        ):
            assert interaction["llm"] is False, where
            continue
        assert interaction["llm"] is True, where
        if no_usage:
            reason = no_usage.group(1)
            assert (interaction["input_tokens"], interaction["output_tokens"], interaction["cost_usd"]) == (
                None,
                None,
                None,
            ), where
            if reason == "completion":
                calls += 1
                unknown += 1
                assert interaction["error"] is None, where
            else:
                failed += 1
                assert interaction["error"] == reason, where
            continue
        calls += 1
        raw, output, cache_write, cache_read = (int(n) for n in entry.split("/"))
        semconv = raw + cache_write + cache_read if interaction["provider"] == "anthropic" else raw
        assert interaction["input_tokens"] == semconv, where
        assert interaction["output_tokens"] == output, where
        assert (interaction["cache_read_tokens"] or 0, interaction["cache_write_tokens"] or 0) == (
            cache_read,
            cache_write,
        ), where
        assert interaction["total_tokens"] == semconv + output, where
        assert interaction["cost_usd"] is not None and interaction["cost_usd"] > 0, where
        assert interaction["error"] is None and interaction["model"], where
        expected["input"] += semconv
        expected["output"] += output
        expected["cache_read"] += cache_read
        expected["cache_write"] += cache_write

    usage = cassette["usage"]
    assert usage["llm_calls"] == calls and usage["unknown_calls"] == unknown
    assert cassette["failed_calls"] == failed
    assert sum(i["status"] >= 400 or (i["llm"] and i["error"] is not None) for i in cassette["interactions"]) == int(
        row["errors"]
    )  # a failed count_tokens is an error response but no LLM call
    assert calls - unknown == int(row["with_usage"])
    if unknown:  # a call that reported no usage makes the cassette's sums unknown, not smaller
        assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]) == (None, None, None)
        return
    # The manifest's file sums, in its own (raw) terms.
    providers = {i.get("provider") for i in cassette["interactions"] if i["llm"]}
    raw_input = usage["input_tokens"] - (
        usage["cache_read_tokens"] + usage["cache_write_tokens"] if providers == {"anthropic"} else 0
    )
    assert (raw_input, usage["output_tokens"], usage["cache_write_tokens"], usage["cache_read_tokens"]) == (
        int(row["input_tokens"]),
        int(row["output_tokens"]),
        int(row["cache_creation_input_tokens"]),
        int(row["cache_read_input_tokens"]),
    )
    assert (usage["input_tokens"], usage["output_tokens"]) == (expected["input"], expected["output"])
    assert usage["total_tokens"] == expected["input"] + expected["output"]
    if calls:
        assert usage["cost_usd"] == pytest.approx(
            sum(i["cost_usd"] for i in cassette["interactions"] if i["llm"] and i["cost_usd"] is not None)
        )
        hit_rate = expected["cache_read"] / expected["input"]
        assert usage["cache_hit_rate"] == pytest.approx(hit_rate, abs=1e-6)


def test_the_whole_corpus_folder_is_every_manifest_cassette(capsys: pytest.CaptureFixture[str]) -> None:
    listed = {row["path"] for row in manifest()}
    result = inspect_json(capsys, CORPUS)
    found = {Path(c["path"]).relative_to(CORPUS).as_posix() for c in result["cassettes"]}
    assert found == listed
    assert [c["path"] for c in result["cassettes"]] == sorted(c["path"] for c in result["cassettes"])
    totals = result["totals"]
    assert totals["cassettes"] == len(listed)
    assert totals["usage"]["llm_calls"] == sum(c["usage"]["llm_calls"] for c in result["cassettes"])
    assert totals["failed_calls"] == sum(c["failed_calls"] for c in result["cassettes"]) == 1
    # one legacy completion reported no usage: the corpus total is unknown, never silently smaller
    assert totals["usage"]["unknown_calls"] == 1 and totals["usage"]["input_tokens"] is None
    known = [c for c in result["cassettes"] if c["usage"]["output_tokens"] is not None]
    assert sum(c["usage"]["output_tokens"] for c in known) == sum(
        int(row["output_tokens"]) for row in manifest() if row["with_usage"] != "0" or row["errors"] != "0"
    )


def test_findings_and_tool_calls_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    manifest()
    result = inspect_json(capsys, CORPUS / "pydantic-ai" / "test_anthropic_text_editor_code_execution_tool.yaml")
    (cassette,) = result["cassettes"]
    assert cassette["usage"]["tool_calls"] == 4
    assert [f["detector"] for f in cassette["findings"]] == ["identical_tool_calls", "preamble"]
    assert cassette["metrics"]["max_identical"] == 2

    assert main(["inspect", str(CORPUS / "openllmetry" / "test_openai_prompt_caching.yaml")]) == 0
    text = capsys.readouterr().out
    assert "4 LLM calls, 0 tool calls, input 4,596 (cache read 1,024, write 0), output 1,304, hit rate 22%" in text
    assert "finding [cache]: calls 3-4 re-send the same" in text
