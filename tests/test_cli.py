"""The ``tokenbudget`` command: inspect, diff, merge and check, and its exit statuses (0 fine, 1 regression,
2 unusable input, named)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from pytest_tokenbudget import baseline, reports
from pytest_tokenbudget.cli import main
from pytest_tokenbudget.result import TestResult as Result  # not "Test*": pytest would try to collect it

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "real-cassettes"
CACHING = CORPUS / "openllmetry" / "test_anthropic_prompt_caching_legacy.yaml"  # 2,334 in + 389 out
CACHING_STREAM = CORPUS / "openllmetry" / "test_anthropic_prompt_caching_stream_legacy.yaml"  # 2,338 + 422
TOOLS = CORPUS / "openllmetry" / "test_anthropic_tools_legacy.yaml"  # 514 + 152
PARALLEL = CORPUS / "pydantic-ai" / "test_multiple_parallel_tool_calls.yaml"  # 1,194 + 279


@pytest.fixture(autouse=True)
def _corpus() -> None:
    if not CACHING.is_file():
        pytest.fail(f"the real-cassette corpus is missing: expected {CORPUS}; these tests must not be skipped")


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def usage(total: int, cost: float, calls: int = 1) -> dict[str, Any]:
    return {
        "input_tokens": total - 10,
        "output_tokens": 10,
        "total_tokens": total,
        "cost_usd": cost,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "llm_calls": calls,
        "tool_calls": 0,
        "unknown_calls": 0,
        "cache_hit_rate": 0.0,
    }


METRICS = {
    "max_repeat": 0,
    "max_identical": 0,
    "resends": 0,
    "cache_hit_rate": 0.0,
    "duplicate_context_tokens": 0,
    "preambles": 0,
    "preamble_rate": 0.0,
}


def write_report(
    path: Path,
    tests: dict[str, tuple[int, float]],
    outcome: str = "passed",
    tolerance: str = "5%",
    outcomes: dict[str, str] | None = None,
) -> Path:
    results = [
        Result(nodeid, usage=usage(total, cost), metrics=dict(METRICS), outcome=(outcomes or {}).get(nodeid, outcome))
        for nodeid, (total, cost) in tests.items()
    ]
    settings = {"tolerance": {"default": tolerance, "per_metric": {}}}
    path.write_text(reports.dumps(reports.document(results, settings=settings, timing={"started": "x"})))
    return path


def edit_json(path: Path, change: Any) -> Path:
    """Rewrite the JSON document at ``path`` with ``change(document)`` applied (to break it on purpose)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def write_baseline(path: Path, tests: dict[str, tuple[int, float]]) -> Path:
    entries = {nodeid: baseline.entry_of(usage(total, cost), METRICS) for nodeid, (total, cost) in tests.items()}
    baseline.save(path, entries)
    return path


# --- the command itself --------------------------------------------------------------------------------------


def test_python_dash_m_and_the_console_script() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_tokenbudget", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0
    for command in ("inspect", "diff", "merge", "check"):
        assert command in done.stdout
    (script,) = entry_points(group="console_scripts", name="tokenbudget")
    assert script.value == "pytest_tokenbudget.cli:main" and script.load() is main


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys)
    assert status == 2 and "required" in err
    status, _, err = cli(capsys, "check", "r.json")
    assert status == 2 and "--baseline" in err


# --- inspect -------------------------------------------------------------------------------------------------


def test_inspect_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "inspect", CACHING, TOOLS)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == (
        f"{CACHING}: 2 LLM calls, 0 tool calls, input 2,334 (cache read 1,163, write 1,163), "
        "output 389, hit rate 50%, cost $0.0106"
    )
    assert "POST /v1/messages" in lines[3] and "1,167" in lines[3] and "1,163" in lines[3]
    assert any("get_weather" in line for line in lines)  # the tool call the response requested
    assert lines[-1] == (
        "TOTAL (2 cassettes): 3 LLM calls, 2 tool calls, input 2,848 (cache read 1,163, "
        "write 1,163), output 541, hit rate 41%, cost $0.0144"
    )


