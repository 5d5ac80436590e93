"""pytest-xdist gives what a serial run gives: the same verdicts, table, JSON report (timing aside), Markdown
and baseline, byte for byte. The inner suite drives the real anthropic SDK: recorded once against the
emulator, then replayed from its cassettes with the emulator gone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.emulator import Emulator
from pytest_tokenbudget import baseline, reports

BASE_URL_ENV = "TOKENBUDGET_TEST_BASE_URL"
COMMON = """
import os

import anthropic


def ask(*prompts, stream=False):
    client = anthropic.Anthropic(base_url=os.environ["TOKENBUDGET_TEST_BASE_URL"], api_key="test-key", max_retries=0)
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}]
        if stream:
            with client.messages.stream(model="claude-sonnet-4-6", max_tokens=300, messages=messages) as events:
                events.get_final_message()
        else:
            client.messages.create(model="claude-sonnet-4-6", max_tokens=300, messages=messages)
"""
REVIEW = """
import pytest

from agent_calls import ask


@pytest.mark.tokenbudget(total_tokens=60)
def test_one_line_summary():
    ask("Summarise this diff in one line: - x = 1 + x = 2")


@pytest.mark.tokenbudget
def test_two_reviews():
    ask("Review: def add(a, b): return a - b", "Review: def neg(a): return a")


@pytest.mark.tokenbudget(total_tokens=20)
def test_over_budget():
    ask("Explain in detail why the build is red and what the stack trace below means for the release.")


@pytest.mark.tokenbudget
def test_streamed():
    ask("Stream a short greeting to the reviewer.", stream=True)
"""
TRIAGE = """
import pytest

from agent_calls import ask


@pytest.mark.tokenbudget
class TestTriage:
    def test_label(self):
        ask("Label this issue: crash on start")

    def test_label_twice(self):
        ask("Label this issue: slow search", "Label this issue: slow search, again")


@pytest.mark.tokenbudget
@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_translate(lang):
    ask(f"Translate 'token budget' to {lang}")


def test_unmeasured():
    assert True
"""
OUTCOMES = {"passed": 9, "failed": 1}


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def without_timing(path: Path) -> str:
    """The report's text with its ``timing`` section dropped (after checking the file is in canonical form)."""
    text = path.read_text()
    doc = json.loads(text)
    assert text == reports.dumps(doc), f"{path} is not in canonical form"
    assert set(doc["timing"]) == {"started", "duration_seconds"}
    del doc["timing"]
    return reports.dumps(doc)


def table(result: pytest.RunResult) -> list[str]:
    """The token budget section of the terminal output (table and notes), without the report-file lines."""
    lines = result.stdout.lines
    start = next(n for n, line in enumerate(lines) if re.fullmatch(r"=+ token budget =+", line))
    end = next(n for n in range(start + 1, len(lines)) if lines[n].startswith("="))
    return [line for line in lines[start:end] if not line.startswith("tokenbudget ")]


def workers(result: pytest.RunResult) -> set[str]:
    return set(re.findall(r"\[(gw\d+)\]", result.stdout.str()))


def environment(base_url: str) -> dict[str, str]:
    """The outer environment minus what would leak into an inner session (options, CI step summary)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "GITHUB_STEP_SUMMARY")}
    return {**env, BASE_URL_ENV: base_url}


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The inner suite, its cassettes recorded against the emulator (then shut down) and a baseline written
    from their replay: once for the module; each test works on a copy."""
    root = tmp_path_factory.mktemp("recorded-suite")
    for name, text in (("agent_calls", COMMON), ("test_review", REVIEW), ("test_triage", TRIAGE)):
        (root / f"{name}.py").write_text(text)
    (root / "pytest.ini").write_text("[pytest]\nfilterwarnings = ignore::DeprecationWarning\n")

    def inner(*args: str, base_url: str) -> None:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
        done = subprocess.run(command, cwd=root, env=environment(base_url), capture_output=True, text=True, timeout=300)
        assert done.returncode == pytest.ExitCode.TESTS_FAILED and "1 failed, 9 passed" in done.stdout, done.stdout

    with Emulator() as emulator:
        base_url = emulator.base_url
        inner("--tokenbudget-record-mode=once", base_url=base_url)
    cassettes = sorted(p.relative_to(root).as_posix() for p in (root / "cassettes").rglob("*.yaml"))
    assert len(cassettes) == 9, cassettes
    inner("--tokenbudget-update-baseline", base_url=base_url)  # the emulator is gone: this is a replay
    shutil.move(root / "tokenbudget-baseline.json", root / "recorded-baseline.json")
    yield root, base_url


@pytest.fixture
def recorded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, recording: tuple[Path, str]
) -> pytest.Pytester:
    root, base_url = recording
    shutil.copytree(root, pytester.path, dirs_exist_ok=True)
    monkeypatch.setenv(BASE_URL_ENV, base_url)  # the cassettes' URIs carry the emulator's port
    return pytester


