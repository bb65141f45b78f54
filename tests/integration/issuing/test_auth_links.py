"""Orders loaded before their payer authorised, their authorisation links (`make_links`,
`nontax link`), and `nontax status` on them: real Postgres, the sandbox over HTTP."""

from __future__ import annotations

import psycopg2
import pytest

from factories import make_order, order_line
from nontax_dev.payers import own_receiver, payer_answers, recorded_outcome
from wechat_nontax.cli.load import load_lines
from wechat_nontax.cli.main import main
from wechat_nontax.issuing.auth_links import make_links
from wechat_nontax.wechat.hook import WeChatNonTaxHook
from wechat_sandbox.auth_links import order_of_link


@pytest.fixture
def hook(orders_db, wechat_conn):
    hook = WeChatNonTaxHook()
    yield hook
    hook.close()


def sql(dsn, statement, params=()):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def row(dsn, order_id):
    [found] = sql(
        dsn,
        "SELECT status, fee, row_version, auth_url, authorized_at FROM nontax.bill_order "
        "WHERE order_id = %s",
        (order_id,),
    )
    return found


def test_an_export_line_with_authorized_false_loads_the_order_waiting_for_its_payer(
    store, orders_db
):
    waiting, ready, absent = make_order(1), make_order(2), make_order(3)
    report = load_lines(store, [order_line(waiting, authorized=False),
                                order_line(ready, authorized=True), order_line(absent),
                                order_line(make_order(4), authorized="no")])  # fmt: skip
    assert (report.inserted, [n for n, _ in report.rejected]) == (3, [4])
    assert "authorized: must be true or false" in report.rejected[0][1]
    assert row(orders_db, waiting.order_id)[0] == "unauthorized"
    assert row(orders_db, ready.order_id)[0] == "authorized"
    assert row(orders_db, absent.order_id)[0] == "authorized"
    [(note,)] = sql(orders_db, "SELECT errmsg FROM nontax.bill_attempt WHERE order_id = %s",
                    (waiting.order_id,))  # fmt: skip
    assert "before its payer authorised" in note
    assert store.claim_due("run-1", lease_s=60) == [ready.order_id, absent.order_id]


def test_reloads_of_an_order_waiting_for_its_payer(store, orders_db, hook, wechat_conn):
    order = make_order(1)
    load_lines(store, [order_line(order, authorized=False)])
    [made] = make_links(store, hook, [order.order_id])
    # The same line again: unchanged, its link kept.
    report = load_lines(store, [order_line(order, authorized=False)])
    assert (report.unchanged, row(orders_db, order.order_id)[3]) == (1, made.auth_url)
    # Another title: a new row version, still waiting, the link kept (same money).
    load_lines(store, [order_line(order, authorized=False, title="另一个标题")])
    assert row(orders_db, order.order_id)[:4] == ("unauthorized", order.fee, 2, made.auth_url)
    # Another fee: the link named the old money, so it goes.
    load_lines(store, [order_line(order, authorized=False, fee=order.fee + 1)])
    assert row(orders_db, order.order_id)[:4] == ("unauthorized", order.fee + 1, 3, None)
    # The unit learned of the authorisation itself: due, though nothing else changed.
    report = load_lines(store, [order_line(order, authorized=True, fee=order.fee + 1)])
    assert (report.updated, row(orders_db, order.order_id)[0]) == (1, "authorized")
    # A reload never takes an authorisation back.
    load_lines(store, [order_line(order, authorized=False, fee=order.fee + 2)])
    assert row(orders_db, order.order_id)[0] == "authorized"


def test_a_declined_order_is_never_changed_by_a_reload(
    store, orders_db, hook, wechat_conn, tmp_path
):
    order = make_order(1)
    load_lines(store, [order_line(order, authorized=False)])
    [made] = make_links(store, hook, [order.order_id])
    with own_receiver(orders_db, tmp_path) as receiver:  # WeChat pushes the payer's refusal
        answer = payer_answers(made.auth_url, receiver=receiver, authorized=False)
    assert answer.delivered, answer.push
    assert recorded_outcome(orders_db, order.order_id) == "declined"
    report = load_lines(store, [order_line(order, authorized=True, fee=order.fee + 5)])
    assert report.unchanged == 1 and row(orders_db, order.order_id)[:2] == ("declined", order.fee)


