-- Before the insert: WeChat's own flow. The unit makes an authorisation link for an order
-- (nontax/getbillauthurl), the payer authorises (or declines) in WeChat, WeChat pushes the event
-- `user_authorize_invoice` to the unit's receiver, the bill is inserted.
--
-- unauthorized: loaded before its payer authorised; not due. Its latest link is kept on the row.
-- declined:     the payer refused in WeChat (FailOrderId); finished, never sent.
-- An authorisation event moves an `unauthorized` order to `authorized` (due at once) or to
-- `declined`; it changes nothing on an order in any other state.
ALTER TABLE nontax.bill_order DROP CONSTRAINT bill_order_status_known;
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_status_known CHECK (status IN (
    'unauthorized',                                                             -- waiting for the payer
    'authorized', 'uploaded', 'awaiting_auth',                                  -- due
    'inserted', 'duplicate', 'rejected', 'refused', 'cancelled', 'declined',    -- finished
    'invalid', 'failed', 'mismatched'                                           -- needs a person
));
ALTER TABLE nontax.bill_order DROP CONSTRAINT bill_order_needs_reason;
ALTER TABLE nontax.bill_order ADD CONSTRAINT bill_order_needs_reason CHECK (
    status NOT IN (
        'invalid', 'failed', 'rejected', 'duplicate', 'refused', 'cancelled', 'mismatched',
        'declined'
    ) OR reason IS NOT NULL
);

-- The latest authorisation link made for the order (getbillauthurl's auth_url, expire_time).
ALTER TABLE nontax.bill_order ADD COLUMN auth_url text;
ALTER TABLE nontax.bill_order ADD COLUMN auth_url_expires_at timestamptz;

-- Orders waiting for their payer, for the links still to make and the oldest wait.
CREATE INDEX bill_order_unauthorized_idx ON nontax.bill_order (created_at, order_id)
    WHERE status = 'unauthorized';

-- Every authorisation event the receiver verified, kept before it is applied: WeChat delivers
-- an event up to three times, and an event may arrive before its order is loaded (it is applied
-- by the load). `applied_at` is set once the event was applied to its order (or found to change
-- nothing, `outcome` says which).
CREATE TABLE nontax.authorization_event (
    event_id     bigserial PRIMARY KEY,
    order_id     text NOT NULL,                 -- SuccOrderId or FailOrderId
    authorized   boolean NOT NULL,              -- true: SuccOrderId; false: FailOrderId
    appid        text NOT NULL,                 -- AppId or AuthorizeAppId
    openid       text NOT NULL,                 -- FromUserName: the payer
    to_user      text NOT NULL,                 -- ToUserName: the unit's official account
    source       text,                          -- Source / source: web, app, wxa, wap
    create_time  bigint NOT NULL,               -- CreateTime, Unix seconds
    received_at  timestamptz NOT NULL DEFAULT now(),
    applied_at   timestamptz,
    outcome      text,                          -- what applying it did to the order
    CONSTRAINT authorization_event_order_id_nonempty CHECK (
        order_id <> '' AND length(order_id) <= 64
    ),
    CONSTRAINT authorization_event_applied_has_outcome CHECK (
        applied_at IS NULL OR outcome IS NOT NULL
    ),
    -- WeChat's retries of one event carry the same fields: one row per event.
    CONSTRAINT authorization_event_once UNIQUE (order_id, authorized, openid, create_time)
);
CREATE INDEX authorization_event_unapplied_idx ON nontax.authorization_event (order_id)
    WHERE applied_at IS NULL;

-- A link made, and the payer's answer, in the order's history.
ALTER TABLE nontax.bill_attempt DROP CONSTRAINT bill_attempt_step_known;
ALTER TABLE nontax.bill_attempt ADD CONSTRAINT bill_attempt_step_known CHECK (step IN (
    'load', 'validate', 'upload', 'insert', 'authorization', 'reset', 'pdf', 'recover',
    'operator', 'request', 'refuse', 'void', 'auth_link', 'payer'
));
