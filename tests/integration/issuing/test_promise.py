"""The promise's holes, each reproduced as a reviewer found it, against Postgres and the sandbox:
an order sent twice, a code lost, an order stuck. Each test failed before the fix it names."""

from __future__ import annotations

import errno
import threading
import time

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from factories import held, make_order
from waiting import wait_until
from wechat_nontax.issuing.issue_operator import (
    IssueBillsOperator,
    _first_try_since_a_clear,
    _retry_left,
)
from wechat_nontax.issuing.outcomes import OrderResult, Outcome
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat.errors import PdfUnavailableError

# Calls of at most half a second: the issuer then accepts holds of 7 s and more.
FAST = {"call_timeout_s": 0.5}


def inserts_of(sandbox, order_id: str) -> int:
    return [b["order_id"] for b in sandbox.bills()].count(order_id)


def test_a_batch_that_outlives_its_first_lease_keeps_its_orders(env):
    """Case 1: the hold is renewed while the batch works; another run claiming meanwhile gets
    nothing, and every order is sent once (before: the lease ran out and a second run sent
    the orders the first had not reached)."""
    orders = env.orders(6)
    ids = [o.order_id for o in orders]
    env.store.claim_due("run-1", lease_s=8, order_ids=ids)
    env.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=1500)
    issuer = env.issuer(hold_s=8, max_workers=1, **FAST)
    # Each order takes 1.5 s: the batch runs about 9 s, past the 8 s hold it started with.
    done = {}
    worker = threading.Thread(target=lambda: done.update(r=issuer.run(ids)))
    worker.start()
    other = OrderStore(connect_dsn(env.dsn))
    try:
        stolen = []
        while worker.is_alive():
            stolen += other.claim_due(f"run-2-{len(stolen)}-{time.monotonic()}", lease_s=60)
            time.sleep(0.5)
    finally:
        worker.join()
        other.close()
    assert stolen == []
    assert {r.outcome for r in done["r"]} == {Outcome.INSERTED}
    assert all(inserts_of(env.sandbox, i) == 1 for i in ids)


def test_a_write_back_never_overwrites_a_finished_order_or_another_holder(env):
    """Cases 1 and 17.3: a later answer of a try that lost its hold changes nothing."""
    order = env.orders(1)[0]
    first = held(env.store, order.order_id, run_id="run-1")
    env.store.record_inserted(order.order_id, "CODE-1", "OPENID-1", version=1, run_id="run-1")
    assert not env.store.record_end(
        order.order_id, "duplicate", "72056", hold=first, run_id="run-1", step="insert"
    )
    row = env.store.get_row(order.order_id)
    assert (row["status"], row["code"]) == ("inserted", "CODE-1")


def test_a_reload_leaves_a_held_order_alone_and_says_so(env):
    """Case 2: a reload while a run holds the order changes nothing and names the run (before:
    the row was reset to the new fee under the run, which then marked it inserted)."""
    order = env.orders(1)[0]
    hold = held(env.store, order.order_id, run_id="run-1")
    result = env.store.upsert_orders([make_order(0, fee=99999)])
    assert result.held == ((order.order_id, "run-1"),) and result.updated == 0
    assert env.store.get_row(order.order_id)["fee"] == order.fee
    # The run's result lands on the version it sent.
    assert env.store.record_uploaded(order.order_id, "m-1", hold=hold, run_id="run-1")


def test_an_insert_of_an_old_version_is_recorded_for_a_person_with_why(env):
    """Case 2: when the row changed after the version that was sent (its hold had run out),
    the code is kept, the order needs a person and the reason says the change never reached
    WeChat."""
    order = env.orders(1)[0]
    env.store.upsert_orders([make_order(0, fee=99999)])  # nobody holds it: version 2
    written = env.store.record_inserted(
        order.order_id, "CODE-1", "OPENID-1", version=1, run_id="run-1"
    )
    row = env.store.get_row(order.order_id)
    assert written == row["status"] == "mismatched"
    assert (row["code"], row["openid"], row["row_version"]) == ("CODE-1", "OPENID-1", 2)
    assert "row version 1" in row["reason"] and "never reached WeChat" in row["reason"]
    assert [r[0] for r in env.store.needs_attention()] == [order.order_id]


