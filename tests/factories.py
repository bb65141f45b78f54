"""Orders and PDFs for tests (valid by default, every field overridable), and an emptied order
database to load them into."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg2

from wechat_nontax.wechat.bill import Order
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID


def empty_order_database(dsn: str) -> None:
    """Every row of the order database gone: orders, history, requests, tokens, claims, quotas."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # The history is append-only by trigger; a test reset is the one place allowed to
            # clear it.
            cur.execute("ALTER TABLE nontax.bill_attempt DISABLE TRIGGER USER")
            cur.execute(
                "TRUNCATE nontax.bill_request, nontax.bill_attempt, nontax.bill_order, "
                "nontax.access_token, nontax.run_claim, nontax.authorization_event, "
                "nontax.bill_action, nontax.bill_action_order"
            )
            cur.execute("ALTER TABLE nontax.bill_attempt ENABLE TRIGGER USER")
            cur.execute("TRUNCATE nontax.api_quota")
    finally:
        conn.close()


MINIMAL_PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def make_order(n: int = 1, **fields) -> Order:
    values = {
        "order_id": f"T{n:08d}",
        "card_id": DEFAULT_CARD_ID,
        "appid": DEFAULT_APPID,
        "fee": 100 + n,
        "title": "测试医院门诊收费",
        "billing_time": int(time.time()) - 3600,
        "billing_no": f"NO{n:010d}",
        "billing_code": f"C{n:07d}",
        "pdf_path": f"{n % 7}/T{n:08d}.pdf",
    }
    values.update(fields)
    return Order(**values)


def write_pdf(root: Path, order: Order, content: bytes = MINIMAL_PDF) -> Path:
    path = root / order.pdf_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def order_line(order: Order, **overrides) -> str:
    record = {
        "order_id": order.order_id, "card_id": order.card_id, "appid": order.appid,
        "fee": order.fee, "title": order.title, "billing_time": order.billing_time,
        "billing_no": order.billing_no, "billing_code": order.billing_code,
        "pdf_path": order.pdf_path,
    }  # fmt: skip
    record.update(overrides)
    return json.dumps(record, ensure_ascii=False)


def held(store, order_id: str, run_id: str = "run-test"):
    """A hold on one order, as a batch's task try takes it, for tests that write results."""
    from wechat_nontax.store.holders import Hold

    holder = f"{run_id}|issue_bills|-1|1"
    got = store.hold_batch(holder, [order_id], hold_s=600, include_needs_person=True)
    return Hold(holder, got.held[order_id])


def ask(env, order_id, kind, reason="refunded before issue", by="duty@unit"):
    """A request to refuse or void an order, as the command line asks it."""
    import psycopg2

    from wechat_nontax.requests.contract import request_action

    conn = psycopg2.connect(env.dsn)
    try:
        return request_action(conn, order_id, kind, reason, by)
    finally:
        conn.close()


def request_runner(env, requests_store, *, run_id, try_number=1, **kwargs):
    """The requests DAG's runner as one task try, on the sandbox; waits asserted, not slept."""
    from wechat_nontax.requests.runner import RequestRunner

    return RequestRunner(
        env.hook, requests_store, quotas=env.store, run_id=run_id,
        holder=f"nontax_requests|{run_id}|carry_out_requests|-1|{try_number}", hold_s=120,
        sleep=lambda s: None, **kwargs,
    )  # fmt: skip


def insert_orders_plainly(dsn: str, orders: list[Order]) -> None:
    """Orders inserted as an older schema's load did: only the seed's columns and `pdf_path`
    (today's load also writes columns an older schema does not have yet)."""
    import psycopg2.extras

    from wechat_nontax.store.sql import ORDER_COLUMNS

    fields = [name.strip() for name in ORDER_COLUMNS.split(",")]
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            f"INSERT INTO nontax.bill_order ({ORDER_COLUMNS}) VALUES %s",
            [tuple(getattr(order, name) for name in fields) for order in orders],
        )
    conn.close()
