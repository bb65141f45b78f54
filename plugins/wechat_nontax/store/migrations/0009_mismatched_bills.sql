-- mismatched: the bill is in the payer's card package, but from a row version the row no longer
-- has (a reload landed after the sending try's hold ran out, its insert already at WeChat). Its
-- code and openid are kept, like an inserted order's; it is never sent again nor changed by a
-- reload, and it needs a person: compare the bill with the order, void it if it is wrong.
ALTER TABLE nontax.bill_order DROP CONSTRAINT bill_order_status_known;
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_status_known CHECK (status IN (
    'authorized', 'uploaded', 'awaiting_auth',                      -- due
    'inserted', 'duplicate', 'rejected', 'refused', 'cancelled',    -- finished
    'invalid', 'failed', 'mismatched'                               -- needs a person
));
ALTER TABLE nontax.bill_order DROP CONSTRAINT bill_order_needs_reason;
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_needs_reason CHECK (
    status NOT IN (
        'invalid', 'failed', 'rejected', 'duplicate', 'refused', 'cancelled', 'mismatched'
    ) OR reason IS NOT NULL
);
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_mismatched_has_code CHECK (
    status <> 'mismatched' OR (code IS NOT NULL AND openid IS NOT NULL AND inserted_at IS NOT NULL)
);

-- Such bills recorded before as plain `inserted`, with only their reason saying so.
UPDATE nontax.bill_order SET status = 'mismatched', updated_at = now()
 WHERE status = 'inserted' AND reason LIKE 'the bill in the card package carries row version %';
