"""The Bills view stays fast because its queries use indexes, and its counts by status stay
exact because every write keeps them (migration 0008).

- On a table big enough for the planner to prefer a full read when it can (100,000 orders, 3
  history rows each, analysed), EXPLAIN of every query the pages run (the counts, the listing,
  each filter, the search, pages deep in both directions, an order and its history) shows no
  sequential scan of nontax.bill_order or nontax.bill_attempt; paging through a whole status with
  page marks gives exactly the ordered listing, forwards and back.
- The kept counts equal `count(*)` after loads, reloads, claims, write-backs, resets, deletes,
  a rolled-back change, a truncate, and write-backs from several threads while counts are folded;
  migrating a database that already has orders counts them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from factories import held, insert_orders_plainly, make_order
from nontax_dev.pg import run_sql, scratch_database, with_dbname
from wechat_nontax.store.actions import RED_OF_REASON_SQL
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.reads import COUNTS_SQL, HISTORY_SQL, ORDER_ROW_SQL, BillsPage, PageMark
from wechat_nontax.ui.view import statuses_of
from wechat_nontax.wechat.statuses import Status

BIG = 100_000
ALL = sorted(str(s) for s in Status)
NEED = sorted(Status.NEEDS_ATTENTION)

# Order i changed (BIG - i) minutes ago; 2% need a person, 1% are due, the rest inserted.
_BIG_ORDERS = """
INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time, billing_no,
    billing_code, status, reason, code, openid, inserted_at, updated_at)
SELECT 'B' || lpad(i::text, 7, '0'), 'card', 'wx0', 100 + i, 'title', 1700000000 + i,
       'N' || i, 'C' || i, s, CASE WHEN s IN ('invalid', 'failed') THEN 'why' END,
       CASE WHEN s = 'inserted' THEN 'code' END, CASE WHEN s = 'inserted' THEN 'openid' END,
       CASE WHEN s = 'inserted' THEN now() END, now() - make_interval(mins => %(n)s - i)
FROM (SELECT i, CASE WHEN i %% 100 = 0 THEN 'invalid' WHEN i %% 100 = 1 THEN 'failed'
                     WHEN i %% 100 = 2 THEN 'authorized' ELSE 'inserted' END AS s
      FROM generate_series(1, %(n)s) AS i) AS g;
INSERT INTO nontax.bill_attempt (order_id, step, outcome)
SELECT order_id, step, 'x' FROM nontax.bill_order, unnest(ARRAY['load', 'upload', 'insert']) step
"""


@pytest.fixture(scope="module")
def big_db(orders_db_uri: str) -> Iterator[str]:
    """An order database of its own with BIG orders (the session's stays small and fast)."""
    with scratch_database(with_dbname(orders_db_uri, "postgres"), "nontax_test_big") as dsn:
        conn = psycopg2.connect(dsn)
        with conn, conn.cursor() as cur:
            cur.execute(_BIG_ORDERS, {"n": BIG})
        conn.close()
        run_sql(dsn, "VACUUM ANALYZE nontax.bill_order", "VACUUM ANALYZE nontax.bill_attempt")
        yield dsn


def _plan(dsn: str, sql: str, params: object) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            return "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()


def _mark_at(dsn: str, status: str, rank: int) -> PageMark:
    """The mark of the `rank`-th newest order of `status`."""
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT updated_at, order_id FROM nontax.bill_order WHERE status = %s "
            "ORDER BY updated_at DESC, order_id DESC OFFSET %s LIMIT 1",
            (status, rank),
        )
        mark = PageMark(*cur.fetchone())
    conn.close()
    return mark


def test_every_query_of_the_pages_reads_indexes_not_the_table(big_db: str):
    deep = _mark_at(big_db, "inserted", 90_000)  # 93% down the listing of `inserted`
    day = datetime.now(UTC) - timedelta(days=30)
    pages = {
        "attention": BillsPage(NEED, limit=51),
        "all statuses": BillsPage(ALL, limit=51),
        "one status": BillsPage(["inserted"], limit=51),
        "days": BillsPage(ALL, since=day, until=day + timedelta(days=1), limit=51),
        "days of one status": BillsPage(["inserted"], since=day, until=day + timedelta(days=2)),
        "search order_id": BillsPage(ALL, search="B0050000"),
        "search billing_no": BillsPage(NEED, search="N50000"),
        "search billing_code": BillsPage(ALL, search="C50000", since=day),
        "deep page": BillsPage(["inserted"], after=deep, limit=51),
        "deep page, all": BillsPage(ALL, after=deep, limit=51),
        "deep page, newer": BillsPage(["inserted"], before=deep, limit=51),
    }
    queries = {name: page.sql() for name, page in pages.items()}
    queries.update(
        counts=(COUNTS_SQL, ()),
        order=(ORDER_ROW_SQL, ("B0050000",)),
        history=(HISTORY_SQL, ("B0050000",)),
        # "All that need a person for this reason" (1,000 of 2,000 red orders of one reason).
        red_of_reason=(RED_OF_REASON_SQL, ("why", 1001)),
        # The search from the opening page: every status, whatever the filter.
        search_opening=BillsPage(statuses_of("attention", "N50000"), search="N50000").sql(),
    )
    for name, (sql, params) in queries.items():
        plan = _plan(big_db, sql, params)
        assert "Seq Scan on bill_order" not in plan, (name, plan)
        assert "Seq Scan on bill_attempt" not in plan, (name, plan)
        assert "Index" in plan or name == "counts", (name, plan)
    # The deep page reads its page's worth of the index, not the 90,000 entries above it.
    plan = _plan(big_db, *queries["deep page"])
    assert "Index Only Scan Backward using bill_order_status_updated_idx" in plan, plan
    plan = _plan(big_db, *queries["red_of_reason"])
    assert "bill_order_attention_reason_idx" in plan, plan