class _DropsTheStoreAfterInsert:
    """The hook, but the order database's connection is cut right after WeChat inserted."""

    def __init__(self, hook, dsn, store):
        self.hook, self.dsn, self.store = hook, dsn, store

    def upload_pdf(self, *args, **kwargs):
        return self.hook.upload_pdf(*args, **kwargs)

    def insert_bill(self, order, media_id):
        bill = self.hook.insert_bill(order, media_id)
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (self.store._conn.get_backend_pid(),))
        conn.close()
        return bill


def test_a_lost_connection_after_an_insert_reconnects_and_keeps_the_code(env):
    """Case 3: the write-back reconnects and records the code; nothing is sent again (before:
    the batch stopped, the code was lost and the retry ended `duplicate`)."""
    orders = env.orders(3)
    store = OrderStore(connect_dsn(env.dsn), reconnect=lambda: connect_dsn(env.dsn))
    try:
        api = _DropsTheStoreAfterInsert(env.hook, env.dsn, store)
        results = env.issue(orders, api=api, store=store, max_workers=1)
    finally:
        store.close()
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    bills = {b["order_id"]: b for b in env.sandbox.bills()}
    for order in orders:
        row = env.store.get_row(order.order_id)
        assert (row["status"], row["code"]) == ("inserted", bills[order.order_id]["code"])
        assert inserts_of(env.sandbox, order.order_id) == 1


def test_a_database_that_stays_away_keeps_the_code_and_sends_nothing_more(env, caplog):
    """Case 3: past the write-back's retries the code is logged and handed back as unrecorded,
    and no other order is sent."""
    orders = env.orders(3)

    def unreachable():
        raise psycopg2.OperationalError("connection refused")

    store = OrderStore(connect_dsn(env.dsn), reconnect=unreachable, write_retry_s=0.5)
    try:
        api = _DropsTheStoreAfterInsert(env.hook, env.dsn, store)
        results = env.issue(orders, api=api, store=store, max_workers=1)
    finally:
        store.close()
    first = results[orders[0].order_id]
    (bill,) = env.sandbox.bills()  # the others were not sent
    assert first.outcome is Outcome.UNRECORDED and first.bill == (bill["code"], bill["openid"])
    assert bill["code"] in caplog.text
    assert {results[o.order_id].outcome for o in orders[1:]} == {Outcome.RETRY_LATER}


@pytest.mark.parametrize(
    "error",
    [OSError(errno.EIO, "Input/output error"), PdfUnavailableError("Input/output error (EIO)")],
    ids=["oserror", "pdf-unavailable"],
)
def test_an_unreadable_pdf_ends_its_order_alone(env, error):
    """Case 4: an I/O error reading one PDF leaves that order due with a reason and a wait;
    the rest of the batch is issued (before: the whole batch stopped, every day)."""
    orders = env.orders(5)
    broken = orders[2]

    def reader(root, rel, limit):
        if rel == broken.pdf_path:
            raise error
        from wechat_nontax.issuing.pdfs import read_pdf

        return read_pdf(root, rel, max_bytes=limit)

    results = env.issue(orders, reader=reader)
    assert results[broken.order_id].outcome is Outcome.RETRY_LATER
    assert "Input/output error" in results[broken.order_id].reason
    assert {results[o.order_id].outcome for o in orders if o is not broken} == {Outcome.INSERTED}
    row = env.store.get_row(broken.order_id)
    assert row["status"] == "authorized" and row["not_before"] is not None
    assert row["claimed_by"] == "run-1"  # back to the run's claim until its report frees it


def _fail_and_wait(env):
    orders = env.orders(3)
    failed, waiting = orders[0].order_id, orders[1].order_id
    env.store.record_end(failed, "failed", "72031", hold=held(env.store, failed), run_id="r0",
                         step="insert")  # fmt: skip
    env.store.record_end(waiting, "awaiting_auth", "72038", hold=held(env.store, waiting),
                         run_id="r0", step="insert", not_before_s=900)  # fmt: skip
    return orders, failed, waiting


