"""A flaky payments API stand-in for the ``get_invoice`` tool, on a clock the test controls.

The real payments API rate-limits per account: under load it answers ``429`` with ``Retry-After``, and every
request that arrives while it is still busy keeps it busy. So an agent that retries at once, again and again,
never gets through, while one that waits what ``Retry-After`` asks (plus jitter) succeeds on its second try.
The clock is virtual (``VirtualClock.sleep`` advances it), so the behaviour is the same on every machine and no
test really waits.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

RETRY_AFTER_SECONDS = 0.05


class VirtualClock:
    """Seconds since the start of the run; ``sleep`` advances them instead of waiting."""

    def __init__(self) -> None:
        self._now = 0.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time ({seconds})")
        self.slept.append(seconds)
        self._now += seconds


class PaymentsError(Exception):
    """An error answer of the payments API, with the status and the body it sent."""

    def __init__(self, status: int, body: Mapping[str, Any], retry_after: float | None = None) -> None:
        super().__init__(f"payments API {status}: {json.dumps(body, sort_keys=True)}")
        self.status = status
        self.body = dict(body)
        self.retry_after = retry_after


INVOICES: dict[str, dict[str, Any]] = {
    "in_42": {
        "id": "in_42",
        "customer_id": "acct_7",
        "status": "refunded",
        "currency": "EUR",
        "total_cents": 8500,
        "captured_cents": 8500,
        "payment_intent_id": "pi_3OxL2k",
        "refunds": [
            {"id": "re_1PqA", "amount_cents": 1000, "created_at": "2025-03-13T16:02:11Z"},
            {"id": "re_1PqB", "amount_cents": 7500, "created_at": "2025-03-13T16:04:40Z"},
        ],
        "environment": "staging",
    },
}


class PaymentsStub:
    """The payments API's invoice lookup: busy until ``busy_until``, and every refused request extends it.

    It starts under load (busy for ``RETRY_AFTER_SECONDS``), so the first request of a run is always refused.
    """

    def __init__(
        self,
        clock: VirtualClock,
        invoices: Mapping[str, Mapping[str, Any]] = INVOICES,
        *,
        retry_after: float = RETRY_AFTER_SECONDS,
    ) -> None:
        self.clock = clock
        self.invoices = {key: dict(value) for key, value in invoices.items()}
        self.retry_after = retry_after
        self.busy_until = clock.now() + retry_after
        self.requests = 0
        self.refused = 0

    def get_invoice(self, invoice_id: str) -> dict[str, Any]:
        self.requests += 1
        now = self.clock.now()
        if now < self.busy_until:
            self.refused += 1
            self.busy_until = now + self.retry_after
            body = {
                "error": {
                    "type": "rate_limited",
                    "message": "Too many requests for account acct_ledgerline; retry after the delay in Retry-After.",
                }
            }
            raise PaymentsError(429, body, retry_after=self.retry_after)
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise PaymentsError(404, {"error": {"type": "not_found", "message": f"no invoice {invoice_id}"}})
        return copy.deepcopy(invoice)
