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

-- Applies the order's events not applied yet, oldest first, in the caller's transaction, and
-- returns what the last one did. The order's row is locked first (the order every write-back
-- locks in), so an event and a load or a run's write-back on the same order queue, never
-- interleave. An event of an order not loaded yet stays unapplied: the load applies it.
CREATE FUNCTION nontax.apply_authorization_events(p_order_id text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o   nontax.bill_order%ROWTYPE;
    e   nontax.authorization_event%ROWTYPE;
    did text := NULL;
BEGIN
    SELECT * INTO o FROM nontax.bill_order WHERE order_id = p_order_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'kept: no such order yet, applied when it is loaded';
    END IF;
    FOR e IN
        SELECT * FROM nontax.authorization_event
         WHERE order_id = p_order_id AND applied_at IS NULL
         ORDER BY create_time, event_id
           FOR UPDATE
    LOOP
        IF o.status = 'unauthorized' AND e.authorized THEN
            -- Due at once, in the order of the payers' authorisations.
            UPDATE nontax.bill_order
               SET status = 'authorized', reason = NULL, not_before = NULL,
                   authorized_at = LEAST(now(), to_timestamp(e.create_time)), updated_at = now()
             WHERE order_id = p_order_id
            RETURNING * INTO o;
            did := 'authorized: due now';
        ELSIF o.status = 'unauthorized' THEN
            UPDATE nontax.bill_order
               SET status = 'declined', updated_at = now(),
                   reason = 'the payer declined the authorisation in WeChat'
             WHERE order_id = p_order_id
            RETURNING * INTO o;
            did := 'declined';
        ELSIF o.status = 'awaiting_auth' AND e.authorized THEN
            -- WeChat answered 72038 before the payer's authorisation reached it: look again now
            -- instead of at the next quarter hour.
            UPDATE nontax.bill_order SET not_before = NULL, updated_at = now()
             WHERE order_id = p_order_id
            RETURNING * INTO o;
            did := 'authorized: asked again now';
        ELSE
            did := 'no change: the order is ' || o.status;
        END IF;
        UPDATE nontax.authorization_event SET applied_at = now(), outcome = did
         WHERE event_id = e.event_id;
        INSERT INTO nontax.bill_attempt (order_id, run_id, step, outcome, errmsg)
        VALUES (p_order_id, NULL, 'payer',
                CASE WHEN e.authorized THEN 'authorized' ELSE 'declined' END,
                'authorisation event of ' || to_char(to_timestamp(e.create_time) AT TIME ZONE 'UTC',
                                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ': ' || did);
    END LOOP;
    RETURN COALESCE(did, 'no change: nothing to apply');
END;
$$;

-- Records one verified event and applies it, in one transaction; the same event again (WeChat
-- delivers up to three times) changes nothing. Returns what it did, for the receiver's log.
CREATE FUNCTION nontax.record_authorization_event(
    p_order_id text, p_authorized boolean, p_appid text, p_openid text, p_to_user text,
    p_source text, p_create_time bigint
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO nontax.authorization_event
           (order_id, authorized, appid, openid, to_user, source, create_time)
    VALUES (p_order_id, p_authorized, p_appid, p_openid, p_to_user, p_source, p_create_time)
    ON CONFLICT ON CONSTRAINT authorization_event_once DO NOTHING
    RETURNING event_id INTO new_id;
    IF new_id IS NULL THEN
        RETURN 'no change: the same event was received before';
    END IF;
    RETURN nontax.apply_authorization_events(p_order_id);
END;
$$;

-- An order loaded after its payer's event: the event is applied by the load's own transaction.
CREATE FUNCTION nontax.apply_events_of_loaded_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM nontax.authorization_event
                WHERE order_id = NEW.order_id AND applied_at IS NULL) THEN
        PERFORM nontax.apply_authorization_events(NEW.order_id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER bill_order_apply_authorization_events AFTER INSERT ON nontax.bill_order
    FOR EACH ROW WHEN (NEW.status IN ('unauthorized', 'awaiting_auth'))
    EXECUTE FUNCTION nontax.apply_events_of_loaded_order();