def test_page_marks_walk_a_whole_status_forwards_and_back(big_db: str):
    store = OrderStore(connect_dsn(big_db))
    try:
        conn = psycopg2.connect(big_db)
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT order_id FROM nontax.bill_order WHERE status IN ('invalid', 'failed') "
                "ORDER BY updated_at DESC, order_id DESC"
            )
            expected = [row[0] for row in cur.fetchall()]
        conn.close()
        pages, after = [], None
        while page := store.bills_page(BillsPage(NEED, after=after, limit=300)):
            pages.append(page)
            after = PageMark(page[-1]["updated_at"], page[-1]["order_id"])
        assert [r["order_id"] for p in pages for r in p] == expected
        back, before = [], PageMark(pages[-1][0]["updated_at"], pages[-1][0]["order_id"])
        while page := store.bills_page(BillsPage(NEED, before=before, limit=300)):
            back = page + back
            before = PageMark(page[0]["updated_at"], page[0]["order_id"])
        assert [r["order_id"] for r in back] == expected[: -len(pages[-1])]
    finally:
        store.close()


# -- the kept counts ----------------------------------------------------------------------------


def _counted(dsn: str) -> dict[str, int]:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM nontax.bill_order GROUP BY status")
        counted = dict(cur.fetchall())
    conn.close()
    return counted


def _sql(dsn: str, statement: str, params: object = ()) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement, params)
    conn.close()


def test_the_kept_counts_stay_exact_through_every_kind_of_write(store: OrderStore, orders_db):
    def exact() -> dict[str, int]:
        kept = store.count_by_status()
        assert kept == _counted(orders_db)
        return kept

    assert exact() == {}
    store.upsert_orders([make_order(n) for n in range(1, 21)])  # inserts
    assert exact() == {"authorized": 20}
    claimed = store.claim_due("run-1", lease_s=600, limit=10)  # no status changes; folds
    assert exact() == {"authorized": 20}
    for order_id in claimed[:6]:  # write-backs, one statement each
        hold = held(store, order_id, run_id="run-1")
        store.record_uploaded(order_id, "media", hold=hold, run_id="run-1")
        store.record_inserted(order_id, "code", "openid", version=hold.version, run_id="run-1")
    for order_id in claimed[6:9]:
        hold = held(store, order_id, run_id="run-1")
        store.record_end(
            order_id, "invalid", "bad title", hold=hold, run_id="run-1", step="validate"
        )
    assert exact() == {"authorized": 11, "inserted": 6, "invalid": 3}
    assert store.reset(claimed[6])  # a reset
    assert exact() == {"authorized": 12, "inserted": 6, "invalid": 2}
    # A reload of a changed order that needs a person: it is due again (ON CONFLICT update).
    store.upsert_orders([make_order(int(claimed[7][1:]), title="new title")])
    assert exact() == {"authorized": 13, "inserted": 6, "invalid": 1}
    _sql(orders_db, "ALTER TABLE nontax.bill_attempt DISABLE TRIGGER USER")
    try:  # deletes (the history first: it refers to the orders)
        _sql(orders_db, "DELETE FROM nontax.bill_attempt WHERE order_id = ANY(%s)", (claimed[:2],))
    finally:
        _sql(orders_db, "ALTER TABLE nontax.bill_attempt ENABLE TRIGGER USER")
    _sql(orders_db, "DELETE FROM nontax.bill_order WHERE order_id = ANY(%s)", (claimed[:2],))
    assert exact() == {"authorized": 13, "inserted": 4, "invalid": 1}
    # A change rolled back leaves the counts as they were.
    conn = psycopg2.connect(orders_db)
    with conn.cursor() as cur:
        cur.execute("UPDATE nontax.bill_order SET status = 'failed', reason = 'x'")
    conn.rollback()
    conn.close()
    assert exact() == {"authorized": 13, "inserted": 4, "invalid": 1}
    store.claim_due("run-2", lease_s=600)  # folds the kept rows: still the same counts
    assert exact() == {"authorized": 13, "inserted": 4, "invalid": 1}
    _sql(orders_db, "SELECT nontax.compact_status_counts()")
    conn = psycopg2.connect(orders_db)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM nontax.bill_status_count")
        assert cur.fetchone()[0] == 3  # one row per status left
    conn.close()
    _sql(orders_db, "ALTER TABLE nontax.bill_attempt DISABLE TRIGGER USER")
    try:
        _sql(orders_db, "TRUNCATE nontax.bill_request, nontax.bill_attempt, nontax.bill_order")
    finally:
        _sql(orders_db, "ALTER TABLE nontax.bill_attempt ENABLE TRIGGER USER")
    assert exact() == {}


