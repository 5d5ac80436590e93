"""Invoices and the states they move through. Pure: no I/O, so every rule here is cheap to test."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class InvoiceStatus(enum.Enum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    REFUNDED = "refunded"


ALLOWED_TRANSITIONS: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    InvoiceStatus.DRAFT: frozenset({InvoiceStatus.OPEN, InvoiceStatus.VOID}),
    InvoiceStatus.OPEN: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID}),
    InvoiceStatus.PAID: frozenset({InvoiceStatus.REFUNDED}),
    InvoiceStatus.VOID: frozenset(),
    InvoiceStatus.REFUNDED: frozenset(),
}


class InvalidTransitionError(Exception):
    """An invoice was asked to move to a state its current state does not allow."""


@dataclass(frozen=True)
class LineItem:
    description: str
    quantity: int
    unit_amount_cents: int

    @property
    def amount_cents(self) -> int:
        return self.quantity * self.unit_amount_cents


@dataclass
class Invoice:
    id: str
    customer_id: str
    currency: str
    status: InvoiceStatus = InvoiceStatus.DRAFT
    lines: list[LineItem] = field(default_factory=list)
    paid_at: datetime | None = None
    payment_intent_id: str | None = None

    @property
    def total_cents(self) -> int:
        return sum(line.amount_cents for line in self.lines)

    def transition(self, target: InvoiceStatus) -> None:
        if target not in ALLOWED_TRANSITIONS[self.status]:
            raise InvalidTransitionError(f"invoice {self.id}: {self.status.value} -> {target.value} is not allowed")
        self.status = target

    def mark_paid(self, payment_intent_id: str, when: datetime) -> None:
        self.transition(InvoiceStatus.PAID)
        self.payment_intent_id = payment_intent_id
        self.paid_at = when
