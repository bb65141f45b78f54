-- The request table's contract, held by the database for every writer (a person's tool, the
-- Bills view, a unit's own system inserting rows):
--
-- 1. A reason is one line of text a person is shown: not blank, no control or invisible
--    characters (Unicode categories Cc, Cf, Zl, Zp), at most 100 characters. The same rule as
--    `validation._check_reason`, which the command line, the Bills view and the runner apply
--    (tests/integration/test_request_contract.py checks the two agree on every code point).
-- 2. A unit's system names order_id, kind, reason and requested_by; every other column is the
--    pipeline's and starts at its default whatever the INSERT says.
-- 3. A refusal keeps its order off issuing until it is carried out or a person decides: while
--    it is pending, and also once it ended `refused` (it could not be carried out) or `failed`.
--    A person decides by withdrawing it (status `withdrawn`, `nontax withdraw`)
--    or by asking again: a new request of the same kind for the order ends the earlier ones
--    that were not carried out as `withdrawn`.

-- Rule 1. Spelt out by code point (Python's unicodedata 14.0): Cc, Cf, Zl and Zp; blank is
-- nothing but spaces (Zs), which Python's str.strip() takes away.
CREATE FUNCTION nontax.reason_is_shown_text(reason text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT char_length(reason) <= 100
       AND reason !~ '^[\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]*$'
       AND reason !~ ('[\u0001-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f'
                      '\u0890\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064'
                      '\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd'
                      '\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a'
                      '\U000e0001\U000e0020-\U000e007f]')
$$;

-- Rows asked before this rule with a reason it refuses were never sent (the runner refused
-- them): their characters are made visible (U+FFFD) so the rows keep the rule, the reason as
-- inserted is kept in `outcome`, and one still pending ends `refused` like the runner would
-- have ended it (under rule 3 it keeps its order off issuing until a person decides).
UPDATE nontax.bill_request
   SET outcome = concat_ws('; ', CASE WHEN status <> 'pending' THEN outcome END,
                           'not sent: its reason is not one line of text a person is shown, '
                           || 'as inserted: ' || to_json(reason)::text),
       status = CASE WHEN status = 'pending' THEN 'refused' ELSE status END,
       reason = coalesce(nullif(btrim(left(regexp_replace(reason,
                    '[\u0001-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f'
                    '\ufeff]', U&'\FFFD', 'g'), 100)), ''), U&'\FFFD'),
       updated_at = now()
 WHERE NOT nontax.reason_is_shown_text(reason);
-- What the replacement above does not reach ends as the one visible character.
UPDATE nontax.bill_request SET reason = U&'\FFFD' WHERE NOT nontax.reason_is_shown_text(reason);

ALTER TABLE nontax.bill_request DROP CONSTRAINT bill_request_reason_shown;
ALTER TABLE nontax.bill_request
    ADD CONSTRAINT bill_request_reason_shown CHECK (nontax.reason_is_shown_text(reason));

-- Rule 3's end: withdrawn by a person (or by asking again); `outcome` says who and why.
ALTER TABLE nontax.bill_request DROP CONSTRAINT bill_request_status_known;
ALTER TABLE nontax.bill_request ADD CONSTRAINT bill_request_status_known CHECK (
    status IN ('pending', 'done', 'refused', 'failed', 'withdrawn')
);

-- Rule 2.
CREATE FUNCTION nontax.bill_request_as_asked() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    serial text := pg_get_serial_sequence('nontax.bill_request', 'request_id');
BEGIN
    -- An id the INSERT chose could collide with the ones the sequence gives later; the one the
    -- column's default has just drawn is kept (no gaps in the numbers people are shown).
    BEGIN
        IF NEW.request_id IS DISTINCT FROM currval(serial) THEN
            NEW.request_id := nextval(serial);
        END IF;
    EXCEPTION WHEN object_not_in_prerequisite_state THEN  -- no value drawn in this session
        NEW.request_id := nextval(serial);
    END;
    NEW.requested_at := now();
    NEW.status := 'pending';
    NEW.outcome := NULL;
    NEW.errcode := NULL;
    NEW.attempts := 0;
    NEW.not_before := NULL;
    NEW.run_id := NULL;
    NEW.held_by := NULL;
    NEW.done_at := NULL;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER bill_request_as_asked BEFORE INSERT ON nontax.bill_request
    FOR EACH ROW EXECUTE FUNCTION nontax.bill_request_as_asked();

-- Rule 3: asking again ends the earlier requests of the kind that were not carried out.
CREATE FUNCTION nontax.bill_request_asked_again() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE nontax.bill_request
       SET status = 'withdrawn', updated_at = now(),
           outcome = format('asked again as #%s by %s; %s', NEW.request_id, NEW.requested_by,
                            outcome)
     WHERE order_id = NEW.order_id AND kind = NEW.kind AND status IN ('refused', 'failed');
    RETURN NULL;
END;
$$;
CREATE TRIGGER bill_request_asked_again AFTER INSERT ON nontax.bill_request
    FOR EACH ROW EXECUTE FUNCTION nontax.bill_request_asked_again();

-- The issuing claim's and hold's probe per order (`store._REFUSAL_BLOCKS`): the refusals that
-- keep an order off issuing, a handful at any time.
CREATE INDEX bill_request_blocks_issuing_idx ON nontax.bill_request (order_id)
    WHERE kind = 'refuse' AND status IN ('pending', 'refused', 'failed');
