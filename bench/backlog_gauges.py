"""The backlog gauges at 1,000,000 orders: a scrape's time and each part's plan.

A database of its own (`nontax_bench_gauges`, kept between runs while its fingerprint matches,
like the Bills view's): the Bills view's million orders (`bills_view.MAKE_ORDERS_SQL`: 95%
inserted, 1% invalid, 0.5% failed, 1.5% due, 0.5% awaiting_auth...) plus 20,000 orders waiting
for their payer (`unauthorized`), 2,000 pending refusals and voids and a quota stop in force.
Then, `REPEATS` times after a warm-up, the median of:
- `read_ms`: `backlog.read_backlog` over an open connection (the statement alone);
- `scrape_ms`: `GET /nontax/metrics` through the endpoint's real FastAPI app in this process
  (bearer check, the Connection looked up, a new connection to the database, the statement,
  the text format), as the api-server runs it minus the network;
and the plan of the statement (EXPLAIN ANALYZE): it may read nontax.bill_order only through
indexes. The budget is 50 ms a scrape.

    .venv/bin/python bench/backlog_gauges.py [--orders 1000000] [--fresh]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg2

from bills_view import MAKE_ORDERS_SQL, _explained, kept_fingerprint, new_database

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "nontax_bench_gauges"
REPEATS = 25
BUDGET_MS = 50.0

WAITING_SQL = """
INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time, billing_no,
    billing_code, status, created_at, authorized_at)
SELECT 'U' || lpad(i::text, 9, '0'), 'pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw', 'wx5a9d3c1e7b2f4086', 100,
       '某市第一人民医院门诊收费', 1700000000 + i, 'UN' || lpad(i::text, 10, '0'),
       'UC' || lpad(i::text, 8, '0'), 'unauthorized', now() - make_interval(secs => i * 60),
       now() - make_interval(secs => i * 60)
FROM generate_series(1, 20000) AS i
"""
REQUESTS_SQL = """
INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by, status, requested_at)
SELECT order_id, CASE WHEN row_number() OVER () % 2 = 0 THEN 'refuse' ELSE 'void' END,
       'bench', 'bench', 'pending', now() - interval '1 hour'
FROM nontax.bill_order WHERE status = 'inserted' ORDER BY order_id LIMIT 2000
"""
QUOTA_SQL = """
INSERT INTO nontax.api_quota (appid, api, stopped_until, errcode, errmsg)
VALUES ('wx5a9d3c1e7b2f4086', 'insert', now() + interval '10 hours', 72057, 'bench')
"""


def _fingerprint(server: str, n: int) -> str:
    from wechat_nontax.store.migrate import known_migrations

    digest = hashlib.sha256(f"{n}\n{MAKE_ORDERS_SQL}{WAITING_SQL}{REQUESTS_SQL}".encode())
    for migration in known_migrations():
        digest.update(migration.checksum.encode())
    return digest.hexdigest()[:16]


def gauges_database(server: str, n: int, *, fresh: bool, say) -> tuple[str, dict]:
    from nontax_dev.pg import with_dbname

    wanted = _fingerprint(server, n)
    dsn = with_dbname(server, DB_NAME)
    if not fresh and kept_fingerprint(server, DB_NAME) == wanted:
        say(f"gauges: the kept {n:,}-order database matches ({wanted}): used again")
        return dsn, {"built": False}
    started = time.perf_counter()
    conn = new_database(server, DB_NAME)
    with conn.cursor() as cur:
        cur.execute(MAKE_ORDERS_SQL, {"n": n})
        cur.execute(WAITING_SQL)
        cur.execute(REQUESTS_SQL)
        cur.execute("VACUUM (ANALYZE) nontax.bill_order")
        cur.execute("VACUUM (ANALYZE) nontax.bill_request")
        cur.execute(f"COMMENT ON DATABASE \"{DB_NAME}\" IS '{wanted}'")
    conn.close()
    build_s = round(time.perf_counter() - started, 1)
    say(f"gauges: built {n:,} orders in {build_s} s")
    return dsn, {"built": True, "build_s": build_s}


def _median_ms(call, repeats: int) -> float:
    call()  # warm-up: caches, the first connection's setup
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def _orders_connection(dsn: str) -> str:
    from nontax_dev.airflow_run import orders_connection

    return orders_connection(dsn)


def gauges_row(server: str, *, n: int = 1_000_000, fresh: bool = False, say=print) -> dict:
    from fastapi.testclient import TestClient

    from wechat_nontax.observability.backlog import BACKLOG_SQL, read_backlog
    from wechat_nontax.observability.endpoint import create_app

    dsn, built = gauges_database(server, n, fresh=fresh, say=say)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:  # a quota stop that is live now
        cur.execute("DELETE FROM nontax.api_quota")
        cur.execute(QUOTA_SQL)
    conn.close()
    conn = psycopg2.connect(dsn)
    read_ms = _median_ms(lambda: read_backlog(conn), REPEATS)
    with conn.cursor() as cur:
        plan, _ = _explained(cur, BACKLOG_SQL, {})
    conn.rollback()
    conn.close()
    token = "bench-" + os.urandom(8).hex()
    os.environ["AIRFLOW_CONN_NONTAX_ORDERS_DB"] = _orders_connection(dsn)
    os.environ["AIRFLOW_CONN_NONTAX_METRICS"] = json.dumps(
        {"conn_type": "generic", "password": token}
    )
    client = TestClient(create_app())
    headers = {"Authorization": f"Bearer {token}"}

    def scrape() -> None:
        answer = client.get("/metrics", headers=headers)
        assert answer.status_code == 200 and b"nontax_backlog_up 1.0" in answer.content

    scrape_ms = _median_ms(scrape, REPEATS)
    sequential = [line for line in plan.splitlines() if "Seq Scan on bill_order" in line]
    row = {
        "orders": n + 20_000, "read_ms": read_ms, "scrape_ms": scrape_ms, "repeats": REPEATS,
        "budget_ms": BUDGET_MS, "within_budget": scrape_ms < BUDGET_MS,
        "bill_order_read_by_index_only": not sequential, **built,
    }  # fmt: skip
    say(f"gauges: read {read_ms} ms, scrape {scrape_ms} ms (median of {REPEATS})")
    if sequential:
        say("gauges: nontax.bill_order read sequentially:\n" + plan)
    row["plan"] = plan
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--fresh", action="store_true", help="build the big table anew")
    args = parser.parse_args(argv)
    server = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    row = gauges_row(server, n=args.orders, fresh=args.fresh)
    print(json.dumps({k: v for k, v in row.items() if k != "plan"}, indent=2))
    print(row["plan"])
    return 0 if row["within_budget"] and row["bill_order_read_by_index_only"] else 1


if __name__ == "__main__":
    sys.exit(main())
