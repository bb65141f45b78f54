-- A person's action on many orders at once from the Bills page (make due again, and issue now),
-- kept as one action a person can find again by its id: who, when, which orders were picked
-- (by hand, or "all that need a person for this reason"), and per order what happened (done,
-- or refused with the reason: finished, held by a task try, a refusal asked for...). Each order
-- done also gets its own row in its history (nontax.bill_attempt) naming the person and the
-- action.
CREATE TABLE nontax.bill_action (
    action_id     bigserial PRIMARY KEY,
    kind          text NOT NULL CONSTRAINT bill_action_kind_known CHECK (kind IN ('reset', 'issue')),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    picked        text NOT NULL,                 -- how the orders were picked, as the person saw it
    run_id        text                            -- issue now: the run asked of the issuing DAG
);

CREATE TABLE nontax.bill_action_order (
    action_id  bigint NOT NULL REFERENCES nontax.bill_action ON DELETE CASCADE,
    order_id   text NOT NULL,
    outcome    text NOT NULL CONSTRAINT bill_action_order_outcome_known
                   CHECK (outcome IN ('done', 'refused')),
    why        text,                              -- why it was refused
    PRIMARY KEY (action_id, order_id)
);

-- "All that need a person for this reason": the red orders of one reason, from an index as
-- small as the red orders are few (the Bills page answers in under 300 ms at a million orders).
CREATE INDEX bill_order_attention_reason_idx ON nontax.bill_order (reason, order_id)
    WHERE status IN ('failed', 'invalid', 'mismatched');
