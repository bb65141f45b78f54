-- An authorisation event and its order's load in transactions that overlap: in 0012 neither saw
-- the other's uncommitted row, so the event concluded "no such order yet" and the load's trigger
-- "no event to apply", and the event stayed unapplied for good. Both now take the order id's
-- lock first (a transaction-scoped advisory lock), so the second waits for the first to commit
-- and then sees its row (each statement of a function takes a new snapshot in READ COMMITTED).
-- The lock is one of 64 buckets of order ids, not one per order: a load of a day's orders in one
-- transaction then holds at most 64 locks (one per order would exhaust the server's lock table,
-- 64 x max_connections slots); an event meeting a load in its bucket waits for the load's commit.
CREATE FUNCTION nontax.lock_order_authorization(p_order_id text) RETURNS void
LANGUAGE sql AS $$
    -- Two-key form: the first key names this use (0x6e74, "nt"), the second the bucket.
    SELECT pg_advisory_xact_lock(28276, hashtext(p_order_id) & 63);
$$;

CREATE OR REPLACE FUNCTION nontax.record_authorization_event(
    p_order_id text, p_authorized boolean, p_appid text, p_openid text, p_to_user text,
    p_source text, p_create_time bigint
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM nontax.lock_order_authorization(p_order_id);
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

CREATE OR REPLACE FUNCTION nontax.apply_events_of_loaded_order() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nontax.lock_order_authorization(NEW.order_id);
    IF EXISTS (SELECT 1 FROM nontax.authorization_event
                WHERE order_id = NEW.order_id AND applied_at IS NULL) THEN
        PERFORM nontax.apply_authorization_events(NEW.order_id);
    END IF;
    RETURN NULL;
END;
$$;
