"""The committed baseline: tolerances, comparison, the file format, updating and pruning it from a real pytest
session, and a writer that is SIGKILLed mid-write never leaving a truncated file."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import pytest_tokenbudget.run  # noqa: F401  (loaded once here: in-process inner sessions then reuse the SDKs)
from pytest_tokenbudget import baseline
from pytest_tokenbudget.baseline import BaselineError, Tolerance, Tolerances, compare, entry_of

REPO = Path(__file__).resolve().parents[1]

# An inner suite whose tests emit GenAI spans with the OpenTelemetry API; the figures come from figures.json so
# a test can change what the suite spends between two sessions.
INNER = """
import json
import pathlib

import pytest
from opentelemetry import trace


def spend(name):
    figures = json.loads((pathlib.Path(__file__).parent / "figures.json").read_text())[name]
    tracer = trace.get_tracer("inner-suite")
    for n, (inp, out) in enumerate(figures):
        attributes = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-6", "gen_ai.response.id": f"msg_{name}_{n}",
            "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out,
        }
        with tracer.start_as_current_span("chat", attributes=attributes):
            pass


@pytest.mark.tokenbudget(total_tokens=1000)
def test_alpha():
    spend("alpha")


@pytest.mark.tokenbudget
def test_beta():
    spend("beta")
