"""The worked example: the review agent held to token budgets, replayed from the committed cassettes.

The tuned agent passes every budget. The wasteful one fails each bottleneck's budgets: one strict xfail per
limit (re-fetching has two: identical tool calls and the cache hit rate), so a detector that stops firing turns the
run red (an xfail that passes is a failure); two limits in one xfail would hide either one going quiet. Only a budget
violation counts as the expected failure (``raises=``); a cassette miss or an agent error is a real failure.

All tests of one configuration share its cassette (``wasteful.yaml``, ``tuned.yaml``): the agent is
deterministic, so each test replays the same recorded run and judges it by its own budgets.
"""

from __future__ import annotations

import json

import anthropic
import pytest

from examples.review_agent import run_review
from pytest_tokenbudget import BudgetExceeded
from pytest_tokenbudget.plugin import TokenBudget

WASTEFUL = "wasteful.yaml"
TUNED = "tuned.yaml"
TUNED_BUDGETS = {
    "total_tokens": 60_000,
    "cost_usd": 0.12,
    "max_repeated_tool_calls": 2,
    "max_identical_tool_calls": 2,
    "min_cache_hit_rate": 0.6,
    "max_duplicate_context_tokens": 0,
    "forbid_preamble": True,
}


def expect_over(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, raises=BudgetExceeded, reason=reason)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param("wasteful", marks=pytest.mark.tokenbudget(cassette=WASTEFUL)),
        pytest.param("tuned", marks=pytest.mark.tokenbudget(cassette=TUNED)),
    ],
)
def test_full_review(config: str, review_client: anthropic.Anthropic, tokenbudget: TokenBudget) -> None:
    """Both configurations do the same review; only what it costs differs (measured, compared in the summary)."""
    review = run_review(review_client, config)
    assert review.model_calls == tokenbudget.usage.llm_calls == 8
    assert "require_owner(caller, invoice)" in review.summary
    assert set(review.reviews) == {"architecture", "security", "performance"}
    assert "POST /invoices/{id}/refunds" in review.changelog
    found = {finding.detector for finding in tokenbudget.findings}
    if config == "tuned":  # only the one retry after a 429 (two identical get_invoice runs) is left
        assert found <= {"repeated_tool_calls", "identical_tool_calls"}, [str(f) for f in tokenbudget.findings]
        assert tokenbudget.metrics["max_repeat"] == tokenbudget.metrics["max_identical"] == 2
        assert "consistent with the description" in review.summary
    else:
        assert {"repeated_tool_calls", "identical_tool_calls", "cache", "duplicate_context", "preamble"} <= found
        assert tokenbudget.metrics["max_repeat"] == 7
        assert "payments API kept answering 429" in review.summary


@pytest.mark.tokenbudget(cassette=TUNED, **TUNED_BUDGETS)
def test_tuned_agent_passes_every_budget(review_client: anthropic.Anthropic, tokenbudget: TokenBudget) -> None:
    run_review(review_client, "tuned")
    storm = [call for call in tokenbudget.tool_calls if call.name == "get_invoice"]
    assert [call.error for call in storm] == ["rate_limited", None]  # one 429, then backoff and success
    assert json.loads(storm[0].arguments) == {"id": "in_42"}


@expect_over("retry storm: get_invoice is retried 7 times at once against a rate-limited API")
@pytest.mark.tokenbudget(cassette=WASTEFUL, max_repeated_tool_calls=2)
def test_wasteful_retry_storm(review_client: anthropic.Anthropic) -> None:
    run_review(review_client, "wasteful")


@expect_over("re-fetching: the four context files are re-read with the same arguments before every model call")
@pytest.mark.tokenbudget(cassette=WASTEFUL, max_identical_tool_calls=2)
def test_wasteful_refetching_identical_tool_calls(review_client: anthropic.Anthropic) -> None:
    run_review(review_client, "wasteful")


@expect_over("re-fetching: the static context is re-sent uncached, so no input is read from the prompt cache")
@pytest.mark.tokenbudget(cassette=WASTEFUL, min_cache_hit_rate=0.6)
def test_wasteful_refetching_cache_hit_rate(review_client: anthropic.Anthropic) -> None:
    run_review(review_client, "wasteful")


@expect_over("fan-out duplication: each sub-reviewer gets the full diff and context, uncached")
@pytest.mark.tokenbudget(cassette=WASTEFUL, max_duplicate_context_tokens=0)
def test_wasteful_fanout_duplication(review_client: anthropic.Anthropic) -> None:
    run_review(review_client, "wasteful")


@expect_over("preambles: nothing tells the model not to open with agreement")
@pytest.mark.tokenbudget(cassette=WASTEFUL, forbid_preamble=True)
def test_wasteful_preambles(review_client: anthropic.Anthropic) -> None:
    run_review(review_client, "wasteful")
