"""What keeping the counts by status (migration 0008) costs the write path, against no kept
counts and against two other ways of keeping them.

In a scratch database (50,000 orders first), one connection, the store's own statements: a load
of 10,000 new orders (`upsert_orders`), the claim of those 10,000 (`claim_due`, which also folds
the kept rows), and 2,000 orders' write-backs (hold, uploaded, inserted: two statements an
order, as a batch writes them); then on the server alone (no client round trips, so less noise)
10,000 single-row status changes, and one update of 10,000 rows that changes no status, as a
claim or a hold does, and a load of 10,000 orders, in the backend's CPU time. Four ways, taking
turns (each first in turn), the least of `--repeats` (a loaded machine only ever adds):
  none       the count triggers disabled (no kept counts: the overview would count 1M rows);
  0008       the migrations': statement triggers over transition tables on insert and delete,
             a row trigger on updates of `status` that change it, every 1,000th call folding
             the appended rows (0011);
  statement  statement triggers with transition tables on update too (they copy every row an
             update touches, a claim's too);
  row        row triggers for everything (a load of 1,000 orders: 1,000 calls).

    .venv/bin/python bench/status_count_cost.py [--repeats 6]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import psutil
import psycopg2

from ceiling import demo_orders

KEPT_TRIGGERS = ("bill_order_count_insert", "bill_order_count_status", "bill_order_count_delete")
ALTERNATIVES_SQL = """
CREATE FUNCTION nontax.bench_count_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nontax.bill_status_count (status, orders)
    SELECT status, sum(n) FROM (
        SELECT status, 1 AS n FROM new_orders UNION ALL SELECT status, -1 FROM old_orders
    ) AS changed GROUP BY status HAVING sum(n) <> 0;
    RETURN NULL;
END;
$$;
CREATE TRIGGER bench_statement_update AFTER UPDATE ON nontax.bill_order
    REFERENCING OLD TABLE AS old_orders NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION nontax.bench_count_changed();
CREATE FUNCTION nontax.bench_count_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nontax.bill_status_count (status, orders)
    VALUES (CASE TG_OP WHEN 'INSERT' THEN NEW.status ELSE OLD.status END,
            CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END);
    RETURN NULL;
END;
$$;
CREATE TRIGGER bench_row_insert_delete AFTER INSERT OR DELETE ON nontax.bill_order
    FOR EACH ROW EXECUTE FUNCTION nontax.bench_count_row();
"""
WAYS = {
    "none": (),
    "0008": KEPT_TRIGGERS,
    "statement": ("bill_order_count_insert", "bench_statement_update", "bill_order_count_delete"),
    "row": ("bench_row_insert_delete", "bill_order_count_status"),
}
ALL_TRIGGERS = sorted({t for triggers in WAYS.values() for t in triggers})


def _switch(dsn: str, way: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for trigger in ALL_TRIGGERS:
            state = "ENABLE" if trigger in WAYS[way] else "DISABLE"
            cur.execute(f"ALTER TABLE nontax.bill_order {state} TRIGGER {trigger}")
    conn.close()


def one_round(dsn: str, way: str, prefix: str, n_load: int, n_write: int) -> dict:
    from wechat_nontax.store.holders import Hold
    from wechat_nontax.store.orders import OrderStore

    _switch(dsn, way)
    store = OrderStore(psycopg2.connect(dsn))
    try:
        orders = demo_orders(n_load, prefix)
        started = time.perf_counter()
        store.upsert_orders(orders)
        load_s = time.perf_counter() - started
        run_id = f"run-{prefix}"
        started = time.perf_counter()
        claimed = store.claim_due(run_id, lease_s=3600, limit=n_load)
        claim_s = time.perf_counter() - started
        holder = f"{run_id}|issue_bills|0|1"
        written = claimed[:n_write]
        started = time.perf_counter()
        versions = store.hold_batch(holder, written, hold_s=600).held
        for order_id in written:
            hold = Hold(holder, versions[order_id])
            store.record_uploaded(order_id, "media", hold=hold, run_id=run_id)
            store.record_inserted(order_id, "code", "openid", version=hold.version, run_id=run_id)
        write_s = time.perf_counter() - started
        store.release(run_id)
    finally:
        store.close()
    return {
        "load_ms_per_1000": 1000 * load_s / n_load * 1000,
        "claim_ms": 1000 * claim_s,
        "writeback_ms_per_order": 1000 * write_s / n_write,
    }


# On the server alone, in the backend process's own CPU time (what the load of a shared machine
# does not add to): N single-row updates that change the status, as write-backs do; an
# update of N rows that changes none, as a claim or a hold does, 5 times; a load of N orders in
# statements of 1,000, as `upsert_orders` sends them.
STATUS_CHANGES_SQL = """
DO $$
DECLARE ids text[];
BEGIN
    SELECT array_agg(order_id) INTO ids FROM (
        SELECT order_id FROM nontax.bill_order WHERE status = 'authorized' LIMIT %(n)s) o;
    FOR i IN 1 .. array_length(ids, 1) LOOP
        UPDATE nontax.bill_order SET status = 'awaiting_auth' WHERE order_id = ids[i];
    END LOOP;
