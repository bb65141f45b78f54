"""The order store and the loader against a real Postgres."""

from __future__ import annotations

import threading

import psycopg2

from factories import held, make_order, order_line
from wechat_nontax.cli.load import load_lines
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore


def _expire_claims(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("UPDATE nontax.bill_order SET claim_expires_at = now() - interval '1 s'")
    conn.close()


def test_upsert_inserts_then_leaves_identical_orders_alone(store):
    orders = [make_order(i) for i in range(5)]
    assert store.upsert_orders(orders).inserted == 5
    again = store.upsert_orders(orders)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 5)
    assert store.count_by_status() == {"authorized": 5}
    assert [a.outcome for a in store.history(orders[0].order_id)] == ["new"]


def test_reload_never_changes_an_inserted_order(store):
    order = make_order(1)
    store.upsert_orders([order])
    store.record_inserted(order.order_id, "C1", "openid1", version=1, run_id="r1")
    result = store.upsert_orders([make_order(1, fee=999)])
    assert result.unchanged == 1
    row = store.get_row(order.order_id)
    assert (row["status"], row["fee"], row["code"]) == ("inserted", order.fee, "C1")


def test_reload_with_changed_data_restarts_an_unfinished_order(store):
    order = make_order(1)
    store.upsert_orders([order])
    store.record_uploaded(order.order_id, "123", hold=held(store, order.order_id), run_id="r1")
    store.record_end(order.order_id, "invalid", "title: bad", hold=held(store, order.order_id),
                     run_id="r1", step="validate")  # fmt: skip
    assert store.upsert_orders([make_order(1, title="新的标题")]).updated == 1
    row = store.get_row(order.order_id)
    assert (row["status"], row["s_pdf_media_id"], row["reason"]) == ("authorized", None, None)
    assert [a.outcome for a in store.history(order.order_id)][-1] == "changed"


def test_claim_takes_due_orders_once_and_respects_the_lease(store, orders_db):
    store.upsert_orders([make_order(i) for i in range(10)])
    first = store.claim_due("run-a", lease_s=600, limit=6)
    second = store.claim_due("run-b", lease_s=600)
    assert len(first) == 6 and len(second) == 4
    assert not set(first) & set(second)
    assert store.claim_due("run-c", lease_s=600) == []
    _expire_claims(orders_db)  # run-a and run-b crashed: their orders are due again
    assert len(store.claim_due("run-d", lease_s=600)) == 10


