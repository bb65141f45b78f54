-- Requests to refuse an order or to void its bill, and the two order statuses they end in.
--
-- The request table is a contract, like the order table: a person (`python -m nontax_tools
-- refuse|void`, the Bills view) or the unit's own systems insert a row; the DAG
-- `nontax_requests` carries it out on WeChat (rejectinsert, or platform/updatestatus to
-- INVOICE_REIMBURSE_CANCEL) and writes the outcome back. The unit's systems insert only
-- order_id, kind, reason and requested_by; every other column is the pipeline's.
--
--   kind      refuse: the order will never get a bill (refunded before issue, data that cannot
--             be fixed); WeChat tells the payer `reason` and answers 72035 to any insert after.
--             void: the issued bill was red-reversed (冲红) by the fiscal platform; its card is
--             set to INVOICE_REIMBURSE_CANCEL.
--   reason    shown to the payer (refuse); at most 100 characters (the pipeline's assumption,
--             see the README: WeChat documents no limit), not blank.
--   status    pending -> done (carried out, or WeChat had it done already), refused (cannot be
--             carried out as asked: no call was made, or WeChat said it cannot be), failed (a
--             call was refused for a reason a person must look at). `outcome` says why.
CREATE TABLE nontax.bill_request (
    request_id    bigserial PRIMARY KEY,
    order_id      text NOT NULL REFERENCES nontax.bill_order (order_id),
    kind          text NOT NULL,
    reason        text NOT NULL,
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),

    status        text NOT NULL DEFAULT 'pending',
    outcome       text,                      -- why it ended so; while pending, why it waits
    errcode       integer,                   -- WeChat's last answer to it
    attempts      integer NOT NULL DEFAULT 0, -- calls made for it
    not_before    timestamptz,               -- not tried before (a quota, a transient error)
    run_id        text,                      -- the nontax_requests run that last worked on it
    held_by       text,                      -- the task try that last held its order
    done_at       timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT bill_request_kind_known CHECK (kind IN ('refuse', 'void')),
    CONSTRAINT bill_request_reason_shown CHECK (
        btrim(reason) <> '' AND char_length(reason) <= 100 AND reason !~ '[\r\n]'
    ),
    CONSTRAINT bill_request_requested_by_named CHECK (btrim(requested_by) <> ''),
    CONSTRAINT bill_request_status_known CHECK (
        status IN ('pending', 'done', 'refused', 'failed')
    ),
    CONSTRAINT bill_request_ended_has_outcome CHECK (status = 'pending' OR outcome IS NOT NULL),
    CONSTRAINT bill_request_done_when CHECK ((status = 'done') = (done_at IS NOT NULL)),
    CONSTRAINT bill_request_attempts_nonnegative CHECK (attempts >= 0)
);
-- At most one open request per order and kind: a second one is refused at the door.
CREATE UNIQUE INDEX bill_request_one_open_key ON nontax.bill_request (order_id, kind)
    WHERE status = 'pending';
-- The DAG's pick: the pending requests in the order they came.
CREATE INDEX bill_request_pending_idx ON nontax.bill_request (requested_at, request_id)
    WHERE status = 'pending';
-- An order's requests (history, the Bills view), and what needs a person.
CREATE INDEX bill_request_order_idx ON nontax.bill_request (order_id, request_id);
CREATE INDEX bill_request_attention_idx ON nontax.bill_request (updated_at)
    WHERE status IN ('refused', 'failed');

-- refused: refused on the unit's request (rejectinsert): never inserted, the payer was told.
-- cancelled: the bill was inserted, then voided (INVOICE_REIMBURSE_CANCEL): it keeps its code.
-- Both are finished: no run sends them again.
ALTER TABLE nontax.bill_order DROP CONSTRAINT bill_order_status_known;
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_status_known CHECK (status IN (
    'authorized', 'uploaded', 'awaiting_auth',                      -- due
    'inserted', 'duplicate', 'rejected', 'refused', 'cancelled',    -- finished
    'invalid', 'failed'                                             -- needs a person
));
ALTER TABLE nontax.bill_order DROP CONSTRAINT bill_order_needs_reason;
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_needs_reason CHECK (
    status NOT IN ('invalid', 'failed', 'rejected', 'duplicate', 'refused', 'cancelled')
    OR reason IS NOT NULL
);
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_cancelled_has_code CHECK (
    status <> 'cancelled' OR (code IS NOT NULL AND openid IS NOT NULL AND inserted_at IS NOT NULL)
);
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_refused_has_no_code CHECK (
    status <> 'refused' OR code IS NULL
);

-- A request's life in the order's history: asked (step `request`), carried out or not
-- (steps `refuse` and `void`, as the calls are named).
ALTER TABLE nontax.bill_attempt DROP CONSTRAINT bill_attempt_step_known;
ALTER TABLE nontax.bill_attempt ADD CONSTRAINT bill_attempt_step_known CHECK (step IN (
    'load', 'validate', 'upload', 'insert', 'authorization', 'reset', 'pdf', 'recover',
    'operator', 'request', 'refuse', 'void'
));
