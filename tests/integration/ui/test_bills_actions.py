"""An action on many orders (wechat_nontax.store.actions, migration 0014) on the real Postgres:
the same rules per order as the action on one (a finished order, one a task try holds, one a
refusal stands against, one waiting for its payer, an unknown id: each refused with its
reason and left as it was), one action with one id that names the person, per order in the
history, and a row changed after it was read is never overwritten."""

from __future__ import annotations

import psycopg2
import pytest

from factories import make_order
from wechat_nontax.requests.contract import RequestKind, request_action
from wechat_nontax.store.actions import HELD, BillActions
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.ui.view import ACTIONS

REASON = "pdf: PDF not found"
NOTE = "made due again by 值班员 (Airflow user) in the Bills page, action #{action}"


def _sql(orders_db: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:  # the test's own
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _red(orders_db: str, order_ids: list[str], reason: str = REASON) -> None:
    _sql(
        orders_db,
        "UPDATE nontax.bill_order SET status = 'invalid', reason = %s, updated_at = now() "
        "WHERE order_id = ANY(%s)",
        (reason, order_ids),
    )


@pytest.fixture
def actions(orders_db: str):
    conn = connect_dsn(orders_db)
    try:
        yield BillActions(conn)
    finally:
        conn.close()


def test_many_orders_are_made_due_as_one_action_and_each_refusal_says_why(
    store, orders_db, actions
):
    orders = [make_order(n) for n in range(1, 11)]
    store.upsert_orders(orders)
    ids = [o.order_id for o in orders]
    _red(orders_db, ids)
    inserted, held, refused, waiting = ids[6], ids[7], ids[8], ids[9]
    _sql(
        orders_db,
        "UPDATE nontax.bill_order SET status = 'inserted', reason = NULL, code = 'C1', "
        "openid = 'o1', inserted_at = now() WHERE order_id = %s",
        (inserted,),
    )
    _sql(
        orders_db,
        "UPDATE nontax.bill_order SET held_by = 'd|r|issue_bills|0|1', claimed_by = 'r', "
        "claim_expires_at = now() + interval '5 minutes' WHERE order_id = %s",
        (held,),
    )
    conn = connect_dsn(orders_db)
    try:
        assert request_action(conn, refused, RequestKind.REFUSE, "退费", "admin").accepted
    finally:
        conn.close()
    _sql(orders_db, "UPDATE nontax.bill_order SET status = 'unauthorized', reason = NULL "
         "WHERE order_id = %s", (waiting,))  # fmt: skip
    versions = dict(_sql(orders_db, "SELECT order_id, row_version FROM nontax.bill_order"))

    result = actions.make_due(
        [*ids, "NO_SUCH"], kind="reset", by="值班员", picked="picked on the Bills page",
        why_not=ACTIONS["reset"].why_not, note=NOTE,
    )  # fmt: skip

    assert result.done == ids[:6]
    assert set(result.refused) == {inserted, held, refused, waiting, "NO_SUCH"}
    assert "finished (inserted)" in result.refused[inserted]
    assert result.refused[held] == HELD
    assert "refusal" in result.refused[refused]
    assert "authorisation" in result.refused[waiting]
    assert result.refused["NO_SUCH"] == "no such order"
    rows = dict(_sql(orders_db, "SELECT order_id, status FROM nontax.bill_order"))
    assert all(rows[i] == "authorized" for i in ids[:6])
    assert (rows[inserted], rows[held], rows[refused], rows[waiting]) == (
        "inserted", "invalid", "invalid", "unauthorized",
    )  # fmt: skip
    after = dict(_sql(orders_db, "SELECT order_id, row_version FROM nontax.bill_order"))
    assert all(after[i] == versions[i] + 1 for i in ids[:6])
    assert all(after[i] == versions[i] for i in ids[6:])
    # One action, findable by its id, with every order's outcome and the person's name.
    record = actions.get(result.action_id)
    assert (record.kind, record.requested_by) == ("reset", "值班员")
    assert len(record.orders) == 11
    assert {o for o, outcome, _ in record.orders if outcome == "done"} == set(ids[:6])
    # Each order done has its own history row naming the person and the action.
    notes = _sql(
        orders_db,
        "SELECT order_id, errmsg FROM nontax.bill_attempt WHERE step = 'reset' ORDER BY order_id",
    )
    assert notes == [(i, NOTE.format(action=result.action_id)) for i in ids[:6]]


def test_issue_now_of_many_records_its_run_on_the_action_and_each_order(store, orders_db, actions):
    orders = [make_order(n) for n in range(1, 4)]
    store.upsert_orders(orders)
    ids = [o.order_id for o in orders]
    _red(orders_db, ids)
    result = actions.make_due(
        ids, kind="issue", by="admin", picked="x", why_not=ACTIONS["reset"].why_not, note=NOTE
    )
    actions.record_run(result.action_id, "manual__1", result.done, "issue now by admin")
    assert actions.get(result.action_id).run_id == "manual__1"
    assert _sql(
        orders_db,
        "SELECT count(*) FROM nontax.bill_attempt WHERE step = 'operator' "
        "AND outcome = 'issue_now' AND run_id = 'manual__1'",
    ) == [(3,)]


def test_all_that_need_a_person_for_a_reason_are_found_by_it_and_bounded(store, orders_db, actions):
    orders = [make_order(n) for n in range(1, 8)]
    store.upsert_orders(orders)
    ids = [o.order_id for o in orders]
    _red(orders_db, ids[:5])
    _red(orders_db, ids[5:], reason="title: is missing")
    assert actions.red_orders_of_reason(REASON, 1000) == ids[:5]
    assert actions.red_orders_of_reason(REASON, 3) == ids[:3]
    assert actions.red_orders_of_reason("title: is missing", 1000) == ids[5:]
    # Made due again, they need nobody: not found again.
    actions.make_due(
        ids[:5], kind="reset", by="a", picked="x", why_not=ACTIONS["reset"].why_not, note=NOTE
    )
    assert actions.red_orders_of_reason(REASON, 1000) == []
    plan = "\n".join(
        row[0]
        for row in _sql(
            orders_db,
            "EXPLAIN SELECT order_id FROM nontax.bill_order WHERE reason = 'x' "
            "AND status IN ('invalid', 'failed', 'mismatched') ORDER BY reason, order_id LIMIT 5",
        )
    )
    assert "bill_order_attention_reason_idx" in plan or "Seq Scan" in plan  # tiny table


def test_a_row_changed_after_it_was_read_is_refused_not_overwritten(store, orders_db, actions):
    """The write names the row version it read: a reload that lands between the read and the
    write (simulated by a why_not that changes the row) is not overwritten."""
    store.upsert_orders([make_order(1)])
    order_id = make_order(1).order_id
    _red(orders_db, [order_id])

    def meanwhile(row):
        # Another connection cannot change the locked row; this one's row version moved on
        # before the write (what a reload in the same instant would look like to the write).
        row["row_version"] -= 1
        return None

    result = actions.make_due(
        [order_id], kind="reset", by="a", picked="x", why_not=meanwhile, note=NOTE
    )
    assert result.done == [] and "changed while the action ran" in result.refused[order_id]
    assert _sql(orders_db, "SELECT status FROM nontax.bill_order")[0][0] == "invalid"