"""
FIGURES = {"alpha": [[100, 50]], "beta": [[200, 20], [300, 30]]}


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions must not append to the step summary of a CI job running this suite."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def make_suite(pytester: pytest.Pytester, figures: dict[str, Any] | None = None, ini: str = "") -> None:
    pytester.makepyfile(test_inner=INNER)
    set_figures(pytester, figures or FIGURES)
    pytester.makeini("[pytest]\n" + ini)


def set_figures(pytester: pytest.Pytester, figures: dict[str, Any]) -> None:
    (pytester.path / "figures.json").write_text(json.dumps(figures))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def read_baseline(pytester: pytest.Pytester, name: str = "tokenbudget-baseline.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / name).read_text())
    return data


# --- tolerances ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5%", Tolerance(5.0)),
        ("12.5 %", Tolerance(12.5)),
        ("0", Tolerance(0.0, False)),
        ("1_000", Tolerance(1000.0, False)),
        ("0.01", Tolerance(0.01, False)),
        ("0%", Tolerance(0.0)),
    ],
)
def test_parse_tolerance(text: str, expected: Tolerance) -> None:
    assert baseline.parse_tolerance(text) == expected


@pytest.mark.parametrize("text", ["five", "-1%", "nan", "inf", "", "%"])
def test_bad_tolerance_says_what_is_wrong(text: str) -> None:
    with pytest.raises(BaselineError, match="is not a tolerance"):
        baseline.parse_tolerance(text)


def test_compare_fail_syntax_like_pytest_benchmark() -> None:
    parsed = baseline.parse_compare_fail(["total_tokens:5% cost_usd:10%", "llm_calls:0,tool_calls:2"])
    assert parsed == {
        "total_tokens": Tolerance(5.0),
        "cost_usd": Tolerance(10.0),
        "llm_calls": Tolerance(0.0, False),
        "tool_calls": Tolerance(2.0, False),
    }
    assert str(parsed["total_tokens"]) == "5%" and str(parsed["llm_calls"]) == "0"
    assert baseline.parse_compare_fail(["llm_calls:1", "llm_calls:0"])["llm_calls"] == Tolerance(0.0, False)


def test_compare_fail_errors_name_the_item() -> None:
    with pytest.raises(BaselineError, match=r"'tokens:5%': unknown metric 'tokens'; metrics: total_tokens, "):
        baseline.parse_compare_fail(["tokens:5%"])
    with pytest.raises(BaselineError, match="expected METRIC:TOLERANCE"):
        baseline.parse_compare_fail(["total_tokens=5%"])


# --- comparison ----------------------------------------------------------------------------------------------


def entry(**figures: Any) -> dict[str, Any]:
    usage = {
        "total_tokens": 14_230,
        "input_tokens": 14_000,
        "output_tokens": 230,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": 0.045,
        "llm_calls": 3,
        "tool_calls": 2,
    }
    metrics = {
        "max_repeat": 1,
        "max_identical": 1,
        "resends": 0,
        "cache_hit_rate": 0.0,
        "duplicate_context_tokens": 0,
        "preambles": 0,
        "preamble_rate": 0.0,
    }
    for key, value in figures.items():
        (usage if key in usage else metrics)[key] = value
    return entry_of(usage, metrics)


def test_entry_holds_every_metric() -> None:
    assert set(entry()) == set(baseline.METRICS)
    assert {
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "total_tokens",
        "cost_usd",
        "llm_calls",
        "tool_calls",
        "max_repeat",
        "duplicate_context_tokens",
    } <= set(baseline.METRICS)


def test_growth_beyond_tolerance_is_a_regression_with_the_issue_message() -> None:
    old = entry()
    new = entry(total_tokens=17_901, input_tokens=17_600, output_tokens=301, cost_usd=0.0566)
    result = compare(old, new, Tolerances.parse("5%", ["cost_usd:30%"]), source="tokenbudget-baseline.json")
    assert result.status == "regressed" and result.failed
    lines = result.message().splitlines()
    assert lines[0] == (
        "token regression: total_tokens 14,230 -> 17,901 (+25.8%, tolerance 5%); "
        "input_tokens 14,000 -> 17,600 (+25.7%, tolerance 5%); output_tokens 230 -> 301 (+30.9%, tolerance 5%)"
    )
    assert lines[1] == "  other changes: cost_usd $0.045000 -> $0.056600 (+25.8%)"
    assert "tokenbudget-baseline.json" in lines[2] and "--tokenbudget-update-baseline" in lines[2]
    deltas = result.as_dict()["deltas"]
    assert deltas["total_tokens"] == {
        "old": 14_230,
        "new": 17_901,
        "change": 3_671,
        "percent": 25.8,
        "tolerance": "5%",
        "regressed": True,
    }
    assert deltas["cost_usd"]["regressed"] is False
    assert result.as_dict()["regressed"] == ["total_tokens", "input_tokens", "output_tokens"]


def test_growth_within_tolerance_passes() -> None:
    result = compare(entry(), entry(total_tokens=14_900, input_tokens=14_670))  # +4.7%
    assert result.status == "within" and not result.failed and result.note() is None


def test_growth_exactly_at_the_tolerance_passes() -> None:
    assert compare(entry(total_tokens=1000), entry(total_tokens=1050), Tolerances.parse("5%")).status == "within"
    assert compare(entry(total_tokens=1000), entry(total_tokens=1051), Tolerances.parse("5%")).failed


def test_shrink_is_listed_as_tightenable() -> None:
    result = compare(entry(), entry(total_tokens=12_000, input_tokens=11_770))
    assert result.status == "improved" and not result.failed
    assert result.note() == (
        "baseline can be tightened: total_tokens 14,230 -> 12,000 (-15.7%), input_tokens 14,000 -> 11,770 (-15.9%)"
    )


def test_no_entry_is_new_and_fails_only_when_strict() -> None:
    assert compare(None, entry()).status == "new"
    assert not compare(None, entry()).failed
    strict = compare(None, entry(), strict=True, source="b.json")
    assert strict.failed and strict.status == "missing"
    assert strict.message() == (
        "no baseline entry in b.json (--tokenbudget-strict): record one with --tokenbudget-update-baseline"
    )


def test_absolute_tolerances() -> None:
    tolerances = Tolerances.parse("5%", ["llm_calls:0", "total_tokens:1000"])
    assert compare(entry(), entry(llm_calls=4), tolerances).regressions[0].describe(True) == (
        "llm_calls 3 -> 4 (+33.3%, tolerance 0)"
    )
    assert compare(entry(), entry(total_tokens=15_230), tolerances).status == "within"  # +1000, absolute
    assert compare(entry(), entry(total_tokens=15_231), tolerances).failed
    # 0% would be relative: any growth fails too.
    assert compare(entry(), entry(output_tokens=231), Tolerances.parse("0%")).failed


def test_growth_from_zero_always_exceeds_a_relative_tolerance() -> None:
    result = compare(entry(max_repeat=0), entry(max_repeat=3), Tolerances.parse("50%"))
    assert result.failed
    assert result.regressions[0].describe(True) == "max_repeat 0 -> 3 (from 0, tolerance 50%)"


def test_cache_hit_rate_regresses_when_it_drops() -> None:
    dropped = compare(entry(cache_hit_rate=0.8), entry(cache_hit_rate=0.5))
    assert dropped.failed
    assert dropped.regressions[0].describe(True) == "cache_hit_rate 80.0% -> 50.0% (-37.5%, tolerance 5%)"
    rose = compare(entry(cache_hit_rate=0.5), entry(cache_hit_rate=0.8))
    assert rose.status == "improved"


def test_cache_reads_only_fail_with_their_own_tolerance() -> None:
    old, new = entry(cache_read_tokens=0), entry(cache_read_tokens=5_000)
    assert compare(old, new).status == "within"
    assert compare(old, new, Tolerances.parse("5%", ["cache_read_tokens:10%"])).failed


def test_unknown_usage_is_a_regression_unknown_detector_figure_is_not() -> None:
    usage_unknown = compare(entry(), entry(total_tokens=None))
    assert usage_unknown.failed
    assert usage_unknown.regressions[0].describe(True) == "total_tokens 14,230 -> unknown (tolerance 5%)"
    assert not compare(entry(), entry(preamble_rate=None)).failed
    assert compare(entry(total_tokens=None), entry()).status == "within"  # nothing to hold it against


def test_check_is_not_enforced_while_updating() -> None:
    options = baseline.Options(Path("b.json"), {"t::a": entry()}, update=True)
    check = options.check("t::a")
    assert check.enforce is False and check.entry == entry()
    assert options.check("t::other").entry is None


# --- the file ------------------------------------------------------------------------------------------------


def test_dumps_is_sorted_indented_and_stable() -> None:
    one = {"b::t": entry(), "a::t": entry(total_tokens=1)}
    two = {"a::t": dict(reversed(list(entry(total_tokens=1).items()))), "b::t": entry()}
    text = baseline.dumps(one)
    assert text == baseline.dumps(two)
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.splitlines()[1].startswith('  "schema"')
    assert text.index('"a::t"') < text.index('"b::t"')
    assert baseline.parse(text, "x") == {"a::t": entry(total_tokens=1), "b::t": entry()}


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("{not json", "not a JSON baseline"),
        ('{"tests": {}}', "not a pytest-tokenbudget baseline"),
        ('{"schema": "pytest-tokenbudget/baseline", "version": 99, "tests": {}}', "version 99 is not supported"),
        ('{"schema": "pytest-tokenbudget/baseline", "version": 1, "tests": []}', '"tests" must be an object'),
        ('{"schema": "pytest-tokenbudget/baseline", "version": 1, "tests": {"t": 3}}', "entry 't' must be an"),
        (
            '{"schema": "pytest-tokenbudget/baseline", "version": 1, "tests": {"t": {"total_tokens": "9"}}}',
            "total_tokens = '9' is not a number",
        ),
    ],
)
def test_malformed_baseline_names_the_file(tmp_path: Path, text: str, fault: str) -> None:
    path = tmp_path / "tokenbudget-baseline.json"
    path.write_text(text)
    with pytest.raises(BaselineError) as err:
        baseline.load(path)
    assert str(err.value).startswith(f"{path}: ") and fault in str(err.value)


def test_missing_baseline_is_empty(tmp_path: Path) -> None:
    assert baseline.load(tmp_path / "absent.json") == {}


def test_updated_replaces_keeps_and_prunes() -> None:
    old = {"t::a": entry(total_tokens=1), "t::b": entry(total_tokens=2), "t::gone": entry(total_tokens=3)}
    fresh = {"t::a": entry(total_tokens=10), "t::new": entry(total_tokens=20)}
    kept = baseline.updated(old, fresh, ran=["t::a", "t::new", "t::b"])
    assert kept.entries == {**old, **fresh}
    assert kept.skipped == ("t::b",)  # ran but did not pass: old entry kept
    everything = baseline.prune_scope(argparse.Namespace(), ["."], Path("/repo"), Path("/repo"))
    pruned = baseline.updated(old, fresh, ran=["t::a", "t::new", "t::b"], prune=everything)
    assert sorted(pruned.entries) == ["t::a", "t::b", "t::new"] and pruned.pruned == ("t::gone",)
    elsewhere = baseline.prune_scope(argparse.Namespace(), ["other"], Path("/repo"), Path("/repo"))
    assert baseline.updated(old, fresh, ran=["t::a"], prune=elsewhere).pruned == ()


def test_prune_scope_is_the_collected_paths() -> None:
    root = Path("/repo")
    option = argparse.Namespace(ignore=["examples/slow"], ignore_glob=["*_flaky.py"])
    args = ["examples", "tests/test_x.py::TestA", "tests/test_y.py::test_p[1]", "../shared/test_s.py"]
    scope = baseline.prune_scope(option, args, root, root)
    covered = {
        "examples/test_a.py::test_one": True,
        "examples/deep/test_b.py::TestB::test_two[x]": True,
        "examples2/test_a.py::test_one": False,  # a sibling folder whose name starts the same
        "tests/test_z.py::test_one": False,  # `pytest examples` never prunes tests/
        "tests/test_x.py::TestA::test_one": True,
        "tests/test_x.py::TestAB::test_one": False,
        "tests/test_x.py::test_free": False,
        "tests/test_y.py::test_p[1]": True,
        "tests/test_y.py::test_p[2]": False,
        "examples/slow/test_s.py::test_one": False,  # --ignore
        "examples/test_flaky.py::test_one": False,  # --ignore-glob
        "../shared/test_s.py::test_one": True,  # node ids of files outside the rootdir
    }
    assert {nodeid: scope.covers(nodeid) for nodeid in covered} == covered
    # arguments are relative to the invocation folder, node ids to the rootdir
    from_examples = baseline.prune_scope(argparse.Namespace(), ["test_a.py"], root / "examples", root)
    assert from_examples.covers("examples/test_a.py::test_one") and not from_examples.covers("test_a.py::test_one")


@pytest.mark.parametrize(("dest", "flag"), baseline.SELECTION_OPTIONS)
def test_prune_refuses_test_selection(dest: str, flag: str) -> None:
    with pytest.raises(BaselineError, match=f"^--tokenbudget-prune cannot be combined with {flag}: "):
        baseline.prune_scope(argparse.Namespace(**{dest: ["x"]}), ["."], Path("/repo"), Path("/repo"))
    unset = {"keyword": "", "markexpr": "", "deselect": None, "lf": False, "collectonly": False}
    baseline.prune_scope(argparse.Namespace(**unset), ["."], Path("/repo"), Path("/repo"))


# --- a real pytest session -----------------------------------------------------------------------------------


def test_update_writes_a_reviewable_baseline(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    result = run(pytester, "--tokenbudget-update-baseline")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["tokenbudget baseline tokenbudget-baseline.json: 2 written, 0 kept"])
    path = pytester.path / "tokenbudget-baseline.json"
    text = path.read_text()
    data = json.loads(text)
    assert text == baseline.dumps(baseline.parse(text, "x"))  # canonical form
    assert data["schema"] == "pytest-tokenbudget/baseline" and data["version"] == 1
    assert list(data["tests"]) == ["test_inner.py::test_alpha", "test_inner.py::test_beta"]
    beta = data["tests"]["test_inner.py::test_beta"]
    assert (beta["input_tokens"], beta["output_tokens"], beta["total_tokens"], beta["llm_calls"]) == (500, 50, 550, 2)
    assert beta["cost_usd"] == pytest.approx(500 * 3e-6 + 50 * 15e-6)
    assert set(beta) == set(baseline.METRICS)
    # a second update with the same spend rewrites the same bytes
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    assert path.read_text() == text


def test_compare_growth_fails_the_test_with_the_deltas(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    set_figures(pytester, {"alpha": [[100, 50]], "beta": [[260, 20], [300, 30]]})  # +60 of 550: +10.9%
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_beta _*",
            "token regression: total_tokens 550 -> 610 (+10.9%, tolerance 5%); cost_usd $0.002250 -> $0.002430 "
            "(+8.0%, tolerance 5%); input_tokens 500 -> 560 (+12.0%, tolerance 5%)",
            "  baseline: tokenbudget-baseline.json; if the change is intended, accept it with "
            "--tokenbudget-update-baseline",
        ]
    )
    result.stdout.fnmatch_lines(["*test_inner.py::test_beta*+10.9%*REGRESSED: total_tokens (+2 more)*"])
    result.stdout.fnmatch_lines(["token regressions:", "  test_inner.py::test_beta: token regression: *"])
    # the baseline is only read on a normal run
    assert read_baseline(pytester)["tests"]["test_inner.py::test_beta"]["total_tokens"] == 550


def test_compare_shrink_passes_and_is_listed(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    set_figures(pytester, {"alpha": [[60, 50]], "beta": [[200, 20], [300, 30]]})
    result = run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "baseline can be tightened (run with --tokenbudget-update-baseline):",
            "  test_inner.py::test_alpha: total_tokens 150 -> 110 (-26.7%), cost_usd $0.001050 -> $0.000930 (-11.4%), "
            "input_tokens 100 -> 60 (-40.0%)",
        ]
    )
    result.stdout.fnmatch_lines(["*test_inner.py::test_alpha*-26.7%*ok", "*test_inner.py::test_beta*=*measured"])


def test_missing_entry_passes_with_a_note_and_fails_under_strict(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    result = run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "no baseline entry (record with --tokenbudget-update-baseline):",
            "  test_inner.py::test_alpha",
            "  test_inner.py::test_beta",
        ]
    )
    strict = run(pytester, "--tokenbudget-strict")
    strict.assert_outcomes(failed=2)
    strict.stdout.fnmatch_lines(
        [
            "no baseline entry in tokenbudget-baseline.json (--tokenbudget-strict): record one with "
            "--tokenbudget-update-baseline",
        ]
    )
    # strict with an entry for alpha only: beta still fails
    run(pytester, "--tokenbudget-update-baseline", "-k", "alpha").assert_outcomes(passed=1, deselected=1)
    run(pytester, "--tokenbudget-strict").assert_outcomes(passed=1, failed=1)


def test_per_metric_tolerances_from_option_and_ini(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    # one more call of 12 input tokens: +2.2% tokens and +1.6% cost (within 5%), but llm_calls 2 -> 3
    set_figures(pytester, {"alpha": [[100, 50]], "beta": [[200, 20], [300, 30], [12, 0]]})
    run(pytester).assert_outcomes(failed=1, passed=1)  # llm_calls +50% > 5%
    loose = run(pytester, "--tokenbudget-compare-fail=llm_calls:1", "--tokenbudget-compare-fail", "cost_usd:10%")
    loose.assert_outcomes(passed=2)
    make_suite(
        pytester,
        {"alpha": [[100, 50]], "beta": [[200, 20], [300, 30], [12, 0]]},
        ini="tokenbudget_compare_fail =\n    llm_calls:1\n    cost_usd:10%\ntokenbudget_tolerance = 1%",
    )
    strict_ini = run(pytester)  # 1% default: total +2.2% fails
    strict_ini.assert_outcomes(passed=1, failed=1)
    strict_ini.stdout.fnmatch_lines(
        [
            "token regression: total_tokens 550 -> 562 (+2.2%, tolerance 1%); input_tokens 500 -> 512 (+2.4%, "
            "tolerance 1%)",
            "  other changes: cost_usd $0.002250 -> $0.002286 (+1.6%), llm_calls 2 -> 3 (+50.0%)",
        ]
    )
    # the command line adds to (and overrides) the ini
    run(pytester, "--tokenbudget-compare-fail=total_tokens:20 input_tokens:12").assert_outcomes(passed=2)
    run(pytester, "--tokenbudget-compare-fail=total_tokens:20 input_tokens:11").assert_outcomes(passed=1, failed=1)


def test_bad_tolerance_and_baseline_are_usage_errors(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    result = run(pytester, "--tokenbudget-compare-fail=tokens:5%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tokenbudget-compare-fail*'tokens:5%': unknown metric 'tokens'*"])
    (pytester.path / "tokenbudget-baseline.json").write_text('{"schema": "pytest-tokenbudget/baseline", "version"')
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{pytester.path / 'tokenbudget-baseline.json'}: not a JSON baseline*"])
    result = run(pytester, "--tokenbudget-prune")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_update_keeps_other_entries_and_prune_drops_them(pytester: pytest.Pytester) -> None:
    make_suite(pytester, ini="tokenbudget_baseline = ci/budget.json")
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    path = pytester.path / "ci" / "budget.json"
    data = json.loads(path.read_text())
    data["tests"]["test_inner.py::test_removed"] = dict(data["tests"]["test_inner.py::test_alpha"])
    path.write_text(baseline.dumps(data["tests"]))
    set_figures(pytester, {"alpha": [[120, 50]], "beta": [[200, 20], [300, 30]]})

    result = run(pytester, "--tokenbudget-update-baseline", "-k", "alpha")
    result.stdout.fnmatch_lines(["tokenbudget baseline ci/budget.json: 1 written, 2 kept"])
    tests = json.loads(path.read_text())["tests"]
    assert sorted(tests) == ["test_inner.py::test_alpha", "test_inner.py::test_beta", "test_inner.py::test_removed"]
    assert tests["test_inner.py::test_alpha"]["total_tokens"] == 170

    result = run(pytester, "--tokenbudget-update-baseline", "--tokenbudget-prune")
    result.stdout.fnmatch_lines(["tokenbudget baseline ci/budget.json: 2 written, 0 kept, 1 pruned"])
    assert sorted(json.loads(path.read_text())["tests"]) == ["test_inner.py::test_alpha", "test_inner.py::test_beta"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["-k", "alpha"], "-k"),
        (["-m", "slow"], "-m"),
        (["--deselect", "test_inner.py::test_beta"], "--deselect"),
        (["--lf"], "--last-failed"),
        (["--sw"], "--stepwise"),
        (["--sw-skip"], "--stepwise-skip"),
        (["--co"], "--collect-only"),
    ],
)
def test_prune_with_a_test_selection_is_a_usage_error(pytester: pytest.Pytester, args: list[str], flag: str) -> None:
    """The audit's case: ``--tokenbudget-prune -k "..."`` dropped the entries of tests -k merely left out."""
    make_suite(pytester)
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    before = (pytester.path / "tokenbudget-baseline.json").read_text()
    # with the cache plugin: --lf and --sw need it
    result = pytester.runpytest("--tokenbudget-update-baseline", "--tokenbudget-prune", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --tokenbudget-prune cannot be combined with {flag}: *"])
    assert (pytester.path / "tokenbudget-baseline.json").read_text() == before


def test_prune_drops_only_entries_under_the_collected_paths(pytester: pytest.Pytester) -> None:
    """``pytest examples --tokenbudget-prune`` prunes gone tests of examples/ only; ``file::test`` only that test."""
    pytester.makeini("[pytest]\n")
    for folder, name in (("examples", "test_ex.py"), ("tests", "test_t.py")):
        (pytester.path / folder).mkdir()
        (pytester.path / folder / name).write_text(INNER)
        (pytester.path / folder / "figures.json").write_text(json.dumps(FIGURES))
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=4)
    path = pytester.path / "tokenbudget-baseline.json"
    tests = baseline.load(path)
    live = sorted(tests)
    gone = ["examples/test_ex.py::test_removed", "tests/test_t.py::test_removed", "tests/test_t.py::test_alpha[gone]"]
    baseline.save(path, {**tests, **{nodeid: tests["tests/test_t.py::test_beta"] for nodeid in gone}})

    result = run(pytester, "examples", "--tokenbudget-update-baseline", "--tokenbudget-prune")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["tokenbudget baseline tokenbudget-baseline.json: 2 written, 4 kept, 1 pruned"])
    assert sorted(baseline.load(path)) == sorted([*live, *gone[1:]])

    result = run(pytester, "tests/test_t.py::test_alpha", "--tokenbudget-update-baseline", "--tokenbudget-prune")
    result.assert_outcomes(passed=1)
    assert sorted(baseline.load(path)) == sorted([*live, gone[1]])  # test_t.py::test_removed is not test_alpha's

    run(pytester, "--tokenbudget-update-baseline", "--tokenbudget-prune").assert_outcomes(passed=4)
    assert sorted(baseline.load(path)) == live


