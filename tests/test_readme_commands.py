"""The README's two fresh-machine commands are exactly what CI runs (`.ci/run`), so neither drifts."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Fresh machine: the two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README: the fresh-machine section has no bash block"
    return [line for line in block[1].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for command in commands:
        assert command in ci, f".ci/run does not run the README command {command!r}"
    assert ci.index(commands[0]) < ci.index(commands[1])
    assert "rm -rf .venv" in ci[: ci.index(commands[0])]  # a clean virtualenv, never a leftover one
