"""HTTP handlers for invoices: parse, authorise, call one service method, render. No business rules here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from billing.invoice import Invoice


class InvoiceService(Protocol):
    def get(self, invoice_id: str) -> Invoice: ...

    def pay(self, invoice_id: str, payment_method_id: str) -> Invoice: ...


@dataclass(frozen=True)
class Caller:
    account_id: str
    scopes: frozenset[str]


class ForbiddenError(Exception):
    """The caller may not do this; rendered as HTTP 403 (or 404 when the invoice is another account's)."""


def require_scope(caller: Caller, scope: str) -> None:
    if scope not in caller.scopes:
        raise ForbiddenError(f"scope {scope!r} required")


def require_owner(caller: Caller, invoice: Invoice) -> None:
    if invoice.customer_id != caller.account_id and "support:impersonate" not in caller.scopes:
        raise ForbiddenError("not your invoice")


def render(invoice: Invoice) -> dict[str, object]:
    return {
        "id": invoice.id,
        "status": invoice.status.value,
        "currency": invoice.currency,
        "total_cents": invoice.total_cents,
    }


def get_invoice(service: InvoiceService, caller: Caller, invoice_id: str) -> dict[str, object]:
    require_scope(caller, "invoices:read")
    invoice = service.get(invoice_id)
    require_owner(caller, invoice)
    return render(invoice)


def pay_invoice(service: InvoiceService, caller: Caller, invoice_id: str, payment_method_id: str) -> dict[str, object]:
    require_scope(caller, "invoices:pay")
    require_owner(caller, service.get(invoice_id))
    return render(service.pay(invoice_id, payment_method_id))
