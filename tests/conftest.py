"""Keep the developer's, CI's and the plugin's own environment changes out of the plugin's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_tokenbudget.capture import CONTENT_MODE_ENV

REPO = Path(__file__).resolve().parents[1]
ISOLATED = (
    "GITHUB_STEP_SUMMARY",  # set by GitHub Actions: reports would be appended to the real job summary
    "TOKENBUDGET_RECORD_MODE",
    CONTENT_MODE_ENV,  # in-process inner runs set it: it must not leak into this session, nor ours into theirs
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "PYTHONPATH",
)


@pytest.fixture(autouse=True)
def _isolated_environment() -> Iterator[None]:
    # Not monkeypatch: sharing it would reorder the teardown of tests' own monkeypatching.
    saved = {name: os.environ.pop(name) for name in ISOLATED if name in os.environ}
    # Inner runs in a subprocess import `examples` and the inner suites' helpers from the repository.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved.get("PYTHONPATH")]))
    yield
    for name in ISOLATED:
        os.environ.pop(name, None)
    os.environ.update(saved)
