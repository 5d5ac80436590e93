"""Reports for CI from a real pytest session: the versioned JSON document (checked against a structural
schema), the Markdown summary, GitHub's step summary, budget alerts, and usage in JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pytest_tokenbudget.run  # noqa: F401  (loaded once here: in-process inner sessions then reuse the SDKs)
from pytest_tokenbudget import reports
from pytest_tokenbudget.result import CallSummary
from pytest_tokenbudget.result import TestResult as Result  # not "Test*": pytest would try to collect it

INNER = """
import json
import pathlib

import pytest
from opentelemetry import trace


def spend(name):
    figures = json.loads((pathlib.Path(__file__).parent / "figures.json").read_text()).get(name, {})
    tracer = trace.get_tracer("inner-suite")
    for n, (inp, out) in enumerate(figures.get("calls", [])):
        attributes = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-6", "gen_ai.response.id": f"msg_{name}_{n}",
            "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out,
        }
        with tracer.start_as_current_span("chat", attributes=attributes):
            pass
    for tool in figures.get("tools", []):
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                      "gen_ai.tool.call.arguments": '{"path": "README.md"}'}
        with tracer.start_as_current_span(f"execute_tool {tool}", attributes=attributes):
            pass


@pytest.mark.tokenbudget(total_tokens=1000)
def test_alert():
    spend("alert")


@pytest.mark.tokenbudget
def test_grows():
    spend("grows")


@pytest.mark.tokenbudget(total_tokens=100)
def test_over():
    spend("over")


@pytest.mark.tokenbudget
def test_shrinks():
    spend("shrinks")


@pytest.mark.tokenbudget
def test_unrecorded():
    spend("unrecorded")


@pytest.mark.tokenbudget
def test_skipped():
    pytest.skip("not today")
"""
BEFORE = {
    "alert": {"calls": [[700, 150]]},
    "grows": {"calls": [[1000, 100]], "tools": ["read_file"]},
    "over": {"calls": [[50, 10]]},
    "shrinks": {"calls": [[2000, 200]]},
}
AFTER = {
    "alert": {"calls": [[700, 150]]},  # 85% of total_tokens=1000
    "grows": {"calls": [[1000, 100], [1000, 100]], "tools": ["read_file", "read_file", "read_file"]},
    "over": {"calls": [[100, 50]]},
    "shrinks": {"calls": [[1000, 200]]},
    "unrecorded": {"calls": [[10, 1]]},
}
ALL = [f"test_inner.py::test_{name}" for name in ("alert", "grows", "over", "shrinks", "skipped", "unrecorded")]


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions must not append to the step summary of a CI job running this suite."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    """The inner suite with a baseline recorded from BEFORE (test_unrecorded left out) and AFTER's figures."""
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\n")
    figures = pytester.path / "figures.json"
    figures.write_text(json.dumps(BEFORE))
    run(pytester, "--tokenbudget-update-baseline", "-k", "not unrecorded").assert_outcomes(
        passed=4, skipped=1, deselected=1
    )
    figures.write_text(json.dumps(AFTER))
    return pytester


# --- a structural schema, JSON-schema-like (no jsonschema dependency) -------------------------------------------

Spec = Any


class Opt:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec


class MapOf:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec


class ListOf:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec


class OneOf:
    def __init__(self, *values: Any) -> None:
        self.values = values


class Open:
    """An object with these keys at least (others allowed); a plain dict spec allows no other keys."""

    def __init__(self, spec: dict[str, Spec]) -> None:
        self.spec = spec


INT, NUMBER = "int", "number"


def violations(value: Any, spec: Spec, where: str = "$") -> list[str]:
    if isinstance(spec, Opt):
        return [] if value is None else violations(value, spec.spec, where)
    if isinstance(spec, OneOf):
        return [] if value in spec.values else [f"{where}: {value!r} not one of {spec.values}"]
    if spec == INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not an integer"]
    if spec == NUMBER:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not a number"]
    if isinstance(spec, type):
        return [] if isinstance(value, spec) else [f"{where}: {value!r} is not {spec.__name__}"]
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [e for n, item in enumerate(value) for e in violations(item, spec.spec, f"{where}[{n}]")]
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        return [e for key, item in value.items() for e in violations(item, spec.spec, f"{where}.{key}")]
    closed = isinstance(spec, dict)
    keys = spec if closed else spec.spec
    if not isinstance(value, dict):
        return [f"{where}: not an object"]
    errors = [f"{where}: missing {key!r}" for key in keys if key not in value]
    if closed:
        errors += [f"{where}: unexpected {key!r}" for key in value if key not in keys]
    return errors + [
        e for key, sub in keys.items() if key in value for e in violations(value[key], sub, f"{where}.{key}")
    ]