def test_inspect_price_override(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "inspect", "--json", "--price", "claude-3-5-sonnet* input=1 output=1", CACHING)
    assert status == 0
    cassette = json.loads(out)["cassettes"][0]
    # call 1: 4 uncached + 1,163 written at 1.25x + 187 out; call 2: 4 + 1,163 read at 0.1x + 202 out
    assert cassette["usage"]["cost_usd"] == pytest.approx((4 + 1163 * 1.25 + 187 + 4 + 1163 * 0.1 + 202) / 1e6)
    status, _, err = cli(capsys, "inspect", "--price", "claude input=abc output=1", CACHING)
    assert status == 2 and "--price" in err and "'abc' is not a number" in err


@pytest.mark.parametrize(
    ("name", "content", "fault"),
    [
        ("broken.yaml", "interactions: [unclosed", "not a vcrpy YAML cassette"),
        ("list.yaml", "- 1\n- 2\n", "pre-1.0 vcrpy format"),
        ("other.json", '{"tests": {}}', "top-level key 'interactions' missing"),
        ("bad.json", "{", "not a vcrpy JSON cassette"),
        ("binary.yaml", b"\xff\xfe\x00", "cannot read cassette"),
    ],
)
def test_inspect_unreadable_input_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | bytes, fault: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    status, out, err = cli(capsys, "inspect", path)
    assert status == 2 and out == ""
    assert err.startswith(f"tokenbudget: error: {path}: ") and fault in err


def test_inspect_missing_and_empty_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys, "inspect", tmp_path / "nope.yaml")
    assert status == 2 and f"{tmp_path / 'nope.yaml'}: no such file or folder" in err
    (tmp_path / "empty").mkdir()
    status, _, err = cli(capsys, "inspect", tmp_path / "empty")
    assert status == 2 and "no cassettes (*.yaml, *.yml, *.json) in this folder" in err


def test_inspect_a_folder_recurses_and_reads_json_cassettes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    (tmp_path / "deep" / "er").mkdir(parents=True)
    shutil.copy(CACHING, tmp_path / "deep" / "er" / "a.yml")
    parsed = yaml.safe_load(PARALLEL.read_text())  # pydantic-ai keeps JSON bodies decoded: plain data
    (tmp_path / "b.json").write_text(json.dumps(parsed))
    (tmp_path / "notes.txt").write_text("not a cassette")
    status, out, _ = cli(capsys, "inspect", "--json", tmp_path)
    assert status == 0
    result = json.loads(out)
    assert [Path(c["path"]).name for c in result["cassettes"]] == ["b.json", "a.yml"]
    assert result["totals"]["usage"]["total_tokens"] == 2334 + 389 + 1194 + 279


def test_inspect_numbers_interactions_from_1_with_their_hit_rate(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "inspect", "--json", CACHING)
    assert status == 0
    rows = json.loads(out)["cassettes"][0]["interactions"]
    assert [(r["number"], r["index"]) for r in rows] == [(1, 0), (2, 1)]
    # call 1 writes the 1,163-token prefix (nothing read), call 2 reads it: 1,163 of its 1,167 input tokens
    assert [r["cache_hit_rate"] for r in rows] == [0.0, round(1163 / 1167, 6)]
    status, out, _ = cli(capsys, "inspect", CACHING)
    header, _, first, second = out.splitlines()[1:5]
    assert header.split()[:2] == ["#", "request"] and "hit rate" in header
    assert first.split()[0] == "1" and first.split()[9] == "0%"
    assert second.split()[0] == "2" and second.split()[9] == "100%"


