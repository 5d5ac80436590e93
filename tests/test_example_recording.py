"""Recording is shown working: the README's re-record command, run in a temporary copy of the examples.

``TOKENBUDGET_RECORD_MODE=all pytest examples`` records from the emulator the examples' conftest starts; the
replay (record mode ``none``, no server) must reproduce the recorded usage, and the new cassettes must say
what the committed ones say.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "cassettes" / "examples" / "test_review_agent"
CASSETTES = ("tuned.yaml", "wasteful.yaml")
RERECORD = "TOKENBUDGET_RECORD_MODE=all pytest examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def interactions(path: Path) -> list[dict[str, Any]]:
    """Each interaction's URI, request body (as JSON) and response body: what a recording decides."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        {
            "uri": item["request"]["uri"],
            "request": json.loads(item["request"]["body"]),
            "response": item["response"]["body"]["string"],
        }
        for item in data["interactions"]
    ]


def usages(report: Path) -> dict[str, dict[str, Any]]:
    return {nodeid: test["usage"] for nodeid, test in json.loads(report.read_text(encoding="utf-8"))["tests"].items()}


def test_rerecording_the_examples_replays_to_the_recorded_usage(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = [name for name in CASSETTES if not (COMMITTED / name).is_file()]
    assert not missing, f"committed example cassettes missing in {COMMITTED}: {missing}; record them with {RERECORD}"
    shutil.copytree(REPO / "examples", pytester.path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    pytester.makeini("[pytest]\npythonpath = .\naddopts = -p no:cacheprovider\n")
    port = free_port()  # not the committed URL's port: a parallel run of the examples may be recording on it
    monkeypatch.setenv("REVIEW_AGENT_EMULATOR_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TOKENBUDGET_RECORD_MODE", "all")  # exactly the README's command
    recorded = pytester.runpytest_subprocess("examples", "--tokenbudget-json=recorded.json", timeout=300)
    recorded.assert_outcomes(passed=3, xfailed=5)
    recorded.stdout.fnmatch_lines(["*review agent: wasteful vs tuned (measured)*", "tuned saves * tokens (*%)"])
    new = pytester.path / "cassettes" / "examples" / "test_review_agent"
    assert sorted(p.name for p in new.iterdir()) == sorted(CASSETTES)

    monkeypatch.delenv("TOKENBUDGET_RECORD_MODE")
    assert not listening(port), "the emulator must be gone after recording: replay has to work without a server"
    replayed = pytester.runpytest_subprocess("examples", "--tokenbudget-json=replayed.json", timeout=300)
    replayed.assert_outcomes(passed=3, xfailed=5)
    assert not listening(port)

    recorded_usage = usages(pytester.path / "recorded.json")
    assert len(recorded_usage) == 8
    assert usages(pytester.path / "replayed.json") == recorded_usage
    for name in CASSETTES:
        fresh, committed = interactions(new / name), interactions(COMMITTED / name)
        assert all(f":{port}/v1/messages" in item["uri"] for item in fresh)
        for item in fresh + committed:
            del item["uri"]
        assert fresh == committed, f"{name}: the committed cassette is stale; re-record it with {RERECORD}"
