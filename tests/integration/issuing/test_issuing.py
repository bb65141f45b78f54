"""Issuing batches: hook, store and policy together, against the sandbox and Postgres."""

from __future__ import annotations

import threading
import time

import pytest

from factories import MINIMAL_PDF, make_order, write_pdf
from waiting import wait_until
from wechat_nontax.issuing.outcomes import Outcome
from wechat_nontax.wechat.validation import Limits


def test_a_batch_is_issued_and_written_back(env):
    orders = env.orders(30)
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    bills = {b["order_id"]: b for b in env.sandbox.bills()}
    assert len(bills) == 30
    for order in orders:
        row = env.store.get_row(order.order_id)
        assert row["status"] == "inserted"
        assert (row["code"], row["openid"]) == (
            bills[order.order_id]["code"],
            bills[order.order_id]["openid"],
        )
        assert row["claimed_by"] is None
    assert env.token_fetches() == 1
    # A second pass does nothing: every order is finished.
    again = env.issue(orders, run_id="run-2")
    assert {r.outcome for r in again.values()} == {Outcome.ALREADY_DONE}
    assert env.sandbox.calls()["insertbill"] == 30


def test_token_refused_mid_batch_one_refresh_and_the_batch_completes(env):
    orders = env.orders(40)
    env.sandbox.add_fault(
        endpoint="insertbill", kind="token_expire", count=1, order_ids=[orders[20].order_id]
    )
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    assert len(env.sandbox.bills()) == 40
    assert env.token_fetches() == 2


def test_lost_answer_ends_as_already_inserted_never_a_second_bill(env):
    orders = env.orders(5)
    lost = orders[2].order_id
    env.sandbox.add_fault(endpoint="insertbill", kind="lost_answer", count=1, order_ids=[lost])
    results = env.issue(orders)
    assert results[lost].outcome is Outcome.ALREADY_INSERTED
    assert env.store.get_row(lost)["status"] == "duplicate"
    assert [b["order_id"] for b in env.sandbox.bills()].count(lost) == 1
    assert len(env.sandbox.bills()) == 5


def test_a_media_id_past_its_margin_is_uploaded_again(env):
    orders = env.orders(3)
    env.upload_only(orders)
    assert env.sandbox.calls()["setpdf"] == 3
    env.sql(
        "UPDATE nontax.bill_order SET pdf_uploaded_at = now() - interval '71 hours' "
        "WHERE order_id = %s",
        (orders[0].order_id,),
    )
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    assert env.sandbox.calls()["setpdf"] == 4  # only the old one again


def test_media_unknown_to_wechat_is_uploaded_again_once(env):
    orders = env.orders(2)
    env.upload_only(orders)
    env.sandbox.expire_media()
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    assert env.sandbox.calls()["setpdf"] == 4


def test_bad_orders_end_with_reasons_and_send_nothing(env):
    good = env.orders(3)
    no_pdf = make_order(100)
    not_pdf = make_order(101)
    too_big = make_order(102)
    escaping = make_order(103, pdf_path="../../etc/passwd")
    empty = make_order(104)
    env.store.upsert_orders([no_pdf, not_pdf, too_big, escaping, empty])
    write_pdf(env.pdf_root, not_pdf, b"<html>not a pdf</html>")
    write_pdf(env.pdf_root, too_big, MINIMAL_PDF + b"0" * 4096)
    write_pdf(env.pdf_root, empty, b"")
    bad = [no_pdf, not_pdf, too_big, escaping, empty]
    results = env.issue([*good, *bad], limits=Limits(max_pdf_bytes=2048))
    for order in good:
        assert results[order.order_id].outcome is Outcome.INSERTED
    for order in bad:
        assert results[order.order_id].outcome is Outcome.INVALID
        row = env.store.get_row(order.order_id)
        assert row["status"] == "invalid"
        assert row["reason"].startswith("pdf_path") or row["reason"].startswith("pdf")
    assert env.sandbox.calls()["setpdf"] == 3
    assert env.sandbox.calls()["insertbill"] == 3