def test_an_automatic_retry_leaves_needs_person_and_waiting_orders_alone(env):
    """Case 6: Airflow's own retry sends neither the failed order nor the one waiting for the
    payer (before: both were sent again)."""
    orders, failed, waiting = _fail_and_wait(env)
    results = env.issue(orders, include_needs_person=False)
    assert results[failed].outcome is Outcome.NOT_DUE
    assert results[waiting].outcome is Outcome.NOT_DUE
    assert results[orders[2].order_id].outcome is Outcome.INSERTED
    assert env.sandbox.calls().get("insertbill", 0) == 1


def test_a_persons_clear_sends_the_failed_order_again_but_not_the_waiting_one(env):
    orders, failed, waiting = _fail_and_wait(env)
    results = env.issue(orders, include_needs_person=True)
    assert results[failed].outcome is Outcome.INSERTED
    assert results[waiting].outcome is Outcome.NOT_DUE


@pytest.mark.parametrize(
    ("try_number", "max_tries", "retries", "fresh"),
    [(1, 2, 2, True), (2, 2, 2, False), (3, 2, 2, False), (4, 5, 2, True), (2, 3, 2, True),
     (5, 5, 2, False)],
)  # fmt: skip
def test_a_clear_is_told_from_an_automatic_retry(try_number, max_tries, retries, fresh):
    """Airflow sets max_tries to the try number plus the retries when a person clears."""
    ti = type("TI", (), {"try_number": try_number, "max_tries": max_tries})()
    assert _first_try_since_a_clear(ti, retries) is fresh


def test_needs_a_person_and_quota_decide_the_task_before_retry_later():
    """Case 6: one order that may pass by waiting no longer turns a person's problem into an
    automatic retry."""
    op = IssueBillsOperator(task_id="issue_bills", order_ids=[])
    with pytest.raises(AirflowFailException, match="need a person"):
        op._judge([OrderResult("a", Outcome.RETRY_LATER, "5xx"),
                   OrderResult("b", Outcome.FAILED, "72031")], dry_run=False)  # fmt: skip
    with pytest.raises(AirflowFailException, match="quota"):
        op._judge([OrderResult("a", Outcome.RETRY_LATER, "5xx"),
                   OrderResult("b", Outcome.QUOTA, "daily quota")], dry_run=False)  # fmt: skip
    with pytest.raises(AirflowException, match="may be by waiting"):
        op._judge([OrderResult("a", Outcome.RETRY_LATER, "5xx")], dry_run=False)


def test_a_lost_hold_decides_the_task_first_naming_the_batch_and_who_holds_the_order():
    op = IssueBillsOperator(task_id="issue_bills", order_ids=[])
    reason = "not sent: lost its hold, nontax_issue|manual__x|issue_bills|-1|2 holds it now"
    with pytest.raises(AirflowFailException) as raised:
        op._judge([OrderResult("a", Outcome.FAILED, "72031"),
                   OrderResult("b", Outcome.HOLD_LOST, reason)],
                  dry_run=False, batch="b-1")  # fmt: skip
    assert str(raised.value) == (
        "batch b-1: this try lost its hold on 1 orders and did not send them (or could not "
        f"record their result): b: {reason}"
    )


@pytest.mark.parametrize(
    ("try_number", "max_tries", "retries", "left"),
    [(1, 2, 2, True), (2, 2, 2, True), (3, 2, 2, False), (5, 5, 2, True), (6, 5, 2, False),
     (1, 0, 0, False)],
)  # fmt: skip
def test_the_last_try_does_not_promise_a_retry(try_number, max_tries, retries, left):
    """Airflow retries a failed try while its number has not passed max_tries: the last one's
    error says the orders stay due for the next run instead of a retry that will not come."""
    ti = type("TI", (), {"try_number": try_number, "max_tries": max_tries})()
    assert _retry_left(ti, retries) is left
    op = IssueBillsOperator(task_id="issue_bills", order_ids=[])
    waiting = [OrderResult("a", Outcome.EARLIER_TRY, "an earlier try of this batch holds it")]
    with pytest.raises(AirflowException) as raised:
        op._judge(waiting, dry_run=False, retry_left=_retry_left(ti, retries))
    assert ("retried by Airflow" in str(raised.value)) is left
    assert ("the last try: they stay due for the next run" in str(raised.value)) is not left


