"""The main job's reports are the same on every run, serial or under pytest-xdist.

Reports and baselines are committed and diffed in review: text that changes between runs (span ids, worker
order) would make every run look like a change. The example suite has every detector firing, fan-out included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_examples(pytester: pytest.Pytester, name: str, *args: str) -> dict[str, Any]:
    report = pytester.path / f"{name}.json"
    baseline = pytester.path / "baseline.json"  # one file: each run rewrites it, and must write the same bytes
    session = pytester.runpytest_subprocess(
        str(REPO / "examples"), "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO),
        "-p", "no:cacheprovider", f"--tokenbudget-json={report}", "--tokenbudget-update-baseline",
        "-o", f"tokenbudget_baseline={baseline}", *args, timeout=300,
    )  # fmt: skip
    session.assert_outcomes(passed=3, xfailed=5)
    document: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    document.pop("timing")
    document["baseline"] = baseline.read_text(encoding="utf-8")
    return document


def test_example_reports_are_identical_serial_and_with_xdist(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REVIEW_AGENT_EMULATOR_URL", raising=False)  # the committed cassettes' URL
    first = run_examples(pytester, "first")  # writes the baseline the next runs compare with
    serial = run_examples(pytester, "serial")
    assert first["baseline"] == serial["baseline"]
    assert serial == run_examples(pytester, "again")
    assert serial == run_examples(pytester, "xdist", "-p", "xdist", "-n", "2")
    fanout = serial["tests"]["examples/test_review_agent.py::test_wasteful_fanout_duplication"]
    assert any(f["detector"] == "duplicate_context" for f in fanout["findings"])