def test_inspect_reports_span_only_metrics_as_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    """A cassette has no parent spans and no executed tool calls: what needs them is unknown, not 0."""
    status, out, _ = cli(capsys, "inspect", "--json", PARALLEL)
    assert status == 0
    result = json.loads(out)
    (cassette,) = result["cassettes"]
    assert cassette["metrics"]["duplicate_context_tokens"] is None and cassette["metrics"]["resends"] is None
    assert set(cassette["unknown_metrics"]) == {"duplicate_context_tokens", "resends"}
    assert cassette["metrics"]["max_identical"] == 1  # what the requested tool calls do show
    assert (
        result["notes"][0] == "from cassettes alone: only requested tool calls are visible; sibling structure unknown"
    )
    status, out, _ = cli(capsys, "inspect", PARALLEL)
    lines = out.splitlines()
    assert lines[-4:-1] == result["notes"]
    assert lines[-3].startswith("duplicate_context_tokens unknown: needs the parent spans")


def _llm_interaction(body: str | bytes, headers: dict[str, list[str]] | None = None) -> dict[str, Any]:
    request = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    return {
        "request": {
            "method": "POST",
            "uri": "http://127.0.0.1:9/v1/messages",
            "body": json.dumps(request),
            "headers": {"content-type": ["application/json"]},
        },
        "response": {
            "status": {"code": 200, "message": "OK"},
            "headers": {"content-type": ["application/json"], **(headers or {})},
            "body": {"string": body},
        },
    }


def _message(usage: Any) -> str:
    content = [{"type": "text", "text": "Done."}]
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": content}
    return json.dumps({**body, "usage": usage})


