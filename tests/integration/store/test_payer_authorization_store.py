"""The payer's authorisation as the order store records it: an event received once or three
times, before or after its order is loaded, for an order in any state."""

from __future__ import annotations

import psycopg2
import pytest

from factories import make_order
from wechat_nontax.store.orders import OrderStore


def _record(cur, order_id, *, authorized=True, openid="o-payer", create_time=1_800_000_000):
    cur.execute(
        "SELECT nontax.record_authorization_event(%s, %s, 'wx-unit', %s, 'gh_unit', 'web', %s)",
        (order_id, authorized, openid, create_time),
    )
    return cur.fetchone()[0]


def _order(cur, order_id):
    cur.execute(
        "SELECT status, reason, not_before FROM nontax.bill_order WHERE order_id = %s", (order_id,)
    )
    return cur.fetchone()


def _load_unauthorized(cur, store: OrderStore, order):
    store.upsert_orders([order])
    cur.execute(
        "UPDATE nontax.bill_order SET status = 'unauthorized' WHERE order_id = %s",
        (order.order_id,),
    )


def test_an_authorisation_makes_the_order_due_once_however_often_it_arrives(cur, store):
    order = make_order(1)
    _load_unauthorized(cur, store, order)
    assert _record(cur, order.order_id) == "authorized: due now"
    assert _record(cur, order.order_id) == "no change: the same event was received before"
    assert _order(cur, order.order_id)[0] == "authorized"
    cur.execute(
        "SELECT step, outcome FROM nontax.bill_attempt WHERE order_id = %s AND step = 'payer'",
        (order.order_id,),
    )
    assert cur.fetchall() == [("payer", "authorized")]


def test_a_declined_authorisation_ends_the_order_with_its_reason(cur, store):
    order = make_order(2)
    _load_unauthorized(cur, store, order)
    assert _record(cur, order.order_id, authorized=False) == "declined"
    status, reason, _ = _order(cur, order.order_id)
    assert (status, reason) == ("declined", "the payer declined the authorisation in WeChat")


def test_an_event_for_an_order_in_another_state_changes_nothing(cur, store):
    order = make_order(3)
    store.upsert_orders([order])
    cur.execute(
        "UPDATE nontax.bill_order SET status = 'inserted', code = 'c', openid = 'o', "
        "inserted_at = now() WHERE order_id = %s",
        (order.order_id,),
    )
    assert _record(cur, order.order_id, authorized=False) == "no change: the order is inserted"
    assert _order(cur, order.order_id)[0] == "inserted"


def test_an_event_before_its_order_is_kept_and_applied_by_the_load(cur):
    assert _record(cur, "late-order") == "kept: no such order yet, applied when it is loaded"
    order = make_order(4)
    cur.execute(
        "INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time, "
        "billing_no, billing_code, status) VALUES ('late-order', %s, %s, %s, %s, %s, %s, %s, "
        "'unauthorized')",
        (order.card_id, order.appid, order.fee, order.title, order.billing_time,
         order.billing_no, order.billing_code),
    )  # fmt: skip
    assert _order(cur, "late-order")[0] == "authorized"
    cur.execute("SELECT outcome FROM nontax.authorization_event WHERE order_id = 'late-order'")
    assert cur.fetchall() == [("authorized: due now",)]


def test_an_authorisation_for_an_order_waiting_on_72038_makes_it_due_now(cur, store):
    order = make_order(5)
    store.upsert_orders([order])
    cur.execute(
        "UPDATE nontax.bill_order SET status = 'awaiting_auth', "
        "not_before = now() + interval '15 minutes' WHERE order_id = %s",
        (order.order_id,),
    )
    assert _record(cur, order.order_id) == "authorized: asked again now"
    status, _, not_before = _order(cur, order.order_id)
    assert (status, not_before) == ("awaiting_auth", None)


def _insert_unauthorized(cur, order_id: str, n: int) -> None:
    order = make_order(n)
    cur.execute(
        "INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, billing_time, "
        "billing_no, billing_code, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'unauthorized')",
        (order_id, order.card_id, order.appid, order.fee, order.title, order.billing_time,
         order.billing_no, order.billing_code),
    )  # fmt: skip


def _in_thread(target):
    import threading

    result: list = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("first", ["load", "event"])
def test_an_event_and_its_orders_load_at_the_same_moment_apply_once_whichever_commits_first(
    orders_db, cur, first
):
    """The load's transaction and the event's overlap: neither sees the other's uncommitted row,
    so each must wait for the other rather than conclude there is nothing to apply."""
    order_id = f"race-{first}"
    held = psycopg2.connect(orders_db)  # the transaction that goes first and stays open
    other = psycopg2.connect(orders_db)
    other.autocommit = True
    try:
        with held.cursor() as hcur:
            if first == "load":
                _insert_unauthorized(hcur, order_id, 40)
            else:
                _record(hcur, order_id)

            def second():
                with other.cursor() as ocur:
                    if first == "load":
                        return _record(ocur, order_id)
                    _insert_unauthorized(ocur, order_id, 41)
                    return "loaded"

            thread, result = _in_thread(second)
            thread.join(0.5)
            held.commit()
            thread.join(10)
            assert not thread.is_alive() and result
    finally:
        held.close()
        other.close()
    assert _order(cur, order_id)[0] == "authorized"
    cur.execute("SELECT applied_at IS NOT NULL FROM nontax.authorization_event WHERE order_id = %s",
                (order_id,))  # fmt: skip
    assert cur.fetchall() == [(True,)]


def test_a_day_of_orders_loaded_unauthorized_in_one_transaction_takes_a_bounded_set_of_locks(
    orders_db, cur
):
    """The load's lock per order id (above) is one of a few buckets: a load of 20,000 orders in
    one transaction must not exhaust the server's lock table (64 x max_connections slots)."""
    order = make_order(50)
    conn = psycopg2.connect(orders_db)
    try:
        with conn, conn.cursor() as load:
            load.execute(
                "INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, "
                "billing_time, billing_no, billing_code, status) "
                "SELECT 'day-' || n, %s, %s, %s, %s, %s, 'NO' || n, 'C' || n, 'unauthorized' "
                "FROM generate_series(1, 20000) AS n",
                (order.card_id, order.appid, order.fee, order.title, order.billing_time),
            )
            load.execute(
                "SELECT count(*) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert load.fetchone()[0] <= 64
    finally:
        conn.close()
    cur.execute("SELECT count(*) FROM nontax.bill_order WHERE status = 'unauthorized'")
    assert cur.fetchone() == (20000,)
