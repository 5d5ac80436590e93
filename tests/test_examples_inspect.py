"""``tokenbudget inspect cassettes/`` agrees with the session table of the main job (``pytest examples``).

The plugin measures a test from its spans and the traffic it replayed; ``inspect`` reads only the cassette
files. For the example suite both must give the same usage and cost, cassette by cassette.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_tokenbudget import cli
from pytest_tokenbudget.report import fmt_cost, fmt_int

REPO = Path(__file__).resolve().parents[1]
KEYS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "total_tokens", "llm_calls")


def inspect_json(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    capsys.readouterr()
    assert cli.main(["inspect", str(path), "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_inspect_agrees_with_the_example_session_table(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TOKENBUDGET_RECORD_MODE", raising=False)
    monkeypatch.delenv("REVIEW_AGENT_EMULATOR_URL", raising=False)  # the committed cassettes' URL
    report = pytester.path / "report.json"
    session = pytester.runpytest_subprocess(
        str(REPO / "examples"), "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO),
        "-p", "no:cacheprovider", f"--tokenbudget-json={report}", timeout=300,
    )  # fmt: skip
    session.assert_outcomes(passed=3, xfailed=5)
    tests = json.loads(report.read_text(encoding="utf-8"))["tests"]

    inspected = inspect_json(capsys, REPO / "cassettes")
    by_path = {Path(c["path"]).resolve(): c for c in inspected["cassettes"]}
    assert len(tests) == 8
    for nodeid, test in tests.items():
        cassette = by_path.get((REPO / test["cassette"]).resolve())
        assert cassette is not None, f"{nodeid}: its cassette {test['cassette']} is not in the inspect output"
        assert {k: test["usage"][k] for k in KEYS} == {k: cassette["usage"][k] for k in KEYS}, nodeid
        assert test["usage"]["cost_usd"] == pytest.approx(cassette["usage"]["cost_usd"], abs=1e-8), nodeid

    for config in ("tuned", "wasteful"):
        usage = by_path[(REPO / "cassettes/examples/test_review_agent" / f"{config}.yaml").resolve()]["usage"]
        table_row = f"*test_full_review[[]{config}[]]*{fmt_int(usage['input_tokens'])}*{fmt_cost(usage['cost_usd'])}*"
        comparison_row = f"{config} *{fmt_int(usage['input_tokens'])}*{fmt_int(usage['total_tokens'])}*"
        session.stdout.fnmatch_lines([table_row, comparison_row])
