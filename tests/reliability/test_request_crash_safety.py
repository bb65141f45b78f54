"""Requests under crashes and races: the DAG `nontax_requests` killed with SIGKILL between its call
and the write-back, for each kind; a refusal and an insert of the same orders racing in two runs
at once. Moments are found by watching the sandbox and the order database, never by sleeping."""

from __future__ import annotations

import psycopg2
import pytest

from nontax_dev.airflow_run import REQUESTS_DAG_ID
from waiting import wait_until
from wechat_nontax.requests.contract import request_action

pytestmark = pytest.mark.e2e


def ask(rig, order_id, kind, reason="refunded before issue"):
    conn = psycopg2.connect(rig.dsn)
    try:
        return request_action(conn, order_id, kind, reason, "duty@unit")
    finally:
        conn.close()


def answered(rig, order_id, endpoint):
    """How many answers the sandbox gave to `endpoint` calls naming the order, by errcode."""
    return rig.sandbox.order_answers(order_id).get(endpoint, {})


def requests_of(rig):
    return rig.sql(
        "SELECT order_id, kind, status, errcode FROM nontax.bill_request ORDER BY request_id"
    )


@pytest.mark.parametrize("kind", ["refuse", "void"])
def test_killed_between_the_call_and_the_write_back_then_the_retry_finds_it_done(
    make_rig, tmp_path, kind
):
    rig = make_rig(timeout=30)
    orders = rig.load(2)
    victim = orders[0].order_id
    endpoint, done_errcode = (
        ("rejectinsert", 72035) if kind == "refuse" else ("updatestatus", 72060)
    )
    if kind == "void":
        first = rig.run({"order_ids": [victim]})
        assert first.run_state == "success", first.output[-3000:]
    assert ask(rig, victim, kind).accepted
    # WeChat carries out the call, then holds its answer: the task waits for it and is killed.
    rig.sandbox.add_fault(
        endpoint=endpoint, kind="timeout", timeout_s=8, count=1, order_ids=[victim]
    )
    carried_out = (
        (lambda: victim in rig.sandbox.rejections())
        if kind == "refuse"
        else (
            lambda: rig.sandbox.statuses()[victim]["reimburse_status"] == "INVOICE_REIMBURSE_CANCEL"
        )
    )
    log = tmp_path / f"killed-{kind}.log"
    with rig.start({}, log, dag_id=REQUESTS_DAG_ID) as dag:
        wait_until(
            lambda: carried_out() or not dag.alive(), timeout=240, what=f"the {kind} on WeChat"
        )
        assert dag.alive(), dag.output()[-3000:]
        dag.kill()
    wait_until(lambda: answered(rig, victim, endpoint), timeout=30, what="the held answer")

    # WeChat did it; the order database does not know: the request is pending, the order held
    # by the dead try until its hold runs out.
    assert requests_of(rig) == [(victim, kind, "pending", None)]
    row = rig.store.get_row(victim)
    assert row["status"] == ("authorized" if kind == "refuse" else "inserted")
    assert "|carry_out_requests|" in row["held_by"]

    rig.end_leases()  # the hold's minutes pass
    if kind == "refuse":
        # Meanwhile an issuing run: the pending refusal keeps it off the victim.
        issuing = rig.run({})
        assert issuing.run_state == "success", issuing.output[-3000:]
        assert [b["order_id"] for b in rig.sandbox.bills()] == [orders[1].order_id]
    retry = rig.run({}, dag_id=REQUESTS_DAG_ID)
    assert retry.run_state == "success", retry.output[-3000:]

    assert requests_of(rig) == [(victim, kind, "done", done_errcode)]
    assert rig.store.get_row(victim)["status"] == ("refused" if kind == "refuse" else "cancelled")
    # One success on WeChat's side; the retry's call was answered "done already".
    assert answered(rig, victim, endpoint) == {"0": 1, str(done_errcode): 1}
    if kind == "refuse":
        assert rig.sandbox.orders().get(victim, {}).get("successes", 0) == 0
    else:
        assert len(rig.sandbox.statuses()[victim]["history"]) == 1
    assert rig.sql("SELECT count(*) FROM nontax.bill_order WHERE held_by IS NOT NULL") == [(0,)]


def test_a_refusal_and_an_insert_racing_for_the_same_orders_end_in_exactly_one(make_rig, tmp_path):
    """The issuing run has claimed the orders and works through them one batch at a time when
    their refusals are asked for and the requests DAG runs beside it (two runs at once): an
    order a batch already holds is inserted (its refusal then ends refused: void it instead);
    the others are refused and never inserted. WeChat sees one success per order."""
    rig = make_rig(homes=2, timeout=30)
    orders = rig.load(6)
    ids = [o.order_id for o in orders]
    rig.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=1500)
    with rig.start({"batch_size": 1, "min_batches": 1}, tmp_path / "issuing.log") as issuing:
        wait_until(
            lambda: (
                rig.sql("SELECT count(*) FROM nontax.bill_order WHERE held_by LIKE '%%issue%%'")[0][
                    0
                ]
                or not issuing.alive()
            ),
            timeout=240,
            what="the first batch holding its order",
        )
        assert issuing.alive(), issuing.output()[-3000:]
        for order_id in ids:
            answer = ask(rig, order_id, "refuse")
            # An order its batch inserted already is refused at the door.
            assert answer.accepted or "void the bill instead" in answer.reason, answer
        beside = rig.run({}, home=1, dag_id=REQUESTS_DAG_ID)
        wait_until(lambda: not issuing.alive(), timeout=300, what="the issuing run's end")
    # What waited for the issuing run's claims is carried out by the next requests run.
    after = rig.run({}, dag_id=REQUESTS_DAG_ID)
    statuses = rig.statuses()
    bills = {b["order_id"] for b in rig.sandbox.bills()}
    rejections = set(rig.sandbox.rejections())
    requests = {order_id: status for order_id, _, status, _ in requests_of(rig)}
    for order_id in ids:
        if statuses[order_id] == "inserted":
            assert order_id in bills and order_id not in rejections, order_id
            assert requests.get(order_id, "refused") == "refused", order_id
        else:
            assert statuses[order_id] == "refused", (order_id, statuses[order_id])
            assert order_id in rejections and order_id not in bills, order_id
            assert requests[order_id] == "done", order_id
    assert "inserted" in statuses.values(), "the first batch's order was held before the refusal"
    assert "refused" in statuses.values(), "no order was left for the refusal to win"
    assert all(s.get("successes", 0) <= 1 for s in rig.sandbox.orders().values())
    for order_id in ids:
        assert answered(rig, order_id, "rejectinsert").get("0", 0) <= 1
    # A refusal that could not be carried out turns the requests run that found it red.
    runs = {beside.run_state, after.run_state}
    assert ("failed" in runs) == any(s == "refused" for s in requests.values()), runs
    assert after.run_state in {"success", "failed"}, after.output[-3000:]
    assert rig.violations(ids) == []
