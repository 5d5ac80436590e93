"""The review agent: a lead reviewer with tools, three sub-reviewers fanned out under one span, a changelog writer.

One agent, two configurations, so the four bottlenecks of the production story (and their fixes) are the only
difference between them:

=========================  ==========================================  =============================================
bottleneck                 ``WASTEFUL``                                ``TUNED``
=========================  ==========================================  =============================================
context re-fetching        re-reads the four context files before      reads them once, into a system block marked
                           every model call, sent uncached             ``cache_control`` (and caches the conversation)
retry storm                ``get_invoice`` retried up to 7 times       backoff with seeded jitter, at most 2 attempts
                           at once
fan-out duplication        the full diff (and context) to each         one identical, cached diff block shared by
                           sub-reviewer, uncached                      the three sub-reviewers
preambles                  nothing against them                        a system instruction that forbids them
=========================  ==========================================  =============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
from opentelemetry import trace

from .payments import PaymentsStub, VirtualClock
from .tools import RetryPolicy, ToolBox

MODEL = "claude-sonnet-4-6"
MAX_TOKENS = 1024
PACKAGE_DIR = Path(__file__).parent
FIXTURE_REPO = PACKAGE_DIR / "fixture_repo"
PR_NUMBER = 482
PR_PATCH = PACKAGE_DIR / "pr_482.diff"
CONTEXT_FILES = ("CLAUDE.md", "README.md", "OWNERS.md", "style.md")
FOCUS_AREAS: dict[str, str] = {
    "architecture": "layering (api -> service -> invoice, repository, payments port), where business rules live, "
    "the provider behind its port, backwards-compatible migrations",
    "security": "authorisation (scopes and ownership), what reaches the logs, idempotency of money movements, "
    "validation of amounts",
    "performance": "queries per request, work done inside database transactions, the 300 ms p99 budget",
}

LEAD_INSTRUCTIONS = (
    "You are the lead reviewer of pull requests to ledgerline, the invoicing and payments service. Review the "
    "pull request against the repository's conventions. Use read_file to read base-branch files the change "
    "touches and get_invoice to check invoices the pull request mentions. When you are done, write a short review "
    "summary: blocking findings first, each with its file, then suggestions."
)
SUB_INSTRUCTIONS = (
    "You are a sub-reviewer of a pull request to ledgerline. Review only the focus area named at the end of the "
    "request. List findings as `- [blocking|suggestion] file: what is wrong, why it matters here, the fix`, at "
    "most six."
)
CHANGELOG_INSTRUCTIONS = (
    "You write CHANGELOG entries for ledgerline, in the format style.md prescribes. Write the entry for the pull "
    "request below from its description and the review summary. Answer with the markdown entry only."
)
NO_PREAMBLE = (
    'Start with the substance. Never open with agreement, praise, thanks or filler ("You\'re absolutely right", '
    '"Great question", "Certainly", "I\'d be happy to"): the first sentence is already about the code.'
)
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}


@dataclass(frozen=True)
class Config:
    name: str
    refetch_context_every_turn: bool
    """Re-read the four context files before every model call and send them along, uncached."""
    cache_static_context: bool
    """Context in a system block with ``cache_control``; the lead's conversation cached turn by turn."""
    retry: RetryPolicy
    shared_diff_block: bool
    """Sub-reviewers get one identical, cached diff block (their focus comes after it)."""
    forbid_preambles: bool


WASTEFUL = Config(
    name="wasteful",
    refetch_context_every_turn=True,
    cache_static_context=False,
    retry=RetryPolicy(max_attempts=7, backoff=False),
    shared_diff_block=False,
    forbid_preambles=False,
)
TUNED = Config(
    name="tuned",
    refetch_context_every_turn=False,
    cache_static_context=True,
    retry=RetryPolicy(max_attempts=2, backoff=True, base_delay=0.05, jitter=0.5, seed=PR_NUMBER),
    shared_diff_block=True,
    forbid_preambles=True,
)
CONFIGS: dict[str, Config] = {config.name: config for config in (WASTEFUL, TUNED)}


@dataclass
class Review:
    summary: str
    reviews: dict[str, str]
    changelog: str
    model_calls: int = 0