def test_links_are_made_recorded_and_reused_while_valid(store, orders_db, hook, wechat_conn):
    orders = [make_order(n) for n in range(3)]
    load_lines(store, [order_line(o, authorized=False) for o in orders])
    first = make_links(store, hook, [o.order_id for o in orders])
    assert [r.outcome for r in first] == ["made"] * 3
    assert [order_of_link(r.auth_url) for r in first] == [o.order_id for o in orders]
    assert [link["money"] for link in wechat_conn.links()] == [o.fee for o in orders]
    for r in first:
        assert row(orders_db, r.order_id)[3] == r.auth_url
    history = sql(orders_db, "SELECT order_id, outcome FROM nontax.bill_attempt "
                  "WHERE step = 'auth_link' ORDER BY order_id")  # fmt: skip
    assert history == [(o.order_id, "made") for o in orders]
    again = make_links(store, hook, [o.order_id for o in orders])
    assert [(r.outcome, r.auth_url) for r in again] == [("reused", r.auth_url) for r in first]
    assert wechat_conn.calls()["getbillauthurl"] == 3
    # An expired link (or one about to) is made again.
    sql(orders_db, "UPDATE nontax.bill_order SET auth_url_expires_at = now() + interval '1 min' "
        "WHERE order_id = %s", (orders[0].order_id,))  # fmt: skip
    [renewed] = make_links(store, hook, [orders[0].order_id])
    assert renewed.outcome == "made" and renewed.auth_url != first[0].auth_url
    assert wechat_conn.calls()["getbillauthurl"] == 4


def test_orders_not_waiting_for_their_payer_get_no_link(store, orders_db, hook, wechat_conn):
    load_lines(store, [order_line(make_order(1))])
    results = make_links(store, hook, [make_order(1).order_id, "NO-SUCH-ORDER"])
    assert [(r.outcome, r.auth_url) for r in results] == [("skipped", None)] * 2
    assert "authorized" in results[0].note and "unknown order" in results[1].note
    assert wechat_conn.calls()["getbillauthurl"] == 0


def test_a_link_made_while_its_order_changed_is_not_kept(store, orders_db):
    order = make_order(1)
    load_lines(store, [order_line(order, authorized=False)])
    load_lines(store, [order_line(order, authorized=False, title="改过的标题")])  # version 2
    assert not store.record_link(order.order_id, row_version=1, auth_url="https://x.invalid/a",
                                 expires_in_s=7200)  # fmt: skip
    assert store.record_link(order.order_id, row_version=2, auth_url="https://x.invalid/a",
                             expires_in_s=7200)  # fmt: skip
    assert not store.record_link(
        order.order_id, row_version=2, auth_url="https://x.invalid/a", expires_in_s=7200
    )  # the same write again: no second row
    assert sql(orders_db, "SELECT count(*) FROM nontax.bill_attempt WHERE step = 'auth_link'") == [
        (1,)
    ]


def test_a_refused_link_is_reported_and_the_other_orders_still_get_theirs(
    store, orders_db, hook, wechat_conn
):
    orders = [make_order(n) for n in range(3)]
    load_lines(store, [order_line(o, authorized=False) for o in orders])
    wechat_conn.add_fault(endpoint="getbillauthurl", kind="errcode", errcode=72015,
                          order_ids=[orders[1].order_id])  # fmt: skip
    results = make_links(store, hook, [o.order_id for o in orders])
    assert [r.outcome for r in results] == ["made", "failed", "made"]
    assert "72015" in results[1].note and row(orders_db, orders[1].order_id)[3] is None


def test_nontax_link_and_status_from_the_command_line(store, orders_db, wechat_conn, capsys):
    orders = [make_order(n) for n in range(3)]
    load_lines(store, [order_line(o, authorized=False) for o in orders])
    assert main(["status"]) == 0
    assert "3 orders wait for their payer" in capsys.readouterr().out
    assert main(["link", orders[0].order_id]) == 0
    out = capsys.readouterr().out
    assert orders[0].order_id in out and "made" in out and "1 of 1" in out
    assert main(["link", "--unauthorized", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 orders have a valid link" in out  # the first one's link is still valid
    assert main(["link", "--unauthorized", orders[0].order_id]) == 2
    assert main(["link", make_order(9).order_id]) == 1
    assert "unknown order" in capsys.readouterr().err
    assert main(["status"]) == 0
    assert "0 without a valid link" in capsys.readouterr().out


def test_a_reset_never_makes_an_order_waiting_for_its_payer_due(store, orders_db):
    order = make_order(1)
    load_lines(store, [order_line(order, authorized=False)])
    assert not store.reset(order.order_id)
    assert row(orders_db, order.order_id)[:3] == ("unauthorized", order.fee, 1)
    assert store.claim_due("run-1", lease_s=60) == []
