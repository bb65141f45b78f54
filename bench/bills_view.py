"""The Bills view at 1,000,000 orders: each page's answer time over HTTP, and each query's plan.

The orders are made by SQL in a database of their own (`nontax_bench_bills`): a year of orders,
a change every 30 s, 95% inserted, 1% invalid, 0.5% failed, the rest due, duplicate or rejected,
with their history (load, upload, insert, a transient error before a failure or a duplicate:
2.97 rows an order). The database is kept between runs and used again while its fingerprint
(the migrations, this generator, the size, the server's version) is the same: nothing here
changes it for good (the day leaves every order as it found it), so a kept one is what a new
one would be. `--fresh-bills` builds it anew.

Before the pages are asked for, a day of `n` bills is written back as the batches write them
(`DAY_SQL`: two status changes a bill, one row and one transaction each), so the overview's
counts are read as they are after a big day, not as one load statement leaves them.

The pages are served by a real api-server of their own (`airflow api-server`, one worker) with
the stack's environment (its metadata database, users and JWT secret), its `nontax_orders_db`
pointing at the big database; each page is asked for `REPEATS` times after a warm-up, with the
admin's Bearer token, and its median counts. Each query the pages run is then EXPLAINed
(ANALYZE, BUFFERS) with the same parameters, and none may read nontax.bill_order sequentially.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import requests

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "nontax_bench_bills"
REPEATS = 15
PAGE_SIZE = 50  # wechat_nontax.ui.view.PAGE_SIZE, +1 read to know there is more
RED_REASON = "pdf_path: no such file"  # the reason of every invalid order made here (1%)

# %(n)s orders, order i changed (30 * (n - i)) s ago; the status cycles every 1,000 orders.
MAKE_ORDERS_SQL = """
INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time, billing_no,
    billing_code, pdf_path, status, reason, authorized_at, s_pdf_media_id, pdf_uploaded_at,
    code, openid, inserted_at, last_errcode, last_errmsg, attempts, created_at, updated_at)
SELECT 'B' || lpad(i::text, 9, '0'), 'pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw', 'wx5a9d3c1e7b2f4086',
       100 + i %% 50000, '某市第一人民医院门诊收费', 1700000000 + i,
       'N' || lpad(i::text, 10, '0'), 'C' || lpad(i::text, 8, '0'), 'bills/' || i || '.pdf', s,
       CASE s WHEN 'invalid' THEN 'pdf_path: no such file'
              WHEN 'failed' THEN 'WeChat 40078: the card is not authorised'
              WHEN 'duplicate' THEN 'WeChat 72056: already in a card package'
              WHEN 'rejected' THEN 'WeChat 72035: refused by the business' END,
       at - interval '5 min',
       CASE WHEN s IN ('uploaded', 'inserted') THEN 'media-' || i END,
       CASE WHEN s IN ('uploaded', 'inserted') THEN at - interval '1 min' END,
       CASE WHEN s = 'inserted' THEN 'code' || i END,
       CASE WHEN s = 'inserted' THEN 'openid' || i END,
       CASE WHEN s = 'inserted' THEN at END,
       CASE s WHEN 'inserted' THEN 0 WHEN 'failed' THEN 40078 END,
       CASE s WHEN 'inserted' THEN 'ok' END,
       CASE WHEN s IN ('inserted', 'failed', 'duplicate', 'rejected') THEN 2 ELSE 0 END,
       at - interval '5 min', at
FROM (SELECT i, now() - make_interval(secs => (%(n)s - i) * 30) AS at,
             CASE WHEN i %% 1000 < 10 THEN 'invalid' WHEN i %% 1000 < 15 THEN 'failed'
                  WHEN i %% 1000 < 25 THEN 'duplicate' WHEN i %% 1000 < 30 THEN 'rejected'
                  WHEN i %% 1000 < 40 THEN 'authorized' WHEN i %% 1000 < 45 THEN 'uploaded'
                  WHEN i %% 1000 < 50 THEN 'awaiting_auth' ELSE 'inserted' END AS s
      FROM generate_series(1, %(n)s) AS i) AS g
"""
# Each order's history, as its journey left it. Written with the foreign key's checks off (the
# orders are all there): 3 million lookups would double the build.
MAKE_HISTORY_SQL = """
INSERT INTO nontax.bill_attempt (order_id, at, run_id, step, outcome, errcode, errmsg,
    duration_ms)
SELECT o.order_id, o.updated_at - make_interval(secs => 60 - h.k),
       'scheduled__' || to_char(o.updated_at, 'YYYY-MM-DD'), h.step, h.outcome, h.errcode,
       h.errmsg, CASE WHEN h.step IN ('upload', 'insert') THEN 50 + h.k END