def test_a_reset_starts_the_authorisation_wait_afresh(env):
    """Case 7: an order that waited 30 h, reset by a person, waits again on its next 72038
    (before: it failed at once, 'not authorised 30 h after it was loaded')."""
    order = env.orders(1)[0]
    env.sql(
        "UPDATE nontax.bill_order SET status = 'failed', reason = 'x', "
        "authorized_at = now() - interval '30 hours', "
        "auth_wait_since = now() - interval '30 hours' WHERE order_id = %s",
        (order.order_id,),
    )
    assert env.store.reset(order.order_id)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72038, count=1)
    results = env.issue([order])
    assert results[order.order_id].outcome is Outcome.AWAITING_AUTH
    assert env.store.get_row(order.order_id)["status"] == "awaiting_auth"


def test_a_second_media_expiry_fails_with_its_own_reason(env):
    """Also: 40007 again right after a fresh upload ends with the rule's exhausted reason, not
    'upload the PDF again, then retry once'."""
    order = env.orders(1)[0]
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=40007, count=2)
    results = env.issue([order])
    assert results[order.order_id].outcome is Outcome.FAILED
    assert "again right after a fresh upload" in env.store.get_row(order.order_id)["reason"]


def test_a_second_try_waits_for_the_first_and_sends_nothing_twice(env):
    """17.3: a batch marked failed and cleared while its first try still runs: the second try
    waits for the first's hold; every order is sent once and no `inserted` row is overwritten
    (before: 24 orders were sent by both tries and 16 rows overwritten to `duplicate`)."""
    orders = env.orders(5)
    ids = [o.order_id for o in orders]
    refused = ids[-1]  # the first try ends it `failed` while the second waits for it
    env.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=700)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72031, order_ids=[refused])
    first = env.issuer(holder="run-1|issue_bills|0|1", hold_s=8, max_workers=1, **FAST)
    second = env.issuer(holder="run-1|issue_bills|0|2", hold_s=8, max_workers=4,
                        sleep=time.sleep, include_needs_person=True, **FAST)  # fmt: skip
    out = {}
    one = threading.Thread(target=lambda: out.update(first=first.run(ids)))
    one.start()
    wait_until(
        lambda: {env.store.get_row(i)["held_by"] for i in ids} == {"run-1|issue_bills|0|1"},
        timeout=30, what="the first try holding its orders", interval=0.02,
    )  # fmt: skip
    out["second"] = second.run(ids)
    one.join()
    assert {r.outcome for r in out["first"]} == {Outcome.INSERTED, Outcome.FAILED}
    assert {r.outcome for r in out["second"]} == {Outcome.ALREADY_DONE, Outcome.NOT_DUE}
    sent = ids[:-1]
    assert all(inserts_of(env.sandbox, i) == 1 for i in sent)
    assert env.sandbox.orders()[refused]["attempts"] == 1  # not sent again by the second try
    assert env.sandbox.calls()["insertbill"] == 5
    assert {env.store.get_row(i)["status"] for i in sent} == {"inserted"}


def test_a_reset_never_changes_an_order_a_try_is_sending(env):
    """Review: a person's reset while a cleared try holds a `failed` order would let another
    run claim and send it beside that try."""
    order = env.orders(1)[0]
    env.store.record_end(order.order_id, "failed", "72031", hold=held(env.store, order.order_id),
                         run_id="r0", step="insert")  # fmt: skip
    hold = held(env.store, order.order_id, run_id="r1")  # a person's clear: the try holds it
    assert not env.store.reset(order.order_id)
    assert env.store.claim_due("r2", lease_s=60) == []
    assert env.store.record_uploaded(order.order_id, "m-1", hold=hold, run_id="r1")


def test_a_second_claim_in_the_run_keeps_the_orders_its_live_try_holds(env):
    """Review: claim_orders cleared while a batch of the same run still runs: its orders stay in
    the run's batches (the batch's next try waits for the hold), not dropped for an hour."""
    orders = env.orders(4)
    ids = [o.order_id for o in orders]
    env.store.claim_run("r1", lease_s=600, split=lambda c: [c[:2], c[2:]])
    held_now = env.store.hold_batch("r1|issue_bills|0|1", ids[:2], hold_s=600)
    assert list(held_now.held) == ids[:2]
    again = env.store.claim_run("r1", lease_s=600, split=lambda c: [c])
    assert again.reclaimed and again.batches == [ids[:2], ids[2:]]
    row = env.store.get_row(ids[0])
    assert (row["held_by"], row["claimed_by"]) == ("r1|issue_bills|0|1", "r1")


