"""What the emulated model answers the review agent: deterministic, decided from the request alone.

`review_model` is an emulator script (``(request_body) -> Reply``). It tells the three kinds of request apart by
what they carry (tools -> the lead reviewer; "Focus area: X" -> a sub-reviewer; "You write CHANGELOG entries" in
the system text -> the changelog writer), follows the lead's conversation by the tool calls it made, and opens every
answer with a sycophantic preamble unless the system text forbids one ("Never open with agreement"): that is the
model behaviour the wasteful configuration pays for. Serve it on its own with
``python -m examples.emulator --scenario examples.review_agent.script:review_model``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from examples.emulator import Reply, last_message, message_text, system_text, tool_results

PREAMBLE_RULE = "never open with agreement"
CHANGELOG_WRITER = "you write changelog entries"
MIGRATION = "migrations/0041_invoice_payment_intent.sql"
PREAMBLES: dict[str, str] = {
    "lead:start": "You're absolutely right! ",
    "lead:migration": "Great question! ",
    "lead:invoice": "Great point! ",
    "lead:summary": "Certainly! ",
    "architecture": "I'd be happy to review the architecture! ",
    "security": "Of course! ",
    "performance": "Absolutely! ",
    "changelog": "Sure, here is the entry.\n\n",
}

BLOCKING = """Blocking:
1. billing/api.py `refund_invoice`: no ownership check. Any caller with `invoices:refund` can refund another \
account's invoice; call `require_owner(caller, invoice)` as `get_invoice` and `pay_invoice` do (CLAUDE.md, \
Authorisation).
2. billing/api.py `refund_invoice` calls `stripe.Refund.create` itself, with `idempotency_key=str(uuid.uuid4())`. \
The provider belongs behind `PaymentsPort`, called from the service, and the key must come from our ids \
(`refund:{invoice.id}:{refund.id}`), or a retried request refunds twice.
3. billing/api.py converts the amount through a float (`int(float(...) * 100)`): 0.29 becomes 28 cents, and JPY \
has no minor unit. Parse to minor units with `Decimal` in the service.
4. The over-refund check runs in the handler without `repository.lock_invoice`: two concurrent refunds can both \
pass it. Move it into the service, under the row lock.
5. The log line writes the card fingerprint (CLAUDE.md rule 6), as an f-string (style.md).

Suggestions: `total_refunded_cents` loads the refunds one query at a time (N+1); migration 0042 adds \
`captured_cents BIGINT NOT NULL` without a default, which breaks the release still running during the deploy; \
the tests are named `test_refund_1`/`test_refund_2` and miss zero, the exact remaining amount, one cent over \
and JPY."""

SUB_REVIEWS: dict[str, str] = {
    "architecture": """- [blocking] billing/api.py: `refund_invoice` holds the refund rules (state, remaining \
amount) and calls the provider; handlers parse, authorise and call one service method. Add \
`RefundService.refund(invoice_id, amount_cents, caller)` in billing/service.py.
- [blocking] billing/api.py: `import stripe` outside billing/adapters/. Add `refund()` to `PaymentsPort` and \
implement it in stripe_adapter.py.
- [blocking] migrations/0042_invoice_refunds.sql: `captured_cents BIGINT NOT NULL` without a default fails for \
the previous release's inserts during the deploy; add `DEFAULT 0` and backfill.
- [suggestion] billing/invoice.py: `record_refund` sets `status` directly instead of going through \
`transition()`, so the table is no longer the single source of truth.
- [suggestion] billing/refunds.py: `created_at` uses `datetime.now(UTC)`, not the injected clock.""",
    "security": """- [blocking] billing/api.py: `refund_invoice` checks the scope but not ownership; add \