USAGE = {
    "input_tokens": Opt(INT),
    "cache_read_tokens": Opt(INT),
    "cache_write_tokens": Opt(INT),
    "output_tokens": Opt(INT),
    "reasoning_tokens": Opt(INT),
    "total_tokens": Opt(INT),
    "cost_usd": Opt(NUMBER),
    "llm_calls": INT,
    "tool_calls": INT,
    "unknown_calls": INT,
    "cache_hit_rate": Opt(NUMBER),
}
STATUSES = OneOf("ok", "warn", "over", "unknown", "measured", "regressed")
BASELINE_STATUSES = OneOf("regressed", "missing", "new", "improved", "within", "same")
DELTA = {
    "old": Opt(NUMBER),
    "new": Opt(NUMBER),
    "change": Opt(NUMBER),
    "percent": Opt(NUMBER),
    "tolerance": str,
    "regressed": bool,
}
TEST = Open(
    {
        "usage": USAGE,
        "limits": MapOf(NUMBER),
        "metrics": MapOf(Opt(NUMBER)),
        "findings": ListOf({"detector": str, "summary": str, "details": ListOf(str)}),
        "violations": ListOf(str),
        "warnings": ListOf(str),
        "notes": ListOf(str),
        "baseline": Opt(
            {
                "status": BASELINE_STATUSES,
                "entry": Opt(MapOf(Opt(NUMBER))),
                "deltas": MapOf(DELTA),
                "regressed": ListOf(str),
            }
        ),
        "status": STATUSES,
        "outcome": OneOf("passed", "failed", "skipped", "xfailed", "xpassed"),
        "cassette": Opt(str),
        "top_calls": ListOf(
            {
                "model": Opt(str),
                "input_tokens": Opt(INT),
                "cache_read_tokens": Opt(INT),
                "cache_write_tokens": Opt(INT),
                "output_tokens": Opt(INT),
                "cost_usd": Opt(NUMBER),
            }
        ),
        "scenarios": ListOf(dict),
    }
)
REPORT_SCHEMA = {
    "schema": OneOf("pytest-tokenbudget/report"),
    "version": OneOf(1),
    "settings": Open(
        {
            "baseline": str,
            "strict": bool,
            "update_baseline": bool,
            "warn_ratio": NUMBER,
            "tolerance": {"default": str, "per_metric": MapOf(str)},
        }
    ),
    "tests": MapOf(TEST),
    "totals": {
        "tests": INT,
        "usage": USAGE,
        "status": MapOf(INT),
        "outcomes": MapOf(INT),
        "baseline": MapOf(INT),
        "over_budget": INT,
        "regressions": INT,
        "warnings": INT,
    },
    "timing": Open({"started": str, "duration_seconds": NUMBER}),
}


def test_the_schema_check_catches_wrong_shapes() -> None:
    assert violations({"a": 1}, {"a": INT}) == []
    assert violations({"a": True}, {"a": INT}) == ["$.a: True is not an integer"]
    assert violations({"a": 1, "b": 2}, {"a": INT}) == ["$: unexpected 'b'"]
    assert violations({}, {"a": Opt(INT)}) == ["$: missing 'a'"]
    assert violations({"a": 1, "b": 2}, Open({"a": INT})) == []
    assert violations({"t": {"x": "1"}}, MapOf({"x": INT})) == ["$.t.x: '1' is not an integer"]


# --- the JSON report -----------------------------------------------------------------------------------------