def test_serial_and_xdist_write_identical_files(recorded: pytest.Pytester) -> None:
    path = recorded.path
    outputs: dict[str, tuple[str, str, str, list[str]]] = {}
    for name, extra in (("serial", ()), ("xdist", ("-n", "2", "-v"))):
        result = run(
            recorded,
            "--tokenbudget-update-baseline",
            f"--tokenbudget-json={name}.json",
            f"--tokenbudget-markdown={name}.md",
            *extra,
        )
        result.assert_outcomes(**OUTCOMES)
        if name == "xdist":
            assert workers(result) == {"gw0", "gw1"}, "both workers must have run tests"
        result.stdout.fnmatch_lines(["tokenbudget baseline tokenbudget-baseline.json: 8 written, 0 kept, 1 not *"])
        written = path / "tokenbudget-baseline.json"
        outputs[name] = (
            written.read_text(),
            without_timing(path / f"{name}.json"),
            (path / f"{name}.md").read_text(),
            table(result),
        )
        written.unlink()  # each run starts from no baseline
    assert outputs["serial"] == outputs["xdist"]

    baseline_text, report_text, markdown, _ = outputs["serial"]
    entries = baseline.parse(baseline_text, "baseline")
    assert len(entries) == 8 and "test_review.py::test_over_budget" not in entries
    doc = json.loads(report_text)
    assert len(doc["tests"]) == 9
    two = doc["tests"]["test_review.py::test_two_reviews"]["usage"]
    assert two["llm_calls"] == 2 and two["input_tokens"] > 0 and two["cost_usd"] > 0
    assert doc["tests"]["test_review.py::test_over_budget"]["status"] == "over"
    assert doc["tests"]["test_review.py::test_one_line_summary"]["status"] in ("ok", "warn")
    assert "| test_triage.py::TestTriage::test_label_twice |" in re.sub(r" +", " ", markdown)


def edit_baseline(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A committed baseline the replay disagrees with: one test grew, one shrank, one has no entry."""
    edited = {k: dict(v) for k, v in entries.items()}
    for metric in ("total_tokens", "input_tokens"):
        value = edited["test_review.py::test_two_reviews"][metric]
        edited["test_review.py::test_two_reviews"][metric] = value - 10  # replay: +10 (total_tokens:0 fails it)
    edited["test_triage.py::TestTriage::test_label"]["total_tokens"] *= 2  # replay: -50%, can be tightened
    del edited["test_triage.py::test_translate[fr]"]
    return edited


def test_serial_xdist_and_loadscope_compare_identically(recorded: pytest.Pytester) -> None:
    path = recorded.path
    written = path / "tokenbudget-baseline.json"
    entries = edit_baseline(baseline.load(path / "recorded-baseline.json"))
    baseline.save(written, entries)
    committed = written.read_text()

    runs: dict[str, tuple[str, list[str]]] = {}
    variants = {"serial": (), "n2": ("-n", "2", "-v"), "auto-loadscope": ("-n", "auto", "--dist", "loadscope")}
    for name, extra in variants.items():
        result = run(recorded, f"--tokenbudget-json={name}.json", "--tokenbudget-compare-fail=total_tokens:0", *extra)
        result.assert_outcomes(passed=8, failed=2)
        if name == "n2":
            assert workers(result) == {"gw0", "gw1"}
        runs[name] = (without_timing(path / f"{name}.json"), table(result))
        assert written.read_text() == committed  # a normal run only reads the baseline
    assert runs["serial"] == runs["n2"] == runs["auto-loadscope"]

    doc = json.loads(runs["serial"][0])
    tests = doc["tests"]
    assert tests["test_review.py::test_two_reviews"]["status"] == "regressed"
    assert tests["test_review.py::test_two_reviews"]["baseline"]["deltas"]["total_tokens"]["change"] == 10
    assert tests["test_triage.py::TestTriage::test_label"]["baseline"]["status"] == "improved"
    assert tests["test_triage.py::test_translate[fr]"]["baseline"]["status"] == "new"
    assert doc["totals"]["regressions"] == 1 and doc["totals"]["over_budget"] == 1
    lines = runs["serial"][1]
    assert "token regressions:" in lines and "no baseline entry (record with --tokenbudget-update-baseline):" in lines


def test_merge_of_shards_equals_the_whole_run(recorded: pytest.Pytester) -> None:
    """CI shards (separate pytest processes) merged with `tokenbudget merge` give the report of one run."""
    from pytest_tokenbudget.cli import main

    path = recorded.path
    run(recorded, "--tokenbudget-json=whole.json").assert_outcomes(**OUTCOMES)
    run(recorded, "--tokenbudget-json=shard-1.json", "test_review.py").assert_outcomes(passed=3, failed=1)
    run(recorded, "--tokenbudget-json=shard-2.json", "test_triage.py").assert_outcomes(passed=6)
    assert main(["merge", str(path / "shard-1.json"), str(path / "shard-2.json"), "-o", str(path / "merged.json")]) == 0
    merged = json.loads((path / "merged.json").read_text())
    whole = json.loads((path / "whole.json").read_text())
    assert [s["source"] for s in merged.pop("timing")["shards"]] == [
        str(path / "shard-1.json"),
        str(path / "shard-2.json"),
    ]
    whole.pop("timing")
    assert reports.dumps(merged) == reports.dumps(whole)