`require_owner(caller, invoice)` (and answer 404, not 403, for another account's invoice, as the README says).
- [blocking] billing/api.py: `idempotency_key=str(uuid.uuid4())` makes every retry a new refund; derive it from \
`refund:{invoice.id}:{refund.id}`.
- [blocking] billing/api.py: the log line carries `card.fingerprint`; the log pipeline is not PCI scoped. Log the \
invoice id and amount only.
- [blocking] billing/api.py: no validation of `amount`: a negative or zero amount reaches the provider. Refuse \
it with 422.
- [suggestion] billing/api.py: `list_refunds` renders `created_at` from provider data; fine, but document it.""",
    "performance": """- [blocking] billing/refunds.py: `total_refunded_cents` calls `refunds.get()` once per \
refund (N+1), and `refund_invoice` and `list_refunds` both use it. Load them with \
`repository.load_invoice(id, with_refunds=True)` in one query.
- [blocking] billing/api.py: the over-refund check and the write are not under `lock_invoice`, and the provider \
call happens before the transaction; keep the provider call outside, but reserve the refund under the lock first \
(CLAUDE.md rule 4).
- [suggestion] migrations/0042_invoice_refunds.sql: `refunds.invoice_id` has no index; every lookup by invoice \
scans the table.
- [suggestion] migrations/0042_invoice_refunds.sql: the backfill UPDATE rewrites every paid invoice in one \
statement; batch it.""",
}

CHANGELOG = """### Added
- Added `POST /invoices/{id}/refunds` to refund part or all of a paid invoice, and `GET /invoices/{id}/refunds` \
to list an invoice's refunds; invoices gain the `partially_refunded` state (#482). Requires migration 0042; the \
support console button follows behind the `partial_refunds` flag."""


def _opening(key: str, text: str, calm: bool) -> str:
    return text if calm else PREAMBLES[key] + text


def _tool_calls(body: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """tool_use id -> (tool name, input), over the whole conversation."""
    calls: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for message in body["messages"]:
        content = message.get("content")
        if message.get("role") == "assistant" and isinstance(content, list):
            calls.update({b["id"]: (b["name"], b["input"]) for b in content if b.get("type") == "tool_use"})
    return calls


def _result_text(result: Mapping[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, list):
        return "".join(str(block.get("text", "")) for block in content)
    return str(content or "")


def _invoice_note(result: Mapping[str, Any]) -> str:
    if result.get("is_error"):
        return (
            "Unverified: I could not check invoice in_42, the payments API kept answering 429 (rate limited), so "
            "the staging test in the description is unconfirmed."
        )
    invoice = json.loads(_result_text(result))
    refunds = " and ".join(f"{r['id']} {r['amount_cents']:,}" for r in invoice["refunds"])
    return (
        f"Invoice in_42 on staging: captured {invoice['captured_cents']:,} {invoice['currency']} cents, refunds "
        f"{refunds}, status {invoice['status']}: consistent with the description."
    )


def _lead(body: Mapping[str, Any], calm: bool) -> Reply:
    """Read the changed modules, then the last migration, then check the invoice, then sum up."""
    calls = _tool_calls(body)
    asked = [(name, dict(arguments)) for name, arguments in calls.values()]
    if not asked:
        return Reply.tool_uses(
            [("read_file", {"path": "billing/api.py"}), ("read_file", {"path": "billing/invoice.py"})],
            text=_opening("lead:start", "I'll read the two modules the patch changes, as they are on main.", calm),
        )
    if ("read_file", {"path": MIGRATION}) not in asked:
        return Reply.tool_use(
            "read_file",
            {"path": MIGRATION},
            text=_opening("lead:migration", "Next, the latest migration on main, to compare 0042 with it.", calm),
        )
    invoice_results = [r for r in tool_results(body) if calls[str(r.get("tool_use_id"))][0] == "get_invoice"]
    if not invoice_results:
        return Reply.tool_use(
            "get_invoice",
            {"id": "in_42"},
            text=_opening(
                "lead:invoice",
                "The description says in_42 was refunded in two steps on staging; let me check what the payments "
                "API recorded.",
                calm,
            ),
        )
    summary = f"Review of #482 (partial refunds).\n\n{BLOCKING}\n\n{_invoice_note(invoice_results[-1])}"
    return Reply.text(_opening("lead:summary", summary, calm))


def review_model(body: Mapping[str, Any]) -> Reply:
    """The scripted model behind the review agent (an emulator script)."""
    system = system_text(body)
    calm = PREAMBLE_RULE in system.lower()
    if any(tool.get("name") == "read_file" for tool in body.get("tools") or []):
        return _lead(body, calm)
    asked = message_text(last_message(body))
    for focus, review in SUB_REVIEWS.items():
        if f"Focus area: {focus}" in asked:
            return Reply.text(_opening(focus, review, calm))
    if CHANGELOG_WRITER in system.lower():
        return Reply.text(_opening("changelog", CHANGELOG, calm))
    raise ValueError(f"review_model: not a request of the review agent (system {system[:60]!r})")