def test_concurrent_claims_share_no_order(orders_db, store):
    store.upsert_orders([make_order(i) for i in range(2000)])
    claimed: dict[str, list[str]] = {}

    def claim(run_id):
        own = OrderStore(connect_dsn(orders_db))
        claimed[run_id] = own.claim_due(run_id, lease_s=600, limit=1500)
        own.close()

    threads = [threading.Thread(target=claim, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [o for ids in claimed.values() for o in ids]
    assert len(everything) == len(set(everything)) == 2000


def test_claim_can_be_aimed_and_skips_finished_and_waiting_orders(store):
    store.upsert_orders([make_order(i) for i in range(4)])
    store.record_inserted("T00000000", "C", "O", version=1, run_id="r0")
    store.record_end("T00000001", "awaiting_auth", "not yet", hold=held(store, "T00000001"),
                     run_id="r0", step="insert",
                     not_before_s=3600)  # fmt: skip
    assert store.claim_due("r1", lease_s=60, order_ids=["T00000000", "T00000002"]) == ["T00000002"]
    assert store.claim_due("r2", lease_s=60) == ["T00000003"]


def test_hold_batch_takes_back_expired_orders_but_not_live_claims(store, orders_db):
    store.upsert_orders([make_order(i) for i in range(3)])
    batch = store.claim_due("run-a", lease_s=600)
    got = store.hold_batch("run-b|issue_bills|0|1", batch, hold_s=600)
    assert got.held == {} and {w.kind for w in got.not_held.values()} == {"claimed"}
    _expire_claims(orders_db)
    assert list(store.hold_batch("run-b|issue_bills|0|1", batch, hold_s=600).held) == batch


def test_each_result_updates_the_row_and_appends_one_history_row(store):
    order = make_order(1)
    store.upsert_orders([order])
    hold = held(store, order.order_id)
    store.record_uploaded(order.order_id, "media-1", hold=hold, run_id="run-1", duration_ms=12)
    store.record_inserted(
        order.order_id, "code-1", "openid-1", version=1, run_id="run-1", duration_ms=34
    )
    row = store.get_row(order.order_id)
    assert (row["status"], row["code"], row["s_pdf_media_id"]) == ("inserted", "code-1", "media-1")
    history = [(a.step, a.outcome, a.run_id, a.duration_ms) for a in store.history(order.order_id)]
    assert history[1:] == [("upload", "uploaded", "run-1", 12), ("insert", "inserted", "run-1", 34)]


def test_a_result_for_an_unknown_order_writes_nothing(store):
    assert not store.record_inserted("NOPE", "code", "openid", version=1, run_id="run-1")
    assert store.history("NOPE") == []


def test_reset_makes_an_order_due_again_and_is_recorded(store):
    store.upsert_orders([make_order(1)])
    store.record_end("T00000001", "failed", "72017 title mismatch", hold=held(store, "T00000001"),
                     run_id="r", step="insert",
                     errcode=72017, errmsg="title mismatch")  # fmt: skip
    assert store.needs_attention()[0][:3] == ("T00000001", "failed", "72017 title mismatch")
    assert store.reset("T00000001")
    assert store.get_row("T00000001")["status"] == "authorized"
    assert store.history("T00000001")[-1].step == "reset"
    store.record_inserted("T00000001", "C", "O", version=1, run_id="r")
    assert not store.reset("T00000001")  # a finished order is never reset


def test_loader_reports_bad_lines_and_loads_the_good_ones(store):
    good = [make_order(i) for i in range(3)]
    lines = [
        order_line(good[0]),
        order_line(make_order(10), fee=0),
        "{not json",
        order_line(good[1]),
        order_line(make_order(11), billing_no=good[0].billing_no,
                   billing_code=good[0].billing_code),
        order_line(make_order(12), colour="red"),
        "",
        order_line(good[2]),
    ]  # fmt: skip
    report = load_lines(store, lines)
    assert report.inserted == 3
    rejected = dict(report.rejected)
    assert set(rejected) == {2, 3, 5, 6}
    assert "fee" in rejected[2]
    assert "not JSON" in rejected[3]
    assert "already used" in rejected[5]
    assert "unknown fields" in rejected[6]
    assert store.count_by_status() == {"authorized": 3}


def test_the_media_id_goes_in_with_the_insert_under_the_uploads_hold(store):
    from wechat_nontax.store.holders import Hold
    from wechat_nontax.store.writes import Upload

    orders = [make_order(i) for i in range(2)]
    store.upsert_orders(orders)
    kept, lost = (o.order_id for o in orders)
    upload = Upload("media-1", held(store, kept), duration_ms=12)
    assert store.record_inserted(kept, "code-1", "o-1", version=1, run_id="r1", upload=upload)
    row = store.get_row(kept)
    assert (row["status"], row["code"], row["s_pdf_media_id"]) == ("inserted", "code-1", "media-1")
    assert row["pdf_uploaded_at"] is not None and row["attempts"] == 2
    history = [(a.step, a.outcome, a.duration_ms) for a in store.history(kept)]
    assert history[1:] == [("upload", "uploaded", 12), ("insert", "inserted", None)]
    # Another try holds the order now: the code is written all the same (it cannot be had
    # again), the stale try's media id is not, nor its upload row.
    held(store, lost)
    stale = Upload("media-2", Hold("run-old|issue_bills|-1|1", 1))
    assert store.record_inserted(lost, "code-2", "o-2", version=1, run_id="r1", upload=stale)
    row = store.get_row(lost)
    assert (row["status"], row["code"], row["s_pdf_media_id"]) == ("inserted", "code-2", None)
    assert row["attempts"] == 1
    assert [a.step for a in store.history(lost)] == ["load", "insert"]


def _prepared_on(store):
    with store._conn.cursor() as cur:
        cur.execute("SELECT name FROM pg_prepared_statements")
        return {name for (name,) in cur.fetchall()}


def test_write_backs_are_prepared_once_per_connection(store):
    orders = [make_order(i) for i in range(3)]
    store.upsert_orders(orders)
    for order in orders:
        store.record_uploaded(order.order_id, f"m{order.order_id}",
                              hold=held(store, order.order_id), run_id="r1")  # fmt: skip
    # Three orders, one kind of write: one statement prepared, the same one executed three times.
    assert len([n for n in _prepared_on(store) if n.startswith("nontax_write_")]) == 1
    for order in orders:
        row = store.get_row(order.order_id)
        assert (row["status"], row["s_pdf_media_id"]) == ("uploaded", f"m{order.order_id}")
        assert [a.outcome for a in store.history(order.order_id)] == ["new", "uploaded"]


def test_a_connection_that_forgets_prepared_statements_gets_them_in_full(store):
    """A pooler in transaction mode (PgBouncer) sends each statement to any server connection:
    one that never saw the PREPARE. The write still lands, once, and later ones are plain."""
    orders = [make_order(i) for i in range(2)]
    store.upsert_orders(orders)
    first, second = (o.order_id for o in orders)
    store.record_uploaded(first, "m1", hold=held(store, first), run_id="r1")
    with store._conn.cursor() as cur:
        cur.execute("DEALLOCATE ALL")  # what another server connection knows: nothing
    assert store.record_uploaded(second, "m2", hold=held(store, second), run_id="r1")
    assert store.record_inserted(second, "C2", "o2", version=1, run_id="r1")
    assert _prepared_on(store) == set()
    row = store.get_row(second)
    assert (row["status"], row["s_pdf_media_id"], row["code"]) == ("inserted", "m2", "C2")
    assert [a.outcome for a in store.history(second)] == ["new", "uploaded", "inserted"]


def test_a_write_back_postgres_cannot_prepare_is_sent_in_full(store):
    """A parameter whose type only its value tells cannot be prepared untyped: the write is
    still made, once, as a plain statement, and so are the later ones of its kind."""
    order = make_order(1)
    store.upsert_orders([order])
    sql = (
        "UPDATE nontax.bill_order SET reason = %(reason)s, last_write_id = %(write_id)s "
        "WHERE order_id = %(order_id)s AND %(anything)s IS NULL"
    )
    for reason in ("first", "second"):
        params = {"reason": reason, "order_id": order.order_id, "anything": None}
        assert store._write(order.order_id, sql, params)
        assert store.get_row(order.order_id)["reason"] == reason
    assert _prepared_on(store) == set()


class _LosesTheAnswer(OrderStore):
    """The first write commits, then the connection drops before its answer is read."""

    lost = False

    def _execute_prepared(self, cur, sql, params):
        super()._execute_prepared(cur, sql, params)
        if not self.lost:
            self.lost = True
            self._conn.close()
            raise psycopg2.OperationalError("server closed the connection unexpectedly")


def test_a_write_sent_again_after_a_lost_answer_counts_once(orders_db):
    """The write is sent again over a new connection; the first one had committed, so the
    second changes nothing and the store answers from the row's last write id."""
    store = _LosesTheAnswer(connect_dsn(orders_db), reconnect=lambda: connect_dsn(orders_db))
    order = make_order(1)
    store.upsert_orders([order])
    hold = held(store, order.order_id)
    assert store.record_uploaded(order.order_id, "m1", hold=hold, run_id="r1")
    assert store.lost
    row = store.get_row(order.order_id)
    assert (row["status"], row["s_pdf_media_id"], row["attempts"]) == ("uploaded", "m1", 1)
    assert [a.outcome for a in store.history(order.order_id)] == ["new", "uploaded"]
    store.close()