END;
$$
"""
CLAIM_LIKE_SQL = """
DO $$
BEGIN
    FOR round IN 1 .. 5 LOOP
        UPDATE nontax.bill_order SET claimed_by = 'bench-' || round
         WHERE order_id IN (SELECT order_id FROM nontax.bill_order ORDER BY order_id
                            LIMIT %(n)s);
    END LOOP;
END;
$$
"""
LOAD_SQL = """
DO $$
BEGIN
    FOR chunk IN 0 .. %(n)s / 1000 - 1 LOOP
        INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time,
            billing_no, billing_code)
        SELECT %(prefix)s || i, 'card', 'wx0', 100, 'title', 1700000000, %(prefix)s || i, 'c'
          FROM generate_series(chunk * 1000, chunk * 1000 + 999) AS i;
    END LOOP;
END;
$$
"""


def _backend_cpu_ms(cur) -> float:
    """The CPU time (user + system) the connection's backend process has used so far."""
    cur.execute("SELECT pg_backend_pid()")
    times = psutil.Process(cur.fetchone()[0]).cpu_times()
    return (times.user + times.system) * 1000


def server_round(dsn: str, way: str, n: int, prefix: str) -> dict:
    _switch(dsn, way)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    spent = {}
    with conn.cursor() as cur:
        for name, sql in (("changes", STATUS_CHANGES_SQL), ("claims", CLAIM_LIKE_SQL),
                          ("load", LOAD_SQL)):  # fmt: skip
            before = _backend_cpu_ms(cur)
            cur.execute(sql, {"n": n, "prefix": f"L{prefix}-"})
            spent[name] = _backend_cpu_ms(cur) - before
        cur.execute("UPDATE nontax.bill_order SET status = 'authorized' "
                    "WHERE status = 'awaiting_auth'")  # fmt: skip
    conn.close()
    return {
        "cpu_ms_per_status_change": spent["changes"] / n,
        "cpu_ms_claim_10k_rows": spent["claims"] / 5 * 10_000 / n,
        "cpu_ms_load_1000": spent["load"] / n * 1000,
    }


# What each way's triggers do, as EXPLAIN ANALYZE reports them (the second time; rolled back):
# the claim's update of 10,000 rows, one write-back's status change, a load of 1,000 orders.
EXPLAINED = {
    "claim_10k_rows": "UPDATE nontax.bill_order SET claimed_by = 'x' WHERE order_id IN "
    "(SELECT order_id FROM nontax.bill_order ORDER BY order_id LIMIT 10000)",
    "status_change": "UPDATE nontax.bill_order SET status = 'awaiting_auth' WHERE order_id = "
    "(SELECT min(order_id) FROM nontax.bill_order WHERE status = 'authorized')",
    "load_1000": "INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, "
    "billing_time, billing_no, billing_code) SELECT 'X' || i, 'c', 'w', 1, 't', 1, 'X' || i, "
    "'c' FROM generate_series(1, 1000) i",
}


def trigger_lines(dsn: str, way: str) -> dict[str, list[str]]:
    _switch(dsn, way)
    conn = psycopg2.connect(dsn)
    out = {}
    with conn.cursor() as cur:
        for name, sql in EXPLAINED.items():
            cur.execute(sql)  # once before: the first call of a trigger function compiles it
            conn.rollback()
            cur.execute("EXPLAIN (ANALYZE, TIMING) " + sql)
            plan = [row[0] for row in cur.fetchall()]
            out[name] = [line for line in plan if line.startswith(("Trigger", "Execution"))]
            conn.rollback()
    conn.close()
    return out


def status_count_cost(server: str, *, repeats: int = 6, n_load: int = 10_000,
                      n_write: int = 2_000) -> dict:  # fmt: skip
    from nontax_dev.pg import run_sql, scratch_database
    from wechat_nontax.store.orders import OrderStore

    with scratch_database(server, "nontax_bench_counts") as dsn:
        run_sql(dsn, ALTERNATIVES_SQL)
        _switch(dsn, "0008")
        filler = OrderStore(psycopg2.connect(dsn))
        filler.upsert_orders(demo_orders(50_000, "OLD"))
        filler.close()
        samples: dict[str, list[dict]] = {way: [] for way in WAYS}
        ways = list(WAYS)
        for r in range(repeats):
            for way in ways[r % len(ways) :] + ways[: r % len(ways)]:  # each first in turn
                sample = one_round(dsn, way, f"{way[0].upper()}{r}", n_load, n_write)
                sample.update(server_round(dsn, way, n_load, f"{way[0].upper()}{r}"))
                samples[way].append(sample)
        result = {}
        for way, rounds in samples.items():
            result[way] = {key: round(min(s[key] for s in rounds), 3) for key in rounds[0]}
        result["triggers"] = {way: trigger_lines(dsn, way) for way in WAYS}
        base = result["none"]
        for way in ("0008", "statement", "row"):
            result[f"{way}_extra"] = {key: round(result[way][key] - base[key], 3) for key in base}
        result["triggers"] = result.pop("triggers")  # last: the plans' lines
        return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    server = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    print(json.dumps(status_count_cost(server, repeats=args.repeats), indent=2))