def test_inspect_notes_malformed_responses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each unreadable response is a call of unknown usage with a note naming the fault; nothing crashes and
    no bad figure (a negative count) is added into the totals."""
    import yaml

    interactions = [
        _llm_interaction("<html>502 Bad Gateway</html>"),
        _llm_interaction(_message({"input_tokens": -5, "output_tokens": 12.5})),
        _llm_interaction(b"\x8b\x00 not brotli", {"content-encoding": ["br"]}),
        _llm_interaction(b"\x1f\x8b truncated gzip", {"content-encoding": ["gzip"]}),
        _llm_interaction(_message({"input_tokens": "12", "output_tokens": 3, "cache_read_input_tokens": -1})),
        _llm_interaction(_message(None)),
        _llm_interaction(_message({"input_tokens": 10, "output_tokens": 2})),
    ]
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump({"interactions": interactions, "version": 1}))
    status, out, err = cli(capsys, "inspect", "--json", path)
    assert (status, err) == (0, "")
    rows = json.loads(out)["cassettes"][0]["interactions"]
    assert [r["notes"] for r in rows] == [
        ["the response body is not JSON: '<html>502 Bad Gateway</html>'"],
        [
            "usage.input_tokens = -5 is negative: treated as unknown",
            "usage.output_tokens = 12.5 is not a whole number: treated as unknown",
        ],
        ["the response body is br-encoded and could not be decoded (install brotli to read it)"],
        ["the response body is not JSON: " + repr("\x1f\ufffd truncated gzip")],  # vcrpy keeps what gunzip refuses
        [
            "usage.input_tokens = '12' is not a whole number: treated as unknown",
            "usage.cache_read_input_tokens = -1 is negative: treated as unknown",
        ],
        ["the response reported no usage"],
        [],
    ]
    assert all(r["llm"] and r["input_tokens"] is None for r in rows[:6])
    assert (rows[4]["output_tokens"], rows[4]["cache_read_tokens"]) == (3, None)
    assert (rows[6]["input_tokens"], rows[6]["output_tokens"]) == (10, 2)
    cassette = json.loads(out)["cassettes"][0]
    assert cassette["usage"]["unknown_calls"] == 6 and cassette["usage"]["input_tokens"] is None
    status, out, _ = cli(capsys, "inspect", path)
    assert "  #1: the response body is not JSON: '<html>502 Bad Gateway</html>'" in out.splitlines()
    assert "  #2: usage.input_tokens = -5 is negative: treated as unknown" in out.splitlines()


# --- diff ----------------------------------------------------------------------------------------------------


def test_diff_two_cassettes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "diff", "--json", CACHING, CACHING_STREAM)
    assert status == 0
    result = json.loads(out)
    name = f"{CACHING.name} -> {CACHING_STREAM.name}"
    item = result["items"][name]
    assert item["status"] == "changed"
    assert (item["old"]["total_tokens"], item["new"]["total_tokens"]) == (2723, 2760)
    assert item["change"]["total_tokens"] == 37 and item["change"]["output_tokens"] == 33
    assert result["totals"]["change"]["total_tokens"] == 37
    status, out, _ = cli(capsys, "diff", CACHING, CACHING_STREAM)
    assert status == 0
    assert out.splitlines()[0] == "cassette -> cassette"
    row = next(line for line in out.splitlines() if name in line)
    assert "2,723" in row and "2,760" in row and "+37" in row and "+1.4%" in row


def test_diff_two_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "t").mkdir(parents=True)
    (new / "t").mkdir(parents=True)
    shutil.copy(CACHING, old / "t" / "review.yaml")
    shutil.copy(CACHING_STREAM, new / "t" / "review.yaml")  # re-recorded
    shutil.copy(TOOLS, old / "t" / "same.yaml")
    shutil.copy(TOOLS, new / "t" / "same.yaml")
    shutil.copy(TOOLS, old / "t" / "gone.yaml")
    shutil.copy(CACHING, new / "t" / "added.yaml")
    status, out, _ = cli(capsys, "diff", "--json", old, new)
    assert status == 0
    result = json.loads(out)
    assert {k: v["status"] for k, v in result["items"].items()} == {"t/review.yaml": "changed", "t/same.yaml": "same"}
    assert result["only_in_new"] == {
        "t/added.yaml": {"figures": result["only_in_new"]["t/added.yaml"]["figures"], "outcome": None}
    }
    assert result["only_in_new"]["t/added.yaml"]["figures"]["total_tokens"] == 2723
    assert list(result["only_in_old"]) == ["t/gone.yaml"]
    assert result["only_in_old"]["t/gone.yaml"]["figures"]["total_tokens"] == 666
    # the total compares like with like: the cassettes on both sides only
    assert result["totals"]["items"] == 2 and result["totals"]["change"]["total_tokens"] == 37
    status, out, _ = cli(capsys, "diff", "--changed", old, new)
    lines = out.splitlines()
    assert "t/same.yaml" not in out
    assert lines[-4:] == [
        "only in OLD (1, not in TOTAL):",
        "  t/gone.yaml: 666 tokens, $0.0038",
        "only in NEW (1, not in TOTAL):",
        "  t/added.yaml: 2,723 tokens, $0.0106",
    ]
    assert any(line.lstrip().startswith("TOTAL (2 on both sides)") and "+37" in line for line in lines)


def test_diff_reports_and_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = write_report(tmp_path / "before.json", {"t::a": (1000, 0.01), "t::b": (500, 0.005)})
    after = write_report(tmp_path / "after.json", {"t::a": (1250, 0.0125), "t::c": (10, 0.0001)})
    status, out, _ = cli(capsys, "diff", "--json", before, after)
    assert status == 0
    result = json.loads(out)
    assert result["kind"] == "report -> report"
    assert result["items"]["t::a"]["change"] == {
        "total_tokens": 250,
        "input_tokens": 250,
        "output_tokens": 0,
        "cost_usd": 0.0025,
        "llm_calls": 0,
    }
    assert list(result["items"]) == ["t::a"]
    assert result["only_in_old"] == {"t::b": {"figures": usage_figures(500, 0.005), "outcome": "passed"}}
    assert result["only_in_new"] == {"t::c": {"figures": usage_figures(10, 0.0001), "outcome": "passed"}}
    assert result["totals"]["change"]["total_tokens"] == 250
    status, out, _ = cli(capsys, "diff", before, after)
    assert any(
        "t::a" in line and "+250" in line and "+25.0%" in line and "+$0.0025" in line for line in out.splitlines()
    )
    assert any(
        line.lstrip().startswith("TOTAL (1 on both sides)") and "+250" in line and "+$0.0025" in line
        for line in out.splitlines()
    )
    assert "only in OLD (1, not in TOTAL):\n  t::b (passed): 500 tokens, $0.0050\n" in out
    committed = write_baseline(tmp_path / "tokenbudget-baseline.json", {"t::a": (1000, 0.01)})
    status, out, _ = cli(capsys, "diff", "--json", committed, after)
    assert status == 0 and json.loads(out)["kind"] == "baseline -> report"
    assert json.loads(out)["items"]["t::a"]["change"]["total_tokens"] == 250


def usage_figures(total: int, cost: float) -> dict[str, Any]:
    figures = usage(total, cost)
    return {key: figures[key] for key in ("total_tokens", "input_tokens", "output_tokens", "cost_usd", "llm_calls")}


def test_diff_lists_one_sided_tests_apart_with_their_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit's case: the baseline holds passed tests only, so the report's xfailed tests are on one side.
    They must not turn an unchanged suite into "TOTAL +160%"."""
    committed = write_baseline(tmp_path / "tokenbudget-baseline.json", {"t::a": (1000, 0.01), "t::b": (600, 0.006)})
    report = write_report(
        tmp_path / "report.json",
        {"t::a": (1000, 0.01), "t::b": (600, 0.006), "t::storm": (1600, 0.05), "t::later": (1, 0.0)},
        outcomes={"t::storm": "xfailed", "t::later": "skipped"},
    )
    status, out, _ = cli(capsys, "diff", "--json", committed, report)
    assert status == 0
    result = json.loads(out)
    assert result["totals"]["change"] == {k: 0 for k in result["totals"]["change"]}
    assert {k: v["outcome"] for k, v in result["only_in_new"].items()} == {"t::later": "skipped", "t::storm": "xfailed"}
    assert result["only_in_old"] == {}
    status, out, _ = cli(capsys, "diff", committed, report)
    lines = out.splitlines()
    total = next(line for line in lines if "TOTAL" in line)
    assert total.split() == [
        "TOTAL",
        "(2",
        "on",
        "both",
        "sides)",
        "1,600",
        "1,600",
        "+0",
        "+0.0%",
        "$0.0160",
        "$0.0160",
        "+$0.0000",
    ]
    assert lines[-3:] == [
        "only in NEW (2, not in TOTAL):",
        "  t::later (skipped): 1 tokens, $0.0000",
        "  t::storm (xfailed): 1,600 tokens, $0.0500",
    ]
    # a baseline on the NEW side has no outcomes: just the figures
    status, out, _ = cli(capsys, "diff", report, committed)
    assert "only in OLD (2, not in TOTAL):\n  t::later (skipped): 1 tokens" in out