class _FailingStore(OrderStore):
    """The order database refuses the insert's write-back with an error that is not a lost
    connection (a failover onto a read-only standby, a constraint, a bug)."""

    def record_inserted(self, *args, **kwargs):
        raise psycopg2.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only tx")


def test_any_database_error_after_an_insert_keeps_the_code(env, caplog):
    """Review: only a lost connection was caught; any other error lost the code."""
    orders = env.orders(2)
    store = _FailingStore(connect_dsn(env.dsn))
    try:
        issuer = env.issuer(store=store, max_workers=1)
        results = {r.order_id: r for r in issuer.run([o.order_id for o in orders])}
    finally:
        store.close()
    (bill,) = env.sandbox.bills()
    first = results[bill["order_id"]]
    assert first.outcome is Outcome.UNRECORDED and first.bill == (bill["code"], bill["openid"])
    assert issuer.unrecorded == [first]
    assert bill["code"] in caplog.text


class _Variables:
    """Airflow's Variables as a task sees them, in memory."""

    def __init__(self):
        self.values: dict[str, str] = {}

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value, description=None):
        self.values[key] = value

    def delete(self, key):
        self.values.pop(key, None)

    def keys(self, prefix=None):
        return [k for k in self.values if k.startswith(prefix or "")]


def test_kept_bills_are_written_before_anything_and_the_key_goes(env, monkeypatch):
    """The journal: a bill kept by a try whose database was away is written (over a later
    `duplicate`) by whoever replays the run's keys, and each key is deleted once written."""
    import airflow.sdk

    from wechat_nontax.issuing import journal

    variables = _Variables()
    monkeypatch.setattr(airflow.sdk, "Variable", variables)
    order, other = env.orders(2)
    journal.keep(journal.key_for("r1", 0, 1), [
        {"order_id": order.order_id, "code": "C-KEPT", "openid": "O-KEPT", "version": 1,
         "run_id": "r1"},
    ])  # fmt: skip
    journal.keep(journal.key_for("r2", 0, 1), [
        {"order_id": other.order_id, "code": "C-2", "openid": "O-2", "version": 1,
         "run_id": "r2"},
    ])  # fmt: skip
    # Meanwhile a retry sent it again and WeChat answered 72056.
    hold = held(env.store, order.order_id)
    env.store.record_end(
        order.order_id, "duplicate", "72056", hold=hold, run_id="r1", step="insert"
    )
    assert journal.keys_of("r1", 0) == [journal.key_for("r1", 0, 1)]
    assert journal.replay(env.store, keys=journal.keys_of("r1")) == 1
    row = env.store.get_row(order.order_id)
    assert (row["status"], row["code"], row["openid"]) == ("inserted", "C-KEPT", "O-KEPT")
    assert env.store.history(order.order_id)[-1].step == "recover"
    assert list(variables.values) == [journal.key_for("r2", 0, 1)]  # another run's: untouched


def test_kept_bills_of_two_dags_at_one_run_id_are_kept_apart(env, monkeypatch):
    """Two DAGs' batch 0 of one run id (their scheduled runs at one instant) keep their bills
    under keys of their own: neither overwrites nor replays the other's."""
    import airflow.sdk

    from wechat_nontax.issuing import journal

    monkeypatch.setattr(airflow.sdk, "Variable", variables := _Variables())
    orders = env.orders(2)
    runs = [journal.run_name(dag_id, "scheduled__x") for dag_id in ("nontax_insertbill", "other")]
    for run, order in zip(runs, orders, strict=True):
        journal.keep(journal.key_for(run, 0, 1), [
            {"order_id": order.order_id, "code": f"C-{order.order_id}", "openid": "O",
             "version": 1, "run_id": "scheduled__x"},
        ])  # fmt: skip
    assert len(variables.values) == 2
    assert journal.replay(env.store, keys=journal.keys_of(runs[0], 0)) == 1
    assert env.store.get_row(orders[0].order_id)["code"] == f"C-{orders[0].order_id}"
    assert env.store.get_row(orders[1].order_id)["code"] is None
    assert list(variables.values) == [journal.key_for(runs[1], 0, 1)]
