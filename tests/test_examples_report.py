"""The main job's closing section ("review agent: wasteful vs tuned (measured)") says what the session measured.

One real run of ``pytest examples`` from the committed cassettes: its printed comparison must show each of the
four bottlenecks with the detectors' own evidence, and savings that equal what the session's JSON report
(``--tokenbudget-json``) gives for ``test_full_review[wasteful]`` and ``[tuned]``. The unit tests pin the
arithmetic and labels of `examples.review_agent.savings` on hand-made usage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.review_agent.savings import NOT_READ_FROM_CACHE, comparison_lines, not_read_from_cache, savings

REPO = Path(__file__).resolve().parents[1]
SECTION = "review agent: wasteful vs tuned (measured)"
FULL_RUN = "examples/test_review_agent.py::test_full_review"
BOTTLENECKS = {  # title -> the detectors that must each have evidence in the wasteful run
    "retry storm": {"repeated_tool_calls"},
    "context re-fetching": {"identical_tool_calls", "cache"},
    "fan-out duplication": {"duplicate_context"},
    "preambles": {"preamble"},
}


@dataclass(frozen=True)
class Session:
    stdout: str
    report: dict[str, Any]

    @property
    def section(self) -> list[str]:
        """The lines of the closing section, up to pytest's final ``=== N passed ===`` line."""
        lines = self.stdout.splitlines()
        start = next((i for i, line in enumerate(lines) if SECTION in line), None)
        assert start is not None, f"no {SECTION!r} section in the output:\n{self.stdout}"
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("=")), len(lines))
        return lines[start + 1 : end]

    def usage(self, config: str) -> dict[str, Any]:
        usage: dict[str, Any] = self.report["tests"][f"{FULL_RUN}[{config}]"]["usage"]
        return usage


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """``pytest examples`` replayed from the committed cassettes, as the README's first command runs it."""
    report = tmp_path_factory.mktemp("examples") / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENBUDGET_RECORD_MODE", "REVIEW_AGENT_EMULATOR_URL")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "examples", "-p", "no:cacheprovider", f"--tokenbudget-json={report}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, f"pytest examples failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return Session(run.stdout, json.loads(report.read_text(encoding="utf-8")))


def test_every_bottleneck_is_shown_with_the_detectors_evidence(session: Session) -> None:
    section = session.section
    findings = session.report["tests"][f"{FULL_RUN}[wasteful]"]["findings"]
    headings = [i for i, line in enumerate(section) if line.startswith("  ") and line[2:3].isdigit()]
    assert [section[i] for i in headings] == [f"  {n}. {title}" for n, title in enumerate(BOTTLENECKS, 1)]
    assert not [line for line in section if "not found" in line]
    for (title, detectors), start, end in zip(BOTTLENECKS.items(), headings, [*headings[1:], None], strict=True):
        shown = "\n".join(section[start + 1 : end])
        for detector in detectors:
            summaries = [f["summary"] for f in findings if f["detector"] == detector]
            assert summaries, f"{title}: the wasteful run has no {detector} finding"
            assert all(f"     {summary}" in shown for summary in summaries), (title, detector, shown)


def test_printed_savings_equal_the_json_reports_usage(session: Session) -> None:
    wasteful, tuned = session.usage("wasteful"), session.usage("tuned")
    w_tokens, t_tokens = wasteful["total_tokens"], tuned["total_tokens"]
    w_fresh = wasteful["input_tokens"] - wasteful["cache_read_tokens"]
    t_fresh = tuned["input_tokens"] - tuned["cache_read_tokens"]
    w_cost, t_cost = wasteful["cost_usd"], tuned["cost_usd"]
    assert t_tokens < w_tokens and t_fresh < w_fresh and t_cost < w_cost, "tuning must save on every measure"
    expected = [
        f"tuned saves {w_tokens - t_tokens:,} of {w_tokens:,} tokens ({100 * (w_tokens - t_tokens) / w_tokens:.1f}%)",
        f"tuned saves {w_fresh - t_fresh:,} of {w_fresh:,} input tokens not read from cache "
        f"({100 * (w_fresh - t_fresh) / w_fresh:.1f}%)",
        f"tuned saves ${w_cost - t_cost:.4f} of ${w_cost:.4f} cost ({100 * (w_cost - t_cost) / w_cost:.1f}%)",
    ]
    assert [line for line in session.section if line.startswith("tuned saves")] == expected


