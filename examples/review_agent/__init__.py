"""The worked example: a small code-review agent on the real ``anthropic`` SDK, in a wasteful and a tuned setup.

    client = anthropic.Anthropic(base_url=emulator.base_url, api_key="test")
    review = run_review(client, "tuned")

`agent` has the agent and its two configurations, `tools` the tools and their retry policy, `payments` the
flaky payments API behind ``get_invoice``, `script` what the emulated model answers. ``fixture_repo/`` is the
repository under review and ``pr_482.diff`` the pull request.
"""

from __future__ import annotations

from .agent import CONFIGS, FIXTURE_REPO, MODEL, PR_PATCH, TUNED, WASTEFUL, Config, Review, ReviewAgent, run_review
from .payments import PaymentsError, PaymentsStub, VirtualClock
from .script import review_model
from .tools import RetryPolicy, ToolBox

__all__ = [
    "CONFIGS",
    "FIXTURE_REPO",
    "MODEL",
    "PR_PATCH",
    "TUNED",
    "WASTEFUL",
    "Config",
    "PaymentsError",
    "PaymentsStub",
    "RetryPolicy",
    "Review",
    "ReviewAgent",
    "ToolBox",
    "VirtualClock",
    "review_model",
    "run_review",
]
