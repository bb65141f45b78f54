-- The backlog gauges (wechat_nontax.observability.backlog) read the oldest wait for a payer's
-- authorisation at every scrape: for `awaiting_auth` the first entry of this index (the wait
-- starts at the first 72038, `auth_wait_since`; a row without one waits since it was
-- authorised). Partial: only the orders waiting, a small index whatever the table's size; the
-- other gauges already have theirs (bill_status_count, bill_order_due_idx,
-- bill_order_unauthorized_idx, bill_request_pending_idx).
CREATE INDEX bill_order_awaiting_auth_idx
    ON nontax.bill_order ((coalesce(auth_wait_since, authorized_at)))
    WHERE status = 'awaiting_auth';