FROM nontax.bill_order o
CROSS JOIN LATERAL (VALUES
   (1, 'load', 'new', NULL::int, NULL::text),
   (2, CASE WHEN o.status = 'invalid' THEN 'validate' ELSE 'upload' END,
       CASE WHEN o.status = 'invalid' THEN 'invalid' ELSE 'uploaded' END, NULL, o.reason),
   (3, 'insert', 'transient', -1, 'system error'),
   (4, 'insert', o.status, o.last_errcode, o.reason)
) AS h(k, step, outcome, errcode, errmsg)
WHERE h.k = 1
   OR (h.k = 2 AND o.status NOT IN ('authorized', 'awaiting_auth'))
   OR (h.k = 3 AND o.status IN ('failed', 'duplicate'))
   OR (h.k = 4 AND o.status NOT IN ('authorized', 'awaiting_auth', 'uploaded', 'invalid'))
"""


# A day of write-backs as they happen: `n` bills, each changing status twice, one row and one
# transaction a change, so the count triggers append (and fold) exactly as a day of issuing
# does. Each bill goes inserted -> uploaded -> inserted (the inserted orders taken in turn):
# the orders end as they were, so a kept database stays what a new one would be.
DAY_SQL = """
CREATE OR REPLACE PROCEDURE pg_temp.a_day_of_write_backs(n integer) LANGUAGE plpgsql AS $$
DECLARE
    ids text[] := ARRAY(SELECT order_id FROM nontax.bill_order WHERE status = 'inserted'
                        ORDER BY order_id);
    id text;
BEGIN
    FOR i IN 0 .. n - 1 LOOP
        id := ids[1 + i % cardinality(ids)];
        UPDATE nontax.bill_order SET status = 'uploaded' WHERE order_id = id;
        COMMIT;
        UPDATE nontax.bill_order SET status = 'inserted' WHERE order_id = id;
        COMMIT;
    END LOOP;
END;
$$
"""


def a_day_of_write_backs(dsn: str, n: int, say) -> dict:
    """`n` bills written back one by one (DAY_SQL); the kept rows the overview then sums, and
    the counts' query time before and after the VACUUM of their table. The folds leave dead
    rows that autovacuum clears within its minute on a server that runs it (the default); the
    test servers run without it (`autovacuum = off`), so the pages are measured after that
    VACUUM, and the time before it shows what a server without autovacuum would pay."""
    from wechat_nontax.store.reads import COUNTS_SQL

    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # the procedure commits each change
    started = time.perf_counter()
    with conn.cursor() as cur:
        # The same transactions without waiting for each one's WAL flush: 2 million flushes
        # would take the day's time (37 min on a shared machine), not leave other rows.
        cur.execute("SET synchronous_commit = off")
        cur.execute(DAY_SQL)
        # A statement of its own: a procedure may commit only outside a transaction block.
        cur.execute("CALL pg_temp.a_day_of_write_backs(%s)", (n,))
        day_s = time.perf_counter() - started
        cur.execute("VACUUM (ANALYZE) nontax.bill_order")
        cur.execute("SELECT count(*) FROM nontax.bill_status_count")
        (kept_rows,) = cur.fetchone()
        unvacuumed_ms = _explained(cur, COUNTS_SQL, {})[1]
        cur.execute("VACUUM nontax.bill_status_count")
        vacuumed_ms = _explained(cur, COUNTS_SQL, {})[1]
    conn.close()
    say(
        f"bills: a day of {n:,} bills written back in {day_s:.0f} s; {kept_rows:,} kept rows; "
        f"counts {unvacuumed_ms} ms, {vacuumed_ms} ms after a VACUUM of their table"
    )
    return {
        "bills": n, "status_changes": 2 * n, "s": round(day_s, 1), "kept_rows": kept_rows,
        "counts_ms_before_vacuum": unvacuumed_ms, "counts_ms": vacuumed_ms,
    }  # fmt: skip


def _explained(cur, sql: str, params: object) -> tuple[str, float]:
    """The statement's plan as EXPLAIN (ANALYZE, BUFFERS) shows it, and its execution time."""
    cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
    plan = "\n".join(row[0] for row in cur.fetchall())
    return plan, float(plan.rsplit("Execution Time: ", 1)[1].split()[0])


def fingerprint(server: str, n: int) -> str:
    from wechat_nontax.store.migrate import known_migrations

    digest = hashlib.sha256(f"{n}\n{MAKE_ORDERS_SQL}\n{MAKE_HISTORY_SQL}".encode())
    for migration in known_migrations():
        digest.update(migration.checksum.encode())
    conn = psycopg2.connect(server)
    with conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        digest.update(cur.fetchone()[0].encode())
    conn.close()
    return digest.hexdigest()[:16]


