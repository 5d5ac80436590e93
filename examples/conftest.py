"""The example suite's fixtures and its report: the review agent against the emulator, replayed or recorded.

Replay (record mode ``none``, the default) starts no server and needs no network: the cassettes under
``cassettes/examples/`` answer. Any other record mode (``TOKENBUDGET_RECORD_MODE=all pytest examples``) starts the
Messages API emulator on `EMULATOR_URL`. Both modes use the same URL, so the recorded URIs match on replay. The
emulator is a fresh one per test on that fixed port: every recording starts from an empty prompt cache and the
same ids, so tests that share a cassette record byte-identical files. Recording runs serially (one port).

At the end of the session the wasteful and the tuned full runs are compared (`review_agent.savings`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest

EMULATOR_URL_ENV = "REVIEW_AGENT_EMULATOR_URL"
EMULATOR_URL = os.environ.get(EMULATOR_URL_ENV) or "http://127.0.0.1:48765"
SESSION_PLUGIN = "tokenbudget-session"
FULL_RUN = "test_review_agent.py::test_full_review"

collect_ignore_glob = ["review_agent/fixture_repo/*"]


def live_model(config: pytest.Config) -> bool:
    """Whether requests reach a server: recording, or the plugin turned off. Replay needs none."""
    plugin = config.pluginmanager.get_plugin(SESSION_PLUGIN)
    return plugin is None or plugin.record_mode != "none"


@pytest.fixture
def review_client(request: pytest.FixtureRequest) -> Iterator[anthropic.Anthropic]:
    """An ``anthropic.Anthropic`` client on `EMULATOR_URL`, with the emulator serving it when requests are live."""
    with ExitStack() as stack:
        if live_model(request.config):
            from examples.emulator import Emulator
            from examples.review_agent import review_model

            parts = urlsplit(EMULATOR_URL)
            try:
                emulator = Emulator(review_model, host=parts.hostname or "127.0.0.1", port=parts.port or 80)
            except OSError as err:
                pytest.fail(
                    f"cannot start the emulator on {EMULATOR_URL} ({err}): is another recording running? Record "
                    f"serially (no -n), or set {EMULATOR_URL_ENV} to another URL for both recording and replay",
                    pytrace=False,
                )
            stack.enter_context(emulator)
        client = stack.enter_context(anthropic.Anthropic(base_url=EMULATOR_URL, api_key="example-key"))
        yield client


def _full_runs(results: list[Any]) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for result in results:
        for config in ("wasteful", "tuned"):
            if result.nodeid.endswith(f"{FULL_RUN}[{config}]"):
                runs[config] = result
    return runs


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(SESSION_PLUGIN)
    runs = _full_runs(getattr(plugin, "results", []))
    if set(runs) != {"wasteful", "tuned"}:
        return
    from examples.review_agent.savings import comparison_lines

    wasteful, tuned = runs["wasteful"], runs["tuned"]
    terminalreporter.section("review agent: wasteful vs tuned (measured)")
    try:
        lines = comparison_lines(wasteful.usage, tuned.usage, wasteful.findings)
    except ValueError as err:
        lines = [f"no comparison: {err}"]
    for line in lines:
        terminalreporter.write_line(line)