def test_prune_is_skipped_when_the_session_stopped_early(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    pytester.makepyfile(
        test_inner=INNER.replace('def test_alpha():\n    spend("alpha")', "def test_alpha():\n    assert False")
    )
    result = run(pytester, "--tokenbudget-update-baseline", "--tokenbudget-prune", "-x")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*not written (test did not pass: test_inner.py::test_alpha)",
            "tokenbudget baseline not pruned: the session did not run to its end",
        ]
    )
    assert sorted(read_baseline(pytester)["tests"]) == ["test_inner.py::test_alpha", "test_inner.py::test_beta"]


def test_failed_and_over_budget_tests_keep_their_old_entry(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    set_figures(pytester, {"alpha": [[900, 500]], "beta": [[200, 20], [300, 30], [1, 1]]})  # alpha over 1000
    result = run(pytester, "--tokenbudget-update-baseline")
    result.assert_outcomes(passed=1, failed=1)
    tests = read_baseline(pytester)["tests"]
    assert tests["test_inner.py::test_alpha"]["total_tokens"] == 150
    assert tests["test_inner.py::test_beta"]["total_tokens"] == 552  # growth accepted: no regression on update


def test_skipped_test_is_not_compared(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    run(pytester, "--tokenbudget-update-baseline").assert_outcomes(passed=2)
    pytester.makepyfile(test_inner=INNER.replace("def test_alpha():", "def test_alpha():\n    pytest.skip('off')"))
    result = run(pytester, "--tokenbudget-json=r.json")
    result.assert_outcomes(passed=1, skipped=1)
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["tests"]["test_inner.py::test_alpha"]["baseline"] is None
    assert report["tests"]["test_inner.py::test_alpha"]["outcome"] == "skipped"
    assert "baseline can be tightened" not in result.stdout.str()


# --- SIGKILL during the write --------------------------------------------------------------------------------

# The launcher imports the writer once, then forks one writer per line on stdin and reports its pid; the test
# SIGKILLs that writer at a random moment. Each writer alternates two large baselines through the same atomic
# write `baseline.save` uses (the texts are rendered once, so the loop is all writing).
WRITER = textwrap.dedent("""
    import os
    import sys
    from pathlib import Path

    from pytest_tokenbudget import baseline
    from pytest_tokenbudget.atomic import write_atomic

    path = Path(sys.argv[1])
    texts = [baseline.dumps(baseline.parse(Path(name).read_text(), name)) for name in sys.argv[2:]]
    baseline.save(path, baseline.parse(texts[0], "first"))
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            n = 0
            while True:
                n += 1
                write_atomic(path, texts[n % len(texts)])
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)
""")


def big_baseline(seed: int, tests: int = 4000) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed)
    return {
        f"tests/test_agent_{i // 50}.py::test_case_{i}": entry(total_tokens=rng.randrange(10**6)) for i in range(tests)
    }


def test_sigkill_during_the_write_never_truncates_the_baseline(tmp_path: Path) -> None:
    versions = [baseline.dumps(big_baseline(seed)) for seed in (1, 2)]
    assert len(versions[0]) > 1_000_000  # big enough for a write to take a while
    sources = []
    for n, text in enumerate(versions):
        source = tmp_path / f"source-{n}.json"
        source.write_text(text)
        sources.append(str(source))
    target = tmp_path / "out" / "tokenbudget-baseline.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(4)
    launcher = subprocess.Popen(
        [sys.executable, str(script), str(target), *sources],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    assert launcher.stdin is not None and launcher.stdout is not None
    try:
        for kill in range(20):
            launcher.stdin.write("go\n")
            launcher.stdin.flush()
            pid = int(launcher.stdout.readline())
            time.sleep(rng.uniform(0.005, 0.1))
            os.kill(pid, signal.SIGKILL)
            status = int(launcher.stdout.readline())
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"writer {kill} was not killed"
            text = target.read_text()
            assert text in versions, f"kill {kill}: the baseline is neither the old nor the new one ({len(text)} chars)"
            baseline.parse(text, str(target))
    finally:
        launcher.stdin.close()
        assert launcher.wait(timeout=30) == 0
        launcher.stdout.close()
    leftovers = [p for p in target.parent.iterdir() if p != target]
    # Kills that landed mid-write leave the writer's temporary file behind (never a partial baseline).
    assert leftovers, "no kill interrupted a write: the test did not exercise what it claims to"
    assert all(p.name.startswith(".tokenbudget-baseline.json.") and p.suffix == ".tmp" for p in leftovers)
