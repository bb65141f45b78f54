"""The order store's reads for the Bills view: one page of orders of some statuses, newest
change first, paginated, filtered by the day of the change and searched by order_id, billing_no
or billing_code; an order's history rows; a person's action in the history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2

from factories import make_order
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.reads import BillsPage, PageMark

NEED = ["failed", "invalid"]


def _set(orders_db: str, order_id: str, status: str, minutes_ago: int) -> None:
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:  # the test's own data
        cur.execute(
            "UPDATE nontax.bill_order SET status = %s, reason = 'why', "
            "updated_at = now() - make_interval(mins => %s) WHERE order_id = %s",
            (status, minutes_ago, order_id),
        )


def _ids(rows: list[dict]) -> list[str]:
    return [r["order_id"] for r in rows]


def _mark(row: dict) -> PageMark:
    return PageMark(row["updated_at"], row["order_id"])


def test_a_page_lists_the_statuses_asked_for_newest_first_and_pages_on(store, orders_db):
    store.upsert_orders([make_order(n) for n in range(1, 8)])
    for n, (status, ago) in enumerate(
        [("invalid", 50), ("failed", 40), ("invalid", 30), ("failed", 20), ("invalid", 10)], 1
    ):
        _set(orders_db, f"T{n:08d}", status, ago)
    first = store.bills_page(BillsPage(NEED, limit=2))
    second = store.bills_page(BillsPage(NEED, after=_mark(first[-1]), limit=2))
    third = store.bills_page(BillsPage(NEED, after=_mark(second[-1]), limit=2))
    assert _ids(first + second + third) == [
        "T00000005", "T00000004", "T00000003", "T00000002", "T00000001"
    ]  # fmt: skip
    assert store.bills_page(BillsPage(NEED, after=_mark(third[-1]), limit=2)) == []
    # Back from the last page: the newer ones, newest first as always.
    back = store.bills_page(BillsPage(NEED, before=_mark(third[0]), limit=2))
    assert _ids(back) == ["T00000003", "T00000002"]
    assert _ids(store.bills_page(BillsPage(NEED, before=_mark(first[0])))) == []
    assert first[0]["last_step"] == "load" and first[0]["reason"] == "why"
    assert _ids(store.bills_page(BillsPage(["failed"]))) == ["T00000004", "T00000002"]
    assert {r["status"] for r in store.bills_page(BillsPage(["authorized"]))} == {"authorized"}
    assert store.bills_page(BillsPage([])) == []


def test_orders_changed_in_the_same_instant_page_on_by_order_id(store, orders_db):
    store.upsert_orders([make_order(n) for n in range(1, 6)])
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:  # the test's own data
        cur.execute("UPDATE nontax.bill_order SET status = 'invalid', reason = 'why', "
                    "updated_at = '2026-01-01T00:00:00Z'")  # fmt: skip
    seen, after = [], None
    while page := store.bills_page(BillsPage(NEED, after=after, limit=2)):
        seen += _ids(page)
        after = _mark(page[-1])
    assert seen == [f"T{n:08d}" for n in (5, 4, 3, 2, 1)]


def test_a_page_is_filtered_by_the_day_of_the_change_and_searched(store, orders_db):
    store.upsert_orders([make_order(n) for n in (1, 2)])
    _set(orders_db, "T00000001", "invalid", 3 * 24 * 60)
    _set(orders_db, "T00000002", "invalid", 1)
    now = datetime.now(UTC)
    recent = store.bills_page(BillsPage(NEED, since=now - timedelta(days=1)))
    assert [r["order_id"] for r in recent] == ["T00000002"]
    older = store.bills_page(BillsPage(NEED, until=now - timedelta(days=1)))
    assert [r["order_id"] for r in older] == ["T00000001"]
    for term in ("T00000001", "NO0000000001", "C0000001"):
        assert [r["order_id"] for r in store.bills_page(BillsPage(NEED, search=term))] == [
            "T00000001"
        ]
    assert store.bills_page(BillsPage(NEED, search="' OR 1=1 --")) == []


def test_a_persons_action_goes_into_the_history(store: OrderStore):
    store.upsert_orders([make_order(1)])
    assert store.record_operator_action(
        "T00000001", outcome="issue_now", note="issue now by admin", run_id="manual__1"
    )
    assert not store.record_operator_action("NO_SUCH", outcome="issue_now", note="x")
    rows = store.history_rows("T00000001")
    assert [(r["step"], r["outcome"], r["run_id"], r["errmsg"]) for r in rows][-1] == (
        "operator",
        "issue_now",
        "manual__1",
        "issue now by admin",
    )