def kept_fingerprint(server: str, name: str = DB_NAME) -> str | None:
    """The fingerprint a kept benchmark database was built with (its comment), if it exists."""
    conn = psycopg2.connect(server)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        )
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def new_database(server: str, name: str) -> psycopg2.extensions.connection:
    """A benchmark database made anew and migrated: a connection to it, autocommit."""
    from nontax_dev.pg import fresh_database, with_dbname
    from wechat_nontax.store.migrate import migrate

    fresh_database(server, name)
    migrate(with_dbname(server, name))
    conn = psycopg2.connect(with_dbname(server, name))
    conn.autocommit = True
    return conn


def bills_database(server: str, n: int, *, fresh: bool, say) -> tuple[str, dict]:
    """The database of `n` orders: the kept one when its fingerprint matches, else a new one."""
    from nontax_dev.pg import with_dbname

    wanted = fingerprint(server, n)
    dsn = with_dbname(server, DB_NAME)
    if not fresh and kept_fingerprint(server) == wanted:
        say(f"bills: the kept {n:,}-order database matches ({wanted}): used again")
        return dsn, {"built": False, "fingerprint": wanted}
    started = time.perf_counter()
    conn = new_database(server, DB_NAME)
    with conn.cursor() as cur:
        cur.execute(MAKE_ORDERS_SQL, {"n": n})
        orders_s = time.perf_counter() - started
        cur.execute("SET session_replication_role = replica")
        cur.execute(MAKE_HISTORY_SQL)
        cur.execute("RESET session_replication_role")
        cur.execute("VACUUM (ANALYZE) nontax.bill_order")
        cur.execute("VACUUM (ANALYZE) nontax.bill_attempt")
        cur.execute("SELECT count(*) FROM nontax.bill_attempt")
        (history,) = cur.fetchone()
        cur.execute(f"COMMENT ON DATABASE \"{DB_NAME}\" IS '{wanted}'")
    conn.close()
    built = {
        "built": True,
        "fingerprint": wanted,
        "build_s": round(time.perf_counter() - started, 1),
        "orders_s": round(orders_s, 1),
        "history_rows": history,
    }
    say(f"bills: built {n:,} orders and {history:,} history rows in {built['build_s']} s")
    return dsn, built


