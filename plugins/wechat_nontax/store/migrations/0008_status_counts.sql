-- Orders by status, exact and cheap to read at any size (the Bills view's overview, `make
-- status`): counting a million rows takes longer than the page may, so the counts are kept.
--
-- Every write that adds orders, deletes them or changes their status appends what it changed
-- per status (+n, -n) to `nontax.bill_status_count`; a status's count is the sum of its rows,
-- in the same transaction as the change. Appending takes no lock another writer waits for (one
-- shared row per status would make every write-back of every batch queue behind the others).
--   - inserts and deletes: one trigger call per statement over its transition table (a load
--     of 1,000 orders appends a row per status, not 1,000);
--   - status changes: a row trigger that fires only when the statement sets `status` and only
--     for rows where it changed. The claim, the holds and their renewals (thousands of rows at
--     a time, never setting `status`) fire nothing; a statement trigger with transition tables
--     would copy every row they touch (measured by bench/status_count_cost.py: 10,000 rows
--     claimed cost 19% more that way). A write-back changes one row: the same either way.
-- `nontax.compact_status_counts()` folds the rows into one per status (the claim calls it once
-- per run), so the sums stay short.
CREATE TABLE nontax.bill_status_count (
    status text   NOT NULL,
    orders bigint NOT NULL
);

-- Orders that came or went: their insert trigger and their delete trigger both name them
-- `added_or_gone`.
CREATE FUNCTION nontax.count_added_or_gone_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nontax.bill_status_count (status, orders)
    SELECT status, CASE TG_OP WHEN 'DELETE' THEN -count(*) ELSE count(*) END
      FROM added_or_gone GROUP BY status;
    RETURN NULL;
END;
$$;

CREATE FUNCTION nontax.count_status_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nontax.bill_status_count (status, orders)
    VALUES (OLD.status, -1), (NEW.status, 1);
    RETURN NULL;
END;
$$;

CREATE FUNCTION nontax.count_truncated_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM nontax.bill_status_count;
    RETURN NULL;
END;
$$;

-- One at a time (others skip: the next claim folds what they would have): the rows a fold
-- deletes are exactly those whose sum it appends, in one statement, so a reader sees the rows
-- before or after it, never both nor neither.
CREATE FUNCTION nontax.compact_status_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(hashtext('nontax.compact_status_counts')) THEN
        WITH folded AS (DELETE FROM nontax.bill_status_count RETURNING status, orders)
        INSERT INTO nontax.bill_status_count (status, orders)
        SELECT status, sum(orders) FROM folded GROUP BY status HAVING sum(orders) <> 0;
    END IF;
END;
$$;

-- No writer may slip between the first count and the triggers.
LOCK TABLE nontax.bill_order IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER bill_order_count_insert AFTER INSERT ON nontax.bill_order
    REFERENCING NEW TABLE AS added_or_gone
    FOR EACH STATEMENT EXECUTE FUNCTION nontax.count_added_or_gone_orders();
CREATE TRIGGER bill_order_count_status AFTER UPDATE OF status ON nontax.bill_order
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION nontax.count_status_change();
CREATE TRIGGER bill_order_count_delete AFTER DELETE ON nontax.bill_order
    REFERENCING OLD TABLE AS added_or_gone
    FOR EACH STATEMENT EXECUTE FUNCTION nontax.count_added_or_gone_orders();
CREATE TRIGGER bill_order_count_truncate AFTER TRUNCATE ON nontax.bill_order
    FOR EACH STATEMENT EXECUTE FUNCTION nontax.count_truncated_orders();

INSERT INTO nontax.bill_status_count (status, orders)
SELECT status, count(*) FROM nontax.bill_order GROUP BY status;
