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


@pytest.fixture
def cur(orders_db):
    conn = psycopg2.connect(orders_db)
    conn.autocommit = True
    with conn.cursor() as cur:
        yield cur
    conn.close()


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