def test_diff_refuses_mixed_or_unknown_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = write_report(tmp_path / "r.json", {"t::a": (1, 0.0)})
    status, _, err = cli(capsys, "diff", CACHING, report)
    assert status == 2 and "cannot compare cassette with report" in err
    other = tmp_path / "package.json"
    other.write_text('{"name": "x"}')
    status, _, err = cli(capsys, "diff", other, report)
    assert status == 2 and f"{other}: neither a cassette, a pytest-tokenbudget report nor a baseline" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "pytest-tokenbudget/report", "version": 1, "tests": {"t": {}}}')
    status, _, err = cli(capsys, "diff", broken, report)
    assert status == 2 and f"{broken}: test 't' lacks usage" in err


# --- merge ---------------------------------------------------------------------------------------------------


def test_merge_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_report(tmp_path / "shard-1.json", {"t::b": (500, 0.005)})
    two = write_report(tmp_path / "shard-2.json", {"t::a": (1000, 0.01), "t::c": (10, 0.0001)})
    out_path = tmp_path / "out" / "merged.json"
    out_path.parent.mkdir()
    status, out, _ = cli(capsys, "merge", one, two, "-o", out_path)
    assert status == 0 and out == f"{out_path}: 3 tests from 2 reports\n"
    merged = reports.load(out_path)
    assert list(merged["tests"]) == ["t::a", "t::b", "t::c"]
    assert merged["totals"]["tests"] == 3 and merged["totals"]["usage"]["total_tokens"] == 1510
    assert merged["totals"]["usage"]["cost_usd"] == pytest.approx(0.0151)
    assert merged["timing"] == {"shards": [{"source": str(one), "started": "x"}, {"source": str(two), "started": "x"}]}
    assert out_path.read_text() == reports.dumps(merged)


