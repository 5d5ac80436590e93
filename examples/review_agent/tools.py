"""The agent's tools (``read_file``, ``get_invoice``) and how they are run: retries, and one span per run.

Every run of a tool, each retry included, is an OpenTelemetry ``execute_tool`` span (GenAI semconv: tool name,
call id, arguments, ``error.type`` on failure), because that is how a retry storm shows in a trace and how
pytest-tokenbudget sees it. A failed run ends as an error ``tool_result`` for the model, never as an exception.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .payments import PaymentsError, PaymentsStub

TOOL_DEFINITIONS: tuple[dict[str, Any], ...] = (
    {
        "name": "read_file",
        "description": "Read a file of the repository under review (the base branch, before the pull request), "
        "as UTF-8 text.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "path relative to the repository root"}},
            "required": ["path"],
        },
    },
    {
        "name": "get_invoice",
        "description": "Look up an invoice in the payments API (staging) by id: status, amounts, captured amount "
        "and refunds.",
        "input_schema": {
            "type": "object",
            "properties": {"id": {"type": "string", "description": "invoice id, e.g. in_42"}},
            "required": ["id"],
        },
    },
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a tool that failed with a retryable error (429) is run again, and how long to wait between.

    ``backoff=False`` retries at once. With backoff the wait is ``max(Retry-After, base_delay * 2**(n-1))``
    stretched by a random factor in ``[1, 1 + jitter)`` drawn from a generator seeded with ``seed``.
    """

    max_attempts: int
    backoff: bool = False
    base_delay: float = 0.05
    jitter: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if not self.backoff:
            return 0.0
        base = max(retry_after or 0.0, self.base_delay * 2.0 ** (attempt - 1))
        return base * (1 + rng.uniform(0, self.jitter))


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool = False

    def result_block(self, tool_use_id: str) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": self.content}
        if self.is_error:
            block["is_error"] = True
        return block


@contextmanager
def tool_span(name: str, arguments: Mapping[str, Any], call_id: str | None) -> Iterator[Span]:
    """One ``execute_tool`` span (OTel GenAI semconv) around one run of a tool."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.arguments": json.dumps(dict(arguments), sort_keys=True),
    }
    if call_id:
        attributes["gen_ai.tool.call.id"] = call_id
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes) as span:
        yield span


def fail_span(span: Span, error_type: str, message: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message))


class ToolBox:
    """Runs the tools against a repository checkout and the payments API, retrying as ``retry`` says."""

    def __init__(self, repo: Path, payments: PaymentsStub, retry: RetryPolicy, sleep: Callable[[float], None]) -> None:
        self.repo = repo.resolve()
        self.payments = payments
        self.retry = retry
        self.sleep = sleep
        self._rng = random.Random(retry.seed)

    @property
    def definitions(self) -> list[dict[str, Any]]:
        return [dict(tool) for tool in TOOL_DEFINITIONS]

    def run(self, name: str, arguments: Mapping[str, Any], call_id: str | None) -> ToolOutcome:
        if name == "read_file":
            return self.read_file(str(arguments.get("path", "")), call_id)
        if name == "get_invoice":
            return self.get_invoice(str(arguments.get("id", "")), call_id)
        with tool_span(name, arguments, call_id) as span:
            fail_span(span, "unknown_tool", f"no tool named {name!r}")
        return ToolOutcome(f"unknown tool {name!r}; the tools are read_file and get_invoice", is_error=True)

    def read_file(self, path: str, call_id: str | None = None) -> ToolOutcome:
        with tool_span("read_file", {"path": path}, call_id) as span:
            target = (self.repo / path).resolve()
            if not target.is_relative_to(self.repo):
                fail_span(span, "outside_repository", path)
                return ToolOutcome(f"read_file: {path!r} is outside the repository", is_error=True)
            if not target.is_file():
                fail_span(span, "not_found", path)
                return ToolOutcome(f"read_file: no file {path!r} on the base branch", is_error=True)
            return ToolOutcome(target.read_text(encoding="utf-8"))

    def get_invoice(self, invoice_id: str, call_id: str | None = None) -> ToolOutcome:
        """Each attempt is its own run (and span); only a 429 is retried."""
        last: PaymentsError | None = None
        attempts = 0
        for attempt in range(1, self.retry.max_attempts + 1):
            attempts = attempt
            with tool_span("get_invoice", {"id": invoice_id}, call_id) as span:
                try:
                    invoice = self.payments.get_invoice(invoice_id)
                except PaymentsError as err:
                    last = err
                    fail_span(span, str(err.body.get("error", {}).get("type", err.status)), str(err))
                else:
                    return ToolOutcome(json.dumps(invoice, sort_keys=True))
            if last.status != 429 or attempt == self.retry.max_attempts:
                break
            self.sleep(self.retry.delay(attempt, last.retry_after, self._rng))
        assert last is not None
        plural = "s" if attempts > 1 else ""
        return ToolOutcome(f"get_invoice {invoice_id} failed after {attempts} attempt{plural}: {last}", is_error=True)