def text_block(text: str, *, cached: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cached:
        block["cache_control"] = dict(EPHEMERAL)
    return block


def pr_description(patch: str) -> str:
    """The commit message of a ``git format-patch`` file: what the author says the change does."""
    head = patch.split("\n---\n", 1)[0]
    return head.split("Subject: [PATCH] ", 1)[-1].strip()


def response_text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def assistant_turn(message: anthropic.types.Message) -> dict[str, Any]:
    """The response as the assistant message of the next request (only the fields a request may carry)."""
    content: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return {"role": "assistant", "content": content}


def with_rolling_breakpoint(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A copy whose last block carries ``cache_control``: the next turn reads the whole conversation from cache."""
    copied = [{**message, "content": [dict(block) for block in message["content"]]} for message in messages]
    copied[-1]["content"][-1]["cache_control"] = dict(EPHEMERAL)
    return copied


@contextmanager
def span(name: str, **attributes: str) -> Iterator[None]:
    with trace.get_tracer(__name__).start_as_current_span(name, attributes=attributes):
        yield


class ReviewAgent:
    """Reviews one pull request patch against a repository checkout. ``client`` may point anywhere (base_url)."""

    def __init__(
        self,
        client: anthropic.Anthropic,
        config: Config,
        *,
        repo: Path = FIXTURE_REPO,
        clock: VirtualClock | None = None,
        payments: PaymentsStub | None = None,
        sleep: Callable[[float], None] | None = None,
        model: str = MODEL,
        max_turns: int = 6,
    ) -> None:
        self.client = client
        self.config = config
        self.model = model
        self.max_turns = max_turns
        self.clock = clock or VirtualClock()
        self.payments = payments or PaymentsStub(self.clock)
        self.tools = ToolBox(repo, self.payments, config.retry, sleep or self.clock.sleep)
        self.model_calls = 0
        self._context: str | None = None

    # --- the steps ------------------------------------------------------------------------------------------

    def review(self, patch: str | None = None) -> Review:
        patch = PR_PATCH.read_text(encoding="utf-8") if patch is None else patch
        with span("review.pr", **{"review.config": self.config.name, "review.pr": str(PR_NUMBER)}):
            with span("review.lead"):
                summary = self.lead_review(patch)
            with span("review.fanout"):
                reviews = {focus: self.sub_review(focus, patch, summary) for focus in FOCUS_AREAS}
            with span("review.changelog"):
                changelog = self.changelog(patch, summary)
        return Review(summary, reviews, changelog, self.model_calls)

    def lead_review(self, patch: str) -> str:
        request = f"Review pull request #{PR_NUMBER} of ledgerline. The patch (git format-patch) follows.\n\n{patch}"
        messages: list[dict[str, Any]] = [{"role": "user", "content": [*self._turn_context(), text_block(request)]}]
        tools = self.tools.definitions
        for _ in range(self.max_turns):
            sent = with_rolling_breakpoint(messages) if self.config.cache_static_context else messages
            message = self._create(system=self._system(LEAD_INSTRUCTIONS), tools=tools, messages=sent)
            messages.append(assistant_turn(message))
            if message.stop_reason != "tool_use":
                return response_text(message)
            results = [
                self.tools.run(block.name, block.input, block.id).result_block(block.id)
                for block in message.content
                if block.type == "tool_use"
            ]
            messages.append({"role": "user", "content": [*results, *self._turn_context()]})
        raise RuntimeError(f"the lead reviewer did not finish within {self.max_turns} turns")

    def sub_review(self, focus: str, patch: str, summary: str) -> str:
        shared = self.config.shared_diff_block
        diff = text_block(f"Pull request #{PR_NUMBER} (git format-patch):\n\n{patch}", cached=shared)
        lead = text_block(f"The lead reviewer's summary:\n\n{summary}", cached=shared)
        ask = text_block(f"Focus area: {focus} — {FOCUS_AREAS[focus]}.")
        if shared:
            system = self._system(SUB_INSTRUCTIONS)
        else:
            system = self._system(f"You are the {focus} sub-reviewer. {SUB_INSTRUCTIONS}")
        messages = [{"role": "user", "content": [*self._turn_context(), diff, lead, ask]}]
        return self._stream(system=system, messages=messages)

    def changelog(self, patch: str, summary: str) -> str:
        content = [
            *self._turn_context(),
            text_block(f"Pull request #{PR_NUMBER}: {pr_description(patch)}"),
            text_block(f"Review summary:\n\n{summary}"),
        ]
        messages = [{"role": "user", "content": content}]
        return response_text(self._create(system=self._system(CHANGELOG_INSTRUCTIONS), messages=messages))

    # --- context and calls ----------------------------------------------------------------------------------

    def read_context(self) -> str:
        parts = ["# Project context\n\nThe repository's own guidance, read from the base branch."]
        for name in CONTEXT_FILES:
            outcome = self.tools.read_file(name)
            parts.append(f"## {name}\n\n{outcome.content}")
        return "\n\n".join(parts)

    def _turn_context(self) -> list[dict[str, Any]]:
        """Wasteful: the four files again, as a block of this turn's user message."""
        if not self.config.refetch_context_every_turn:
            return []
        return [text_block(self.read_context())]

    def _system(self, instructions: str) -> list[dict[str, Any]]:
        if self.config.forbid_preambles:
            instructions = f"{instructions}\n\n{NO_PREAMBLE}"
        if self.config.refetch_context_every_turn:
            return [text_block(instructions)]
        if self._context is None:
            self._context = self.read_context()
        return [text_block(self._context, cached=self.config.cache_static_context), text_block(instructions)]

    def _create(self, **params: Any) -> anthropic.types.Message:
        self.model_calls += 1
        message: anthropic.types.Message = self.client.messages.create(
            model=self.model, max_tokens=MAX_TOKENS, **params
        )
        return message

    def _stream(self, **params: Any) -> str:
        self.model_calls += 1
        with self.client.messages.stream(model=self.model, max_tokens=MAX_TOKENS, **params) as stream:
            return response_text(stream.get_final_message())


def run_review(client: anthropic.Anthropic, config: str | Config) -> Review:
    """Review the fixture pull request with the named configuration (``wasteful`` or ``tuned``)."""
    chosen = CONFIGS[config] if isinstance(config, str) else config
    return ReviewAgent(client, chosen).review()
