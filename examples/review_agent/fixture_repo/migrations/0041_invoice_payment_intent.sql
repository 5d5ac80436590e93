-- why: remember which payment intent paid an invoice, for refunds and disputes.
ALTER TABLE invoices ADD COLUMN payment_intent_id TEXT;