def test_merge_errors_name_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_report(tmp_path / "shard-1.json", {"t::a": (500, 0.005)})
    two = write_report(tmp_path / "shard-2.json", {"t::a": (1000, 0.01)})
    out_path = tmp_path / "merged.json"
    status, _, err = cli(capsys, "merge", one, two, "-o", out_path)
    assert status == 2 and f"test 't::a' is in both {one} and {two}" in err
    assert not out_path.exists()
    truncated = tmp_path / "truncated.json"
    truncated.write_text(one.read_text()[:100])
    status, _, err = cli(capsys, "merge", one, truncated, "-o", out_path)
    assert status == 2 and f"{truncated}: not a JSON report" in err
    future = tmp_path / "future.json"
    future.write_text(json.dumps({**json.loads(one.read_text()), "version": 7}))
    status, _, err = cli(capsys, "merge", future, "-o", out_path)
    assert status == 2 and f"{future}: report version 7 is not supported" in err
    status, _, err = cli(capsys, "merge", tmp_path / "absent.json", "-o", out_path)
    assert status == 2 and f"{tmp_path / 'absent.json'}: cannot read the report" in err


def test_merge_into_a_missing_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_report(tmp_path / "shard-1.json", {"t::a": (500, 0.005)})
    out_path = tmp_path / "typo" / "merged.json"
    status, out, err = cli(capsys, "merge", one, "-o", out_path)
    assert (status, out) == (2, "")
    assert err == f"tokenbudget: error: {out_path}: cannot write the merged report: no such folder {out_path.parent}\n"
    assert not out_path.parent.exists()


def test_merge_refuses_shards_run_with_different_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_report(tmp_path / "shard-1.json", {"t::a": (500, 0.005)})
    two = write_report(tmp_path / "shard-2.json", {"t::b": (500, 0.005)}, tolerance="20%")
    out_path = tmp_path / "merged.json"
    status, _, err = cli(capsys, "merge", one, two, "-o", out_path)
    assert status == 2 and not out_path.exists()
    assert err == (
        f"tokenbudget: error: {one} and {two} were run with different settings: tolerance = "
        f'{{"default": "5%", "per_metric": {{}}}} in {one}, {{"default": "20%", "per_metric": {{}}}} in {two}\n'
    )
    three = edit_json(
        write_report(tmp_path / "shard-3.json", {"t::c": (1, 0.0)}), lambda d: d["settings"].update(strict=True)
    )
    status, _, err = cli(capsys, "merge", one, three, "-o", out_path)
    assert status == 2 and f"strict = (absent) in {one}, true in {three}" in err
    same = write_report(tmp_path / "shard-4.json", {"t::d": (1, 0.0)})
    assert cli(capsys, "merge", one, same, "-o", out_path)[0] == 0
    assert reports.load(out_path)["settings"] == {"tolerance": {"default": "5%", "per_metric": {}}}