def test_json_report_conforms_and_says_what_happened(session: pytest.Pytester) -> None:
    result = run(session, "--tokenbudget-json=reports/tokenbudget.json")
    result.assert_outcomes(passed=3, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["tokenbudget JSON report: reports/tokenbudget.json"])
    text = (session.path / "reports" / "tokenbudget.json").read_text()
    doc = json.loads(text)
    assert violations(doc, REPORT_SCHEMA) == []
    assert text == reports.dumps(doc)  # sorted, indented, trailing newline
    assert list(doc["tests"]) == ALL
    tests = doc["tests"]

    alert = tests["test_inner.py::test_alert"]
    assert (alert["status"], alert["outcome"]) == ("warn", "passed")
    assert alert["warnings"] == ["total_tokens: 85% of its limit used"]
    assert alert["limits"] == {"total_tokens": 1000}
    assert alert["cassette"] == "cassettes/test_inner/test_alert.yaml"

    grows = tests["test_inner.py::test_grows"]
    assert (grows["status"], grows["outcome"]) == ("regressed", "failed")
    assert grows["baseline"]["status"] == "regressed"
    assert grows["baseline"]["entry"]["total_tokens"] == 1100
    assert grows["baseline"]["deltas"]["total_tokens"] == {
        "old": 1100,
        "new": 2200,
        "change": 1100,
        "percent": 100.0,
        "tolerance": "5%",
        "regressed": True,
    }
    assert grows["baseline"]["deltas"]["max_repeat"]["new"] == 3
    assert [f["detector"] for f in grows["findings"]] == ["repeated_tool_calls", "identical_tool_calls"]
    assert grows["usage"]["tool_calls"] == 3 and grows["usage"]["llm_calls"] == 2

    over = tests["test_inner.py::test_over"]
    assert (over["status"], over["outcome"]) == ("over", "failed")
    assert over["violations"][0].startswith("total_tokens: 150 > limit 100")

    shrinks = tests["test_inner.py::test_shrinks"]
    assert shrinks["baseline"]["status"] == "improved" and shrinks["status"] == "measured"
    assert shrinks["notes"] == [
        "baseline can be tightened: total_tokens 2,200 -> 1,200 (-45.5%), cost_usd "
        "$0.009000 -> $0.006000 (-33.3%), input_tokens 2,000 -> 1,000 (-50.0%)"
    ]
    assert tests["test_inner.py::test_unrecorded"]["baseline"] == {
        "status": "new",
        "entry": None,
        "deltas": {},
        "regressed": [],
    }
    assert tests["test_inner.py::test_skipped"]["baseline"] is None

    totals = doc["totals"]
    assert totals["tests"] == 6 and totals["over_budget"] == 1 and totals["regressions"] == 1
    assert totals["warnings"] == 1
    assert totals["usage"]["total_tokens"] == 850 + 2200 + 150 + 1200 + 11
    assert totals["outcomes"] == {"failed": 2, "passed": 3, "skipped": 1}
    # test_over grew too (60 -> 150 tokens): over budget and regressed against its baseline
    assert totals["baseline"] == {"improved": 1, "new": 1, "not_compared": 1, "regressed": 2, "same": 1}
    assert doc["settings"] == {
        "baseline": "tokenbudget-baseline.json",
        "strict": False,
        "update_baseline": False,
        "warn_ratio": 0.8,
        "tolerance": {"default": "5%", "per_metric": {}},
    }
    assert set(doc["timing"]) == {"started", "duration_seconds"}


