-- The order store: one row per order, an append-only attempt history, and the shared
-- access-token cache. Everything lives in the schema `nontax` so that the tables can sit in a
-- database a collecting unit already has without clashing with its own names.

CREATE SCHEMA IF NOT EXISTS nontax;

-- The journey of one order:
--   authorized -> uploaded (PDF media id) -> inserted (code, openid)
-- or an end state that says why not. `awaiting_auth` is due again once `not_before` passes.
CREATE TABLE nontax.bill_order (
    order_id         text PRIMARY KEY,
    card_id          text NOT NULL,
    appid            text NOT NULL,
    fee              bigint NOT NULL,          -- fen (分)
    title            text NOT NULL,
    billing_time     bigint NOT NULL,          -- 10-digit Unix time
    billing_no       text NOT NULL,
    billing_code     text NOT NULL,
    pdf_path         text,                     -- relative to the configured PDF root

    status           text NOT NULL DEFAULT 'authorized',
    reason           text,                     -- why the order needs a person or ended
    authorized_at    timestamptz NOT NULL DEFAULT now(),
    not_before       timestamptz,              -- not due before (awaiting authorization, quota)

    s_pdf_media_id   text,
    pdf_uploaded_at  timestamptz,
    code             text,
    openid           text,
    inserted_at      timestamptz,
    last_errcode     integer,
    last_errmsg      text,
    attempts         integer NOT NULL DEFAULT 0,

    claimed_by       text,                     -- the run that holds the order
    claim_expires_at timestamptz,              -- the lease: free again after this

    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT bill_order_order_id_nonempty CHECK (order_id <> '' AND length(order_id) <= 64),
    CONSTRAINT bill_order_fee_positive CHECK (fee > 0),
    CONSTRAINT bill_order_billing_time_positive CHECK (billing_time > 0),
    CONSTRAINT bill_order_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT bill_order_status_known CHECK (status IN (
        'authorized', 'uploaded', 'awaiting_auth',      -- due
        'inserted', 'duplicate', 'rejected',            -- finished
        'invalid', 'failed'                             -- needs a person
    )),
    CONSTRAINT bill_order_inserted_has_code CHECK (
        status <> 'inserted' OR (code IS NOT NULL AND openid IS NOT NULL AND inserted_at IS NOT NULL)
    ),
    CONSTRAINT bill_order_uploaded_has_media CHECK (
        status <> 'uploaded' OR (s_pdf_media_id IS NOT NULL AND pdf_uploaded_at IS NOT NULL)
    ),
    CONSTRAINT bill_order_needs_reason CHECK (
        status NOT IN ('invalid', 'failed', 'rejected', 'duplicate') OR reason IS NOT NULL
    )
);

-- WeChat refuses a second bill with the same number pair (72042): refuse it at the door.
CREATE UNIQUE INDEX bill_order_billing_no_code_key ON nontax.bill_order (billing_no, billing_code);

-- Claiming the due orders: a partial index holds only the due rows, in claim order, so the
-- claim reads a few index pages however many finished orders the table has.
CREATE INDEX bill_order_due_idx ON nontax.bill_order (authorized_at, order_id)
    WHERE status IN ('authorized', 'uploaded', 'awaiting_auth');

-- What needs a person.
CREATE INDEX bill_order_attention_idx ON nontax.bill_order (updated_at)
    WHERE status IN ('invalid', 'failed');


-- Append-only history: when, which run, which step, what came back.
CREATE TABLE nontax.bill_attempt (
    attempt_id   bigserial PRIMARY KEY,
    order_id     text NOT NULL REFERENCES nontax.bill_order (order_id),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id       text,
    step         text NOT NULL,
    outcome      text NOT NULL,
    errcode      integer,
    errmsg       text,
    duration_ms  integer,
    CONSTRAINT bill_attempt_step_known CHECK (step IN (
        'load', 'validate', 'upload', 'insert', 'authorization', 'reset'
    ))
);
CREATE INDEX bill_attempt_order_idx ON nontax.bill_attempt (order_id, attempt_id);

CREATE FUNCTION nontax.refuse_history_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'nontax.bill_attempt is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER bill_attempt_append_only
    BEFORE UPDATE OR DELETE ON nontax.bill_attempt
    FOR EACH ROW EXECUTE FUNCTION nontax.refuse_history_change();
CREATE TRIGGER bill_attempt_no_truncate
    BEFORE TRUNCATE ON nontax.bill_attempt
    FOR EACH STATEMENT EXECUTE FUNCTION nontax.refuse_history_change();


-- One access token per appid and token source, shared by every worker and run.
CREATE TABLE nontax.access_token (
    appid        text NOT NULL,
    source       text NOT NULL,                -- stable_token, token, or a service URL's key
    token        text,
    expires_at   timestamptz,
    fetched_at   timestamptz,
    fetch_count  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (appid, source)
);