@pytest.mark.parametrize(
    ("command", "change", "fault"),
    [
        (
            "merge",
            lambda d: d["tests"]["t::a"]["usage"].update(total_tokens="abc"),
            "test 't::a': usage.total_tokens = 'abc' is not a number or null",
        ),
        (
            "diff",
            lambda d: d["tests"]["t::a"]["usage"].update(cost_usd=[1]),
            "test 't::a': usage.cost_usd = [1] is not a number or null",
        ),
        ("check", lambda d: d.update(settings="zzz"), "settings = 'zzz' must be an object"),
        (
            "check",
            lambda d: d["tests"]["t::a"].update(usage={k: str(v) for k, v in usage(1000, 0.01).items()}),
            "test 't::a': usage.input_tokens = '990' is not a number or null",
        ),
        (
            "check",
            lambda d: d["settings"]["tolerance"].update(per_metric="total_tokens:1%"),
            "settings.tolerance: per_metric = 'total_tokens:1%' must be an object of metric -> tolerance",
        ),
        ("check", lambda d: d["tests"]["t::a"].update(outcome=None), "test 't::a': outcome = None must be a string"),
        ("check", lambda d: d["tests"]["t::a"]["metrics"].update(resends=float("nan")), "metrics.resends = nan is not"),
    ],
)
def test_malformed_reports_exit_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, change: Any, fault: str
) -> None:
    bad = edit_json(write_report(tmp_path / "bad.json", {"t::a": (1000, 0.01)}), change)
    good = write_report(tmp_path / "good.json", {"t::a": (1000, 0.01)})
    committed = write_baseline(tmp_path / "b.json", {"t::a": (1000, 0.01)})
    commands: dict[str, list[str | Path]] = {
        "merge": ["merge", good, bad, "-o", tmp_path / "merged.json"],
        "diff": ["diff", good, bad],
        "check": ["check", bad, "--baseline", committed],
    }
    status, out, err = cli(capsys, *commands[command])
    assert (status, out) == (2, "")
    assert err.startswith(f"tokenbudget: error: {bad}: ") and fault in err, err
    assert "Traceback" not in err