def test_each_wasteful_xfail_is_over_exactly_one_limit(session: Session) -> None:
    """One limit per strict xfail: with two, the xfail would still hold if either detector stopped firing."""
    xfailed = {nodeid: test for nodeid, test in session.report["tests"].items() if test["outcome"] == "xfailed"}
    for nodeid, test in xfailed.items():
        assert len(test["limits"]) == 1, f"{nodeid} has limits {sorted(test['limits'])}"
        (limit,) = test["limits"]
        assert [v.split(":", 1)[0] for v in test["violations"]] == [limit], (nodeid, test["violations"])
    assert len(xfailed) == 5, sorted(xfailed)  # retry storm, re-fetching (two limits), fan-out, preambles


# The savings arithmetic, on hand-made usage (numbers as `TestResult.usage` reports them).

WASTEFUL = {"llm_calls": 2, "input_tokens": 10_000, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "output_tokens": 500, "total_tokens": 10_500, "cache_hit_rate": 0.0, "cost_usd": 0.0375}  # fmt: skip
TUNED = {"llm_calls": 2, "input_tokens": 8_000, "cache_read_tokens": 5_000, "cache_write_tokens": 2_500,
         "output_tokens": 400, "total_tokens": 8_400, "cache_hit_rate": 0.625, "cost_usd": 0.01}  # fmt: skip


def test_savings_subtract_tuned_from_wasteful() -> None:
    saved = savings(WASTEFUL, TUNED)
    assert list(saved) == ["tokens", NOT_READ_FROM_CACHE, "cost"]
    assert (saved["tokens"].amount, saved["tokens"].percent) == pytest.approx((2_100, 20.0))
    assert (saved["cost"].amount, saved["cost"].percent) == pytest.approx((0.0275, 220 / 3))


def test_input_not_read_from_cache_counts_cache_writes() -> None:
    """8,000 input of which 5,000 read from cache: 3,000 not read (500 uncached + 2,500 written to the cache)."""
    assert NOT_READ_FROM_CACHE == "input tokens not read from cache"
    assert not_read_from_cache(TUNED) == 3_000
    saved = savings(WASTEFUL, TUNED)[NOT_READ_FROM_CACHE]
    assert (saved.wasteful, saved.tuned, saved.amount, saved.percent) == pytest.approx((10_000, 3_000, 7_000, 70.0))
    line = comparison_lines(WASTEFUL, TUNED, [])[-2]
    assert line == "tuned saves 7,000 of 10,000 input tokens not read from cache (70.0%)"


def test_nothing_saved_from_nothing_is_zero_percent() -> None:
    empty = dict.fromkeys(("input_tokens", "cache_read_tokens", "total_tokens", "cost_usd"), 0)
    assert {name: s.percent for name, s in savings(empty, empty).items()} == dict.fromkeys(savings(empty, empty), 0.0)


@pytest.mark.parametrize("key", ["total_tokens", "input_tokens", "cache_read_tokens", "cost_usd"])
def test_an_unknown_figure_is_no_comparison(key: str) -> None:
    with pytest.raises(ValueError, match=f"the tuned run's {key} is unknown"):
        comparison_lines(WASTEFUL, {**TUNED, key: None}, [])


def test_a_bottleneck_without_findings_says_not_found() -> None:
    lines = comparison_lines(WASTEFUL, TUNED, [{"detector": "preamble", "summary": "1 of 2 responses", "details": []}])
    assert [line for line in lines if line.startswith("  ") and line[2:3].isdigit()] == [
        "  1. retry storm: not found",
        "  2. context re-fetching: not found",
        "  3. fan-out duplication: not found",
        "  4. preambles",
    ]
    assert "     1 of 2 responses" in lines
