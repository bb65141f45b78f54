-- Who may work on an order, and on which version of it.
--
-- A run claims its orders (`claimed_by`, lease in `claim_expires_at`); then ONE task try holds
-- each order while it works on it (`held_by`), renewing the same lease on a timer. A second
-- try of the same batch (a retry, a Clear, a zombie) cannot work on an order while an earlier
-- try's hold is live, and every write-back names the holder and the row version it read.
ALTER TABLE nontax.bill_order
    ADD COLUMN held_by text,                       -- the task try working on the order now
    ADD COLUMN row_version bigint NOT NULL DEFAULT 1,  -- bumped when the bill's data changes
    ADD COLUMN last_write_id text,                 -- the last write-back, to retry it safely
    ADD COLUMN auth_wait_since timestamptz;        -- first 72038 since the data last changed

-- Each run's claim, as its claim step made it: the batches it mapped over and, for a run asked
-- for given order_ids, those it did not take and why. The report covers every order the run
-- ever claimed from here (not from XCom, which a Clear replaces), and a second claim in the
-- same run takes back exactly these orders.
CREATE TABLE nontax.run_claim (
    run_id       text PRIMARY KEY,
    batches      jsonb NOT NULL,
    not_taken    jsonb NOT NULL DEFAULT '[]',
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    reclaimed_at timestamptz
);

ALTER TABLE nontax.bill_attempt DROP CONSTRAINT bill_attempt_step_known;
ALTER TABLE nontax.bill_attempt ADD CONSTRAINT bill_attempt_step_known CHECK (step IN (
    'load', 'validate', 'upload', 'insert', 'authorization', 'reset', 'pdf', 'recover'
));