def test_the_counts_stay_exact_with_writers_and_folds_at_once(store: OrderStore, orders_db):
    orders = [make_order(n) for n in range(1, 201)]
    store.upsert_orders(orders)
    ids = [o.order_id for o in orders]
    batches = [ids[i::4] for i in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def batch(order_ids: list[str], n: int) -> None:
        own = OrderStore(connect_dsn(orders_db))
        try:
            for order_id in order_ids:
                hold = held(own, order_id, run_id=f"run-{n}")
                if int(order_id[1:]) % 5:
                    own.record_uploaded(order_id, "m", hold=hold, run_id=f"run-{n}")
                    own.record_inserted(order_id, "c", "o", version=hold.version, run_id="r")
                else:
                    own.record_end(order_id, "failed", "no", hold=hold, run_id="r", step="insert")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            own.close()

    def fold() -> None:
        conn = psycopg2.connect(orders_db)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT nontax.compact_status_counts()")
        conn.close()

    folder = threading.Thread(target=fold)
    folder.start()
    writers = [threading.Thread(target=batch, args=(b, n)) for n, b in enumerate(batches)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    folder.join()
    assert not errors, errors
    assert store.count_by_status() == _counted(orders_db) == {"inserted": 160, "failed": 40}


def test_the_migration_counts_the_orders_a_database_already_has(orders_db_uri, tmp_path):
    from nontax_dev.pg import drop_database, fresh_database
    from wechat_nontax.store.migrate import MIGRATIONS_DIR, migrate

    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0008":
            (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    server = with_dbname(orders_db_uri, "postgres")
    name = f"nontax_test_before_counts_{os.getpid()}"
    dsn = fresh_database(server, name)
    try:
        migrate(dsn, tmp_path)  # a database from before the kept counts, with orders
        old = OrderStore(connect_dsn(dsn))
        insert_orders_plainly(dsn, [make_order(n) for n in range(1, 6)])
        hold = held(old, "T00000001")
        old.record_end("T00000001", "invalid", "why", hold=hold, run_id="r", step="validate")
        old.close()
        migrate(dsn)
        store = OrderStore(connect_dsn(dsn))
        try:
            assert store.count_by_status() == _counted(dsn) == {"authorized": 4, "invalid": 1}
            store.upsert_orders([make_order(6)])
            assert store.count_by_status() == {"authorized": 5, "invalid": 1}
        finally:
            store.close()
    finally:
        drop_database(server, name)


def test_a_day_of_single_row_write_backs_leaves_the_counts_short(store: OrderStore, orders_db):
    """Write-backs change one order each, in a transaction each: the kept rows they append are
    folded as they go (every 1,000 status changes), so the overview's sum reads a few
    thousand rows at most, whatever the day's number of bills, and the counts stay exact."""
    store.upsert_orders([make_order(n) for n in range(1, 2501)])
    for n in range(1, 61):  # as a batch writes them back, through the store
        hold = held(store, f"T{n:08d}", run_id="run-1")
        store.record_uploaded(f"T{n:08d}", "m", hold=hold, run_id="run-1")
        store.record_inserted(f"T{n:08d}", "c", "o", version=hold.version, run_id="run-1")
    conn = psycopg2.connect(orders_db)
    conn.autocommit = True  # one transaction a change, as a write-back's
    with conn.cursor() as cur:
        for n in range(61, 2501):
            cur.execute(
                "UPDATE nontax.bill_order SET status = 'uploaded', s_pdf_media_id = 'm', "
                "pdf_uploaded_at = now() WHERE order_id = %s",
                (f"T{n:08d}",),
            )
            cur.execute(
                "UPDATE nontax.bill_order SET status = 'inserted', code = 'c', openid = 'o', "
                "inserted_at = now() WHERE order_id = %s",
                (f"T{n:08d}",),
            )
        cur.execute("SELECT count(*) FROM nontax.bill_status_count")
        (kept_rows,) = cur.fetchone()
    conn.close()
    assert store.count_by_status() == _counted(orders_db) == {"inserted": 2500}
    # 5,000 changes appended 10,000 rows; folded every 1,000 changes: at most 2,000 + a few.
    assert kept_rows <= 2 * 1000 + len(ALL), kept_rows