@pytest.mark.parametrize(
    ("setup", "outcome", "status"),
    [
        ("unauthorized", Outcome.AWAITING_AUTH, "awaiting_auth"),
        ("rejected", Outcome.REJECTED, "rejected"),
        ("unknown_card", Outcome.FAILED, "failed"),
        ("busy", Outcome.FAILED, "failed"),
        ("reused_numbers", Outcome.FAILED, "failed"),
    ],
)
def test_refusals_end_the_order_with_its_reason(env, setup, outcome, status):
    [order] = env.orders(1)
    if setup == "unknown_card":
        env.store.upsert_orders([make_order(0, card_id="pUnknownCard000")])
    elif setup == "busy":
        env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=-1)
    elif setup == "reused_numbers":
        env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72042)
    else:
        env.sandbox.set_authorization(order.order_id, setup)
    results = env.issue([order])
    assert results[order.order_id].outcome is outcome
    row = env.store.get_row(order.order_id)
    assert row["status"] == status
    assert row["reason"]
    assert env.sandbox.bills() == []
    if setup == "busy":
        assert "-1" in row["reason"] and "billing_no" in row["reason"]
        assert env.sandbox.calls()["insertbill"] == 4  # the first call and three retries


def test_daily_quota_stops_the_batch_and_leaves_orders_due(env):
    orders = env.orders(20)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=45009)
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.QUOTA}
    assert env.sandbox.calls()["insertbill"] <= 8  # at most one call per worker
    statuses = env.store.count_by_status()
    assert set(statuses) <= {"authorized", "uploaded"}
    assert env.sql("SELECT count(*) FROM nontax.bill_order WHERE not_before > now()")[0][0] >= 1


def test_transient_errors_past_the_budget_leave_the_order_due(env):
    [order] = env.orders(1)
    env.sandbox.add_fault(endpoint="setpdf", kind="http_5xx")
    results = env.issue([order], time_budget_s=0)
    assert results[order.order_id].outcome is Outcome.RETRY_LATER
    assert env.store.get_row(order.order_id)["status"] == "authorized"
    assert env.store.history(order.order_id)[-1].outcome == "retry"


def test_transient_errors_inside_the_budget_recover(env):
    orders = env.orders(10)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72036, count=4)
    env.sandbox.add_fault(endpoint="setpdf", kind="http_5xx", count=3)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=45011, count=1)
    results = env.issue(orders, time_budget_s=120)  # 45011 waits into the next minute
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    assert len(env.sandbox.bills()) == 10


def test_dry_run_sends_nothing(env):
    orders = env.orders(5)
    results = env.issue(orders, dry_run=True)
    assert {r.outcome for r in results.values()} == {Outcome.VALIDATED}
    assert env.sandbox.calls().get("setpdf", 0) == 0
    assert env.token_fetches() == 0


def test_a_slow_insert_finds_its_media_id_already_written(env):
    """The media id waits for the insert's result, but not longer than a second: a crash while
    a slow insert is in flight still finds the order's PDF up."""
    [order] = env.orders(1)
    # The insert answers after 6 s: the media id (written after UPLOAD_WRITE_AFTER_S and one
    # check) is looked for while it is still in flight, with room for a loaded machine.
    env.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=6000)
    results = {}
    batch = threading.Thread(target=lambda: results.update(env.issue([order])))
    batch.start()
    try:
        deadline = time.monotonic() + 10
        while env.sandbox.calls().get("insertbill", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)

        def uploaded() -> dict | None:
            row = env.store.get_row(order.order_id)
            return row if row["status"] == "uploaded" else None

        row = wait_until(uploaded, timeout=4.5, what="the media id written", interval=0.05)
        assert row["s_pdf_media_id"] and row["code"] is None
        assert batch.is_alive()  # the insert has not answered yet
    finally:
        batch.join()
    assert results[order.order_id].outcome is Outcome.INSERTED
    row = env.store.get_row(order.order_id)
    assert row["status"] == "inserted" and row["attempts"] == 2
    steps = [(a.step, a.outcome) for a in env.store.history(order.order_id)]
    assert steps[1:] == [("upload", "uploaded"), ("insert", "inserted")]
