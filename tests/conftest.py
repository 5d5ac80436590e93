"""Keep the developer's or CI's environment out of the plugin's own tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

ISOLATED = (
    "GITHUB_STEP_SUMMARY",  # set by GitHub Actions: reports would be appended to the real job summary
    "TOKENBUDGET_RECORD_MODE",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
)


@pytest.fixture(autouse=True)
def _isolated_environment() -> Iterator[None]:
    # Not monkeypatch: sharing it would reorder the teardown of tests' own monkeypatching.
    saved = {name: os.environ.pop(name) for name in ISOLATED if name in os.environ}
    yield
    for name in ISOLATED:
        os.environ.pop(name, None)
    os.environ.update(saved)
