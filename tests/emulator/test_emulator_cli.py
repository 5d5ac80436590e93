"""``python -m examples.emulator`` serves a scenario until interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic

REPO = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "examples.emulator", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_serves_a_scenario_until_ctrl_c() -> None:
    process = spawn("--port", "0", "--scenario", "tool-loop")
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)", banner)
        assert found, f"no URL in the banner: {banner!r}"
        client = anthropic.Anthropic(base_url=found.group(1), api_key="test", max_retries=0)
        tools: Any = [{"name": "get_invoice", "input_schema": {"type": "object"}}]
        first = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=50, tools=tools, messages=[{"role": "user", "content": "Paid?"}]
        )
        assert first.stop_reason == "tool_use"
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors


def test_cli_rejects_an_unknown_scenario() -> None:
    process = spawn("--scenario", "nope")
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 2 and "unknown scenario 'nope'" in errors
