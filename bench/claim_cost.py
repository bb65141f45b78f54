"""The claim's cost: 10,000 due orders in an order table of 1,000,000 rows and of 20,000 rows.

Each table is built in a database of its own (finished orders plus 10,000 due ones, made by SQL
in bulk), analysed, then `OrderStore.claim_due` claims the 10,000 due orders; the median of a few
claims (each rolled back by releasing the claim) is reported with the claim's EXPLAIN ANALYZE.
"""

from __future__ import annotations

import statistics
import time
import uuid

import psycopg2

from nontax_dev.pg import drop_database, fresh_database
from wechat_nontax.store.holds import CLAIM_SQL
from wechat_nontax.store.migrate import migrate
from wechat_nontax.store.orders import OrderStore

DUE = 10_000


def _fill(dsn: str, total: int, due: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        # Finished orders first (older), then the due ones: the claim must skip the former.
        cur.execute(
            """
            INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time,
                billing_no, billing_code, pdf_path, status, code, openid, inserted_at,
                authorized_at)
            SELECT 'B' || lpad(i::text, 9, '0'), 'pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw',
                   'wx5a9d3c1e7b2f4086', 100 + mod(i, 5000), '某市第一人民医院门诊收费',
                   1760000000 + i, 'N' || i, 'C' || i, 'x/' || i || '.pdf',
                   CASE WHEN i <= %(finished)s THEN 'inserted' ELSE 'authorized' END,
                   CASE WHEN i <= %(finished)s THEN 'code' || i END,
                   CASE WHEN i <= %(finished)s THEN 'openid' || i END,
                   CASE WHEN i <= %(finished)s THEN now() END,
                   now() - make_interval(secs => %(total)s - i)
            FROM generate_series(1, %(total)s) AS i
            """,
            {"total": total, "finished": total - due},
        )
        cur.execute("VACUUM ANALYZE nontax.bill_order")
    conn.close()


def measure(dsn: str, *, repeats: int = 5) -> dict:
    store = OrderStore(psycopg2.connect(dsn))
    timings = []
    for n in range(repeats):
        run_id = f"bench-{n}"
        started = time.perf_counter()
        claimed = store.claim_due(run_id, lease_s=3600, limit=DUE)
        timings.append((time.perf_counter() - started) * 1000)
        assert len(claimed) == DUE, len(claimed)
        store.release(run_id)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + CLAIM_SQL,
            {"run_id": "explain", "lease_s": 3600, "limit": DUE, "targeted": False,
             "order_ids": []},
        )  # fmt: skip
        plan = "\n".join(row[0] for row in cur.fetchall())
    conn.rollback()
    conn.close()
    store.close()
    return {"claim_ms": round(statistics.median(timings), 1), "runs_ms": timings, "plan": plan}


def claim_cost(server_uri: str, total: int) -> dict:
    """Build a table of `total` rows (10,000 due) in a scratch database and measure the claim."""
    name = f"nontax_bench_{uuid.uuid4().hex[:8]}"
    dsn = fresh_database(server_uri, name)
    try:
        migrate(dsn)
        started = time.perf_counter()
        _fill(dsn, total, DUE)
        built_s = time.perf_counter() - started
        result = measure(dsn)
        result.update(rows=total, due=DUE, build_s=round(built_s, 1))
        return result
    finally:
        drop_database(server_uri, name)


if __name__ == "__main__":
    import json
    import os
    import sys

    server = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    sizes = [int(a) for a in sys.argv[1:]] or [20_000, 1_000_000]
    for size in sizes:
        out = claim_cost(server, size)
        print(json.dumps({k: v for k, v in out.items() if k != "plan"}))
        print(out["plan"])