@contextlib.contextmanager
def api_server(stack, orders_dsn: str, say) -> Iterator[str]:
    """An api-server of its own (one worker) on the stack's Airflow, reading `orders_dsn`;
    always stopped, its whole process group."""
    from nontax_dev.airflow_run import AIRFLOW, orders_connection
    from wechat_sandbox.process import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **stack.env,
        "AIRFLOW_CONN_NONTAX_ORDERS_DB": orders_connection(orders_dsn),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
    }
    log = stack.config.logs / "bills-api-server.log"
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _answers(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bills api-server did not start: see {log}")
            time.sleep(0.5)
        say(f"bills: api-server on {url}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/api/v2/version", timeout=2).ok
    except requests.RequestException:
        return False


def _sample(dsn: str, n: int) -> dict:
    """What the pages ask for, taken from the data: an order that failed halfway through the
    table, the day of the median order, and a mark 90% deep in the listing of inserted ones."""
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT order_id, billing_no FROM nontax.bill_order WHERE status = 'failed' "
            "AND order_id >= %s ORDER BY order_id LIMIT 1",
            (f"B{n // 2:09d}",),
        )
        failed, billing_no = cur.fetchone()
        cur.execute("SELECT count(*) FROM nontax.bill_order WHERE status = 'inserted'")
        (inserted,) = cur.fetchone()
        # Where the listing of `inserted` is 90% deep (read once, through the same index).
        cur.execute(
            "SELECT updated_at, order_id FROM nontax.bill_order WHERE status = 'inserted' "
            "ORDER BY updated_at, order_id OFFSET %s LIMIT 1",
            (inserted // 10,),
        )
        deep_at, deep_id = cur.fetchone()
        cur.execute(
            "SELECT updated_at FROM nontax.bill_order WHERE order_id = %s",
            (f"B{n // 2:09d}",),
        )
        (middle,) = cur.fetchone()
    conn.close()
    return {
        "failed": failed,
        "billing_no": billing_no,
        "day": middle.astimezone(UTC).date(),
        "deep": (deep_at, deep_id),
        "deep_rank": inserted - inserted // 10,
    }


def _pages(sample: dict) -> dict[str, tuple[str, dict]]:
    day = sample["day"].isoformat()
    deep_at, deep_id = sample["deep"]
    return {
        "overview": ("/bills/", {}),
        "order": ("/bills/order", {"id": sample["failed"]}),
        "search": ("/bills/", {"status": "all", "q": sample["billing_no"]}),
        # From the opening page (its filter "need a person"): the search looks in every status.
        "search_opening": ("/bills/", {"q": sample["billing_no"]}),
        # The confirmation of "all that need a person for this reason": 1,000 orders listed.
        "many_of_reason": ("/bills/many", {"action": "reset", "reason": RED_REASON}),
        "filtered": ("/bills/", {"status": "inserted", "since": day, "until": day}),
        "deep_page": (
            "/bills/",
            {"status": "inserted", "after": f"{deep_at.isoformat()}|{deep_id}", "page": "18001"},
        ),
    }


def _queries(sample: dict) -> dict[str, tuple[str, object]]:
    """The SQL each page runs, with its parameters (the store's own statements)."""
    from wechat_nontax.store.actions import RED_OF_REASON_SQL
    from wechat_nontax.store.reads import (
        COUNTS_SQL,
        HISTORY_SQL,
        ORDER_ROW_SQL,
        BillsPage,
        PageMark,
    )
    from wechat_nontax.ui.view import ATTENTION, BULK_MAX, statuses_of

    day = datetime.combine(sample["day"], datetime.min.time(), UTC)
    limit = PAGE_SIZE + 1
    return {
        "counts": (COUNTS_SQL, {}),
        "overview_list": BillsPage(statuses_of(ATTENTION), limit=limit).sql(),
        "order_row": (ORDER_ROW_SQL, (sample["failed"],)),
        "order_history": (HISTORY_SQL, (sample["failed"],)),
        "search": BillsPage(statuses_of("all"), search=sample["billing_no"], limit=limit).sql(),
        "red_of_reason": (RED_OF_REASON_SQL, (RED_REASON, BULK_MAX + 1)),
        "filtered": BillsPage(
            ["inserted"], since=day, until=day + timedelta(days=1), limit=limit
        ).sql(),
        "deep_page": BillsPage(["inserted"], after=PageMark(*sample["deep"]), limit=limit).sql(),
    }


def explain(dsn: str, sample: dict) -> dict[str, dict]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    plans = {}
    with conn.cursor() as cur:
        for name, (sql, params) in _queries(sample).items():
            plan, ms = _explained(cur, sql, params)
            plans[name] = {
                "seq_scan_on_bill_order": "Seq Scan on bill_order" in plan,
                "execution_ms": ms,
                "plan": plan,
            }
    conn.close()
    return plans


def measure(url: str, token: str, pages: dict[str, tuple[str, dict]]) -> dict[str, dict]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    out = {}
    for name, (path, params) in pages.items():
        timings = []
        for n in range(REPEATS + 2):
            started = time.perf_counter()
            answer = session.get(f"{url}{path}", params=params, timeout=30)
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status_code != 200:
                raise RuntimeError(f"{name}: {answer.status_code} {answer.text[:300]}")
            if n >= 2:  # two warm-ups: the first request builds the app and its templates
                timings.append(elapsed)
        out[name] = {
            "median_ms": round(statistics.median(timings), 1),
            "max_ms": round(max(timings), 1),
            "bytes": len(answer.content),
        }
    session.close()
    return out


def bills_row(stack, server: str, *, n: int = 1_000_000, fresh: bool = False, say) -> dict:
    """The `bills_view_1m` row of bench/results.json."""
    started = time.perf_counter()
    dsn, build = bills_database(server, n, fresh=fresh, say=say)
    day = a_day_of_write_backs(dsn, n, say) if n else None
    sample = _sample(dsn, n)
    with api_server(stack, dsn, say) as url:
        answer = requests.post(
            f"{url}/auth/token",
            json={"username": "admin", "password": stack.password},
            timeout=30,
        )
        answer.raise_for_status()
        pages = measure(url, answer.json()["access_token"], _pages(sample))
    plans = explain(dsn, sample)
    medians = {name: page["median_ms"] for name, page in pages.items()}
    say(f"bills at {n:,} orders (median ms): {medians}")
    return {
        "orders": n,
        "database": build,
        "day_of_write_backs": day,
        "deep_page_rank": sample["deep_rank"],
        "pages": pages,
        "ms": {**medians, "max": max(medians.values())},
        "queries_ms": {name: plan["execution_ms"] for name, plan in plans.items()},
        "seq_scan_on_bill_order": any(p["seq_scan_on_bill_order"] for p in plans.values()),
        "plans": {name: plan["plan"] for name, plan in plans.items()},
        "row_s": round(time.perf_counter() - started, 1),
    }