def test_unexpected_errors_name_the_input_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug met while reading one input still exits 2 naming that file, never with a traceback."""
    from pytest_tokenbudget import detectors

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(detectors, "analyse", broken)
        status, _, err = cli(capsys, "inspect", CACHING, TOOLS)
        assert status == 2 and err == f"tokenbudget: error: {CACHING}: cannot read it: RuntimeError: boom\n"
        folder = tmp_path / "cassettes"
        folder.mkdir()
        shutil.copy(TOOLS, folder / "tools.yaml")
        status, _, err = cli(capsys, "diff", folder, folder)
        assert (
            status == 2 and err == f"tokenbudget: error: {folder / 'tools.yaml'}: cannot read it: RuntimeError: boom\n"
        )
    report = write_report(tmp_path / "r.json", {"t::a": (1000, 0.01)})
    committed = write_baseline(tmp_path / "b.json", {"t::a": (1000, 0.01)})
    with monkeypatch.context() as patch:
        patch.setattr(baseline, "entry_of", broken)
        status, _, err = cli(capsys, "check", report, "--baseline", committed)
        assert status == 2
        assert err == f"tokenbudget: error: {report}: cannot compare test 't::a' with {committed}: RuntimeError: boom\n"
    with monkeypatch.context() as patch:
        patch.setattr(reports, "merge", broken)
        status, _, err = cli(capsys, "merge", report, "-o", tmp_path / "m.json")
        assert status == 2 and err == "tokenbudget: error: merge: RuntimeError: boom\n"


# --- check ---------------------------------------------------------------------------------------------------


def test_check_exit_status_follows_the_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    committed = write_baseline(tmp_path / "b.json", {"t::a": (1000, 0.01), "t::b": (500, 0.005)})
    fine = write_report(tmp_path / "fine.json", {"t::a": (1040, 0.0104), "t::b": (400, 0.004)})
    status, out, _ = cli(capsys, "check", fine, "--baseline", committed)
    assert status == 0
    assert out.splitlines() == [
        "tighten t::b: baseline can be tightened: total_tokens 500 -> 400 (-20.0%), cost_usd $0.005000 -> "
        "$0.004000 (-20.0%), input_tokens 490 -> 390 (-20.4%)",
        "2 compared, 0 regressed, 1 improved, 0 new (tolerance 5%)",
    ]
    grown = write_report(tmp_path / "grown.json", {"t::a": (1100, 0.0104), "t::new": (1, 0.0)})
    status, out, _ = cli(capsys, "check", grown, "--baseline", committed)
    assert status == 1
    assert out.splitlines()[:2] == [
        "FAIL t::a",
        "  token regression: total_tokens 1,000 -> 1,100 (+10.0%, tolerance 5%); input_tokens 990 -> "
        "1,090 (+10.1%, tolerance 5%)",
    ]
    assert "new t::new: no baseline entry" in out
    assert (
        cli(
            capsys,
            "check",
            grown,
            "--baseline",
            committed,
            "--compare-fail",
            "total_tokens:10%",
            "--compare-fail",
            "input_tokens:100",
        )[0]
        == 0
    )
    assert cli(capsys, "check", grown, "--baseline", committed, "--tolerance", "11%")[0] == 0
    status, out, _ = cli(capsys, "check", grown, "--baseline", committed, "--tolerance", "11%", "--strict")
    assert status == 1 and "FAIL t::new" in out and "(--tokenbudget-strict)" in out


def test_check_uses_the_tolerance_the_session_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    committed = write_baseline(tmp_path / "b.json", {"t::a": (1000, 0.01)})
    loose = write_report(tmp_path / "loose.json", {"t::a": (1100, 0.01)}, tolerance="20%")
    assert cli(capsys, "check", loose, "--baseline", committed)[0] == 0
    assert cli(capsys, "check", loose, "--baseline", committed, "--tolerance", "5%")[0] == 1


def test_check_skips_tests_that_did_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    committed = write_baseline(tmp_path / "b.json", {"t::a": (1000, 0.01)})
    skipped = write_report(tmp_path / "s.json", {"t::a": (0, 0.0)}, outcome="skipped")
    status, out, _ = cli(capsys, "check", skipped, "--baseline", committed)
    assert status == 0
    assert out.splitlines() == [
        "skipped t::a: not compared",
        "0 compared, 0 regressed, 0 improved, 0 new, 1 skipped (tolerance 5%)",
    ]


def test_check_labels_tests_by_their_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    committed = write_baseline(tmp_path / "b.json", {"t::a": (1000, 0.01)})
    report = write_report(
        tmp_path / "r.json",
        {"t::a": (1000, 0.01), "t::storm": (9000, 0.9), "t::later": (0, 0.0), "t::fan": (9000, 0.9)},
        outcomes={"t::storm": "xfailed", "t::fan": "xfailed", "t::later": "skipped"},
    )
    status, out, _ = cli(capsys, "check", report, "--baseline", committed, "--strict")
    assert status == 0
    assert out.splitlines() == [
        "xfailed t::fan: not compared",
        "skipped t::later: not compared",
        "xfailed t::storm: not compared",
        "1 compared, 0 regressed, 0 improved, 0 new, 1 skipped, 2 xfailed (tolerance 5%)",
    ]


def test_check_unusable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = write_report(tmp_path / "r.json", {"t::a": (1, 0.0)})
    status, _, err = cli(capsys, "check", report, "--baseline", tmp_path / "absent.json")
    assert status == 2 and f"{tmp_path / 'absent.json'}: no such baseline file" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "pytest-tokenbudget/baseline", "version": 1, "tests": {"t::a": {"cost_usd": "1"}}}')
    status, _, err = cli(capsys, "check", report, "--baseline", bad)
    assert status == 2 and f"{bad}: entry 't::a': cost_usd = '1' is not a number" in err
    status, _, err = cli(capsys, "check", bad, "--baseline", bad)
    assert status == 2 and f"{bad}: not a pytest-tokenbudget report" in err
    good = write_baseline(tmp_path / "good.json", {"t::a": (1, 0.0)})
    status, _, err = cli(capsys, "check", report, "--baseline", good, "--compare-fail", "tokens:1")
    assert status == 2 and "unknown metric 'tokens'" in err