def test_report_shapes_are_checked_when_read(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    good = reports.document([Result("t::a", usage={"total_tokens": 1})])
    for doc, fault in [
        ({**good, "version": 2}, "report version 2 is not supported"),
        ({**good, "schema": "x"}, "not a pytest-tokenbudget report"),
        ({**good, "tests": {"t::a": {"usage": {}}}}, "test 't::a' lacks limits, metrics, findings"),
    ]:
        path.write_text(json.dumps(doc))
        with pytest.raises(reports.ReportError, match=f"^{path}: {fault}"):
            reports.load(path)
    path.write_text(reports.dumps(good))
    assert reports.load(path)["tests"]["t::a"]["usage"] == {"total_tokens": 1}


def _with_test(**fields: Any) -> dict[str, Any]:
    doc = reports.document([Result("t::a", usage={"total_tokens": 1, "cost_usd": None}, metrics={"resends": 0})])
    doc["tests"]["t::a"].update(fields)
    return doc


@pytest.mark.parametrize(
    ("doc", "fault"),
    [
        (_with_test(usage={"total_tokens": "abc"}), "test 't::a': usage.total_tokens = 'abc' is not a number or null"),
        (_with_test(usage={"total_tokens": True}), "test 't::a': usage.total_tokens = True is not a number or null"),
        (_with_test(usage=[1]), "test 't::a': usage must be an object of figures, not [1]"),
        (_with_test(metrics={"resends": "0"}), "test 't::a': metrics.resends = '0' is not a number or null"),
        (
            _with_test(metrics={"cache_hit_rate": float("inf")}),
            "test 't::a': metrics.cache_hit_rate = inf is not a number or null",
        ),
        (_with_test(limits="total_tokens=1"), "test 't::a': limits = 'total_tokens=1' must be an object"),
        (_with_test(status=None), "test 't::a': status = None must be a string"),
        (_with_test(outcome=1), "test 't::a': outcome = 1 must be a string"),
        (_with_test(findings={}), "test 't::a': findings = {} must be a list"),
        (_with_test(warnings="x"), "test 't::a': warnings = 'x' must be a list"),
        (_with_test(baseline="same"), "test 't::a': baseline = 'same' must be null or an object with a status"),
        ({**_with_test(), "settings": "zzz"}, "settings = 'zzz' must be an object"),
        ({**_with_test(), "timing": []}, "timing = [] must be an object"),
        ({**_with_test(), "settings": {"tolerance": "5%"}}, "settings.tolerance = '5%' must be an object"),
    ],
)
def test_report_figures_and_settings_are_checked_when_read(tmp_path: Path, doc: dict[str, Any], fault: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(reports.ReportError) as err:
        reports.load(path)
    assert str(err.value) == f"{path}: {fault}"


def test_merge_refuses_shards_with_different_settings() -> None:
    def shard(**settings: Any) -> dict[str, Any]:
        return reports.document([], settings={"strict": False, "warn_ratio": 0.8, **settings})

    merged = reports.merge([("a.json", shard()), ("b.json", shard())])
    assert merged["settings"] == {"strict": False, "warn_ratio": 0.8}
    with pytest.raises(reports.ReportError) as err:
        reports.merge([("a.json", shard()), ("b.json", shard()), ("c.json", shard(warn_ratio=0.5))])
    assert str(err.value) == (
        "a.json and c.json were run with different settings: warn_ratio = 0.8 in a.json, 0.5 in c.json"
    )
    with pytest.raises(reports.ReportError, match=r"^a\.json and b\.json .*: baseline = \(absent\) in a\.json"):
        reports.merge([("a.json", shard()), ("b.json", shard(baseline="ci/b.json"))])


# --- Markdown and the GitHub step summary --------------------------------------------------------------------


def test_markdown_summary_and_step_summary(session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = session.path / "step-summary.md"
    summary.write_text("# Earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run(session, "--tokenbudget-markdown=summary.md")
    result.assert_outcomes(passed=3, failed=2, skipped=1)
    markdown = (session.path / "summary.md").read_text()
    assert summary.read_text() == "# Earlier step\n" + markdown  # appended, not replaced
    lines = markdown.splitlines()
    assert lines[0] == "## Token budget"
    header = next(line for line in lines if line.startswith("|") and "test" in line)
    assert [cell.strip() for cell in header.strip("|").split("|")][-3:] == ["preambles", "vs baseline", "budget"]
    row = next(line for line in lines if "test_inner.py::test_grows" in line and line.startswith("|"))
    assert "+100.0%" in row and "REGRESSED: total_tokens (+" in row
    assert any(line.startswith("|") and "TOTAL (6 tests)" in line for line in lines)
    text = markdown
    assert (
        "### Token regressions\n\n- `test_inner.py::test_grows`: token regression: total_tokens 1,100 -> 2,200 "
        "(+100.0%, tolerance 5%)" in text
    )
    assert (
        "### Baseline can be tightened (run with --tokenbudget-update-baseline)\n\n"
        "- `test_inner.py::test_shrinks`: total_tokens 2,200 -> 1,200 (-45.5%)" in text
    )
    assert "### Budget alerts\n\n- `test_inner.py::test_alert`: total_tokens: 85% of its limit used" in text
    assert "### Over budget\n\n- `test_inner.py::test_over`: total_tokens: 150 > limit 100 (+50.0%)" in text
    assert (
        "### No baseline entry (record with --tokenbudget-update-baseline)\n\n- `test_inner.py::test_unrecorded`"
        in text
    )


def test_step_summary_alone_and_pipes_escaped(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        test_inner=INNER
        + """

@pytest.mark.tokenbudget
@pytest.mark.parametrize("case", ["a|b"])
def test_param(case):
    spend("alert")
"""
    )
    pytester.makeini("[pytest]\n")
    (pytester.path / "figures.json").write_text(json.dumps(AFTER))
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run(pytester, "-k", "param").assert_outcomes(passed=1, deselected=6)
    text = summary.read_text()
    row = next(line for line in text.splitlines() if "test_param" in line)
    assert row.startswith("| test_inner.py::test_param[a\\|b] |")  # the pipe does not split the cell
    assert row.count(" | ") == text.splitlines()[2].count(" | ")  # as many cells as the header


def test_no_step_summary_without_measured_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run(pytester).assert_outcomes(passed=1)
    assert not summary.exists()


def test_markdown_of_no_results() -> None:
    assert reports.markdown([]) == "## Token budget\n\nNo measured tests.\n"


# --- budget alerts -------------------------------------------------------------------------------------------


def test_alert_in_the_table_and_warn_ratio_from_ini(session: pytest.Pytester) -> None:
    result = run(session, "-k", "alert")
    result.assert_outcomes(passed=1, deselected=5)
    result.stdout.fnmatch_lines(
        [
            "*test_inner.py::test_alert*warn: total_tokens",
            "budget alerts:",
            "  test_inner.py::test_alert: total_tokens: 85% of its limit used",
        ]
    )
    session.makeini("[pytest]\ntokenbudget_warn_ratio = 0.9\n")
    quiet = run(session, "-k", "alert")
    assert "budget alerts" not in quiet.stdout.str()
    quiet.stdout.fnmatch_lines(["*test_inner.py::test_alert*  ok"])
    session.makeini("[pytest]\ntokenbudget_warn_ratio = 80%\n")
    bad = run(session)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*tokenbudget_warn_ratio: '80%' is not a number in (0, 1], e.g. 0.8*"])


def test_quiet_summary_counts_regressions(session: pytest.Pytester) -> None:
    result = run(session, "-q")
    result.stdout.fnmatch_lines(["tokenbudget: 6 tests, 4,411 tokens, $*, 1 over budget, 1 regressed"])


# --- JUnit XML -----------------------------------------------------------------------------------------------


def test_usage_reaches_junit_xml(session: pytest.Pytester) -> None:
    run(session, "--junitxml=junit.xml").assert_outcomes(passed=3, failed=2, skipped=1)
    tree = ET.parse(session.path / "junit.xml")
    cases = {case.get("name"): case for case in tree.iter("testcase")}

    def properties(name: str) -> dict[str, str | None]:
        return {p.get("name") or "": p.get("value") for p in cases[name].iter("property")}

    alert = properties("test_alert")
    assert alert["tokenbudget.total_tokens"] == "850"
    assert alert["tokenbudget.input_tokens"] == "700" and alert["tokenbudget.output_tokens"] == "150"
    assert alert["tokenbudget.llm_calls"] == "1" and alert["tokenbudget.status"] == "warn"
    assert float(alert["tokenbudget.cost_usd"] or "nan") == pytest.approx(700 * 3e-6 + 150 * 15e-6)
    assert properties("test_grows")["tokenbudget.baseline"] == "regressed"
    assert properties("test_unrecorded")["tokenbudget.baseline"] == "new"


# --- write failures ------------------------------------------------------------------------------------------


def test_unwritable_report_is_reported_and_fails_the_session(session: pytest.Pytester) -> None:
    (session.path / "taken").mkdir()
    (session.path / "taken" / "r.json").mkdir()  # a folder where the file should go
    result = run(session, "-k", "alert", "--tokenbudget-json=taken/r.json")
    result.stdout.fnmatch_lines(["tokenbudget: cannot write the JSON report taken/r.json: *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# --- pure pieces ---------------------------------------------------------------------------------------------


def result_of(nodeid: str, total: int | None, cost: float | None = 0.001, **extra: Any) -> Result:
    usage = {
        "input_tokens": total,
        "output_tokens": 0,
        "total_tokens": total,
        "cost_usd": cost,
        "llm_calls": 1,
        "tool_calls": 0,
        "unknown_calls": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cache_hit_rate": 0.0 if total else None,
    }
    return Result(nodeid, usage=usage, top_calls=[CallSummary("m", total, 0, 0, 0, cost)], **extra)


def test_totals_keep_unknown_unknown() -> None:
    doc = reports.document([result_of("t::a", 10), result_of("t::b", None, None)])
    assert doc["totals"]["usage"]["total_tokens"] is None and doc["totals"]["usage"]["cost_usd"] is None
    assert doc["totals"]["usage"]["llm_calls"] == 2
    assert violations(doc, {**REPORT_SCHEMA, "settings": dict, "timing": dict}) == []


def test_document_does_not_depend_on_result_order(tmp_path: Path) -> None:
    results: list[Callable[[], Result]] = [lambda: result_of("t::b", 2), lambda: result_of("t::a", 1)]
    one = reports.dumps(reports.document([f() for f in results], rootdir=tmp_path))
    two = reports.dumps(reports.document([f() for f in reversed(results)], rootdir=tmp_path))
    assert one == two and one.index('"t::a"') < one.index('"t::b"')
