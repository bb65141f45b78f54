"""Both DAGs at one run id (their scheduled runs at 02:30 share `scheduled__<instant>`), and a
batch that loses its hold: real Airflow runs, the sandbox, the order database. Moments are found
by watching the order database, never by sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg2
import pytest

from nontax_dev.airflow_run import REQUESTS_DAG_ID, latest_run
from waiting import wait_until
from wechat_nontax.requests.contract import request_action

pytestmark = pytest.mark.e2e

AT = datetime(2026, 3, 2, 18, 30, tzinfo=UTC)  # 02:30 Beijing time
RUN_ID = f"manual__{AT.isoformat()}"


def _batch_unfinished(rig, ids) -> tuple[int, int]:
    """(unfinished orders of the batch, those of them no issue_bills try holds)."""
    return rig.sql(
        "SELECT count(*), count(*) FILTER (WHERE held_by IS NULL "
        "OR held_by NOT LIKE 'nontax_insertbill|%%|issue_bills|%%') "
        "FROM nontax.bill_order WHERE order_id = ANY(%s) AND status IN ('authorized', 'uploaded')",
        (ids,),
    )[0]


def test_the_requests_run_of_the_same_run_id_leaves_the_batches_holds_alone(make_rig, tmp_path):
    rig = make_rig(homes=2, timeout=30)
    orders = rig.load(80)
    ids = [o.order_id for o in orders]
    refused = rig.load(1, start=80)[0].order_id
    conn = psycopg2.connect(rig.dsn)
    try:
        assert request_action(conn, refused, "refuse", "refunded", "duty@unit").accepted
    finally:
        conn.close()
    # About 90 s of inserts: the requests run (tens of seconds, more on a loaded machine) ends
    # while they go on.
    rig.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=2200)

    unheld: list[int] = []
    watching = threading.Event()

    def watch() -> None:  # every unfinished order of the batch stays held by it throughout
        while watching.is_set():
            unheld.append(_batch_unfinished(rig, ids)[1])

    conf = {"order_ids": ids, "workers": 2}
    with rig.start(conf, tmp_path / "issuing.log", run_at=AT) as issuing:
        wait_until(
            lambda: rig.statuses_count("inserted") >= 3 or not issuing.alive(),
            timeout=240,
            what="the batch inserting",
        )
        assert issuing.alive(), issuing.output()[-3000:]
        watching.set()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            requests = rig.run({}, home=1, dag_id=REQUESTS_DAG_ID, run_at=AT)
        finally:
            watching.clear()
            watcher.join(10)
        assert issuing.alive(), "the batch ended before the requests run: make it slower"
        assert _batch_unfinished(rig, ids)[0] > 0
        wait_until(lambda: not issuing.alive(), timeout=600, what="the issuing run's end")
        output = issuing.output()

    issuing_run, issuing_state, tasks = latest_run(rig.envs[0], output=output)
    assert (issuing_run, requests.run_id) == (RUN_ID, RUN_ID)
    assert requests.run_state == "success", requests.output[-3000:]
    assert max(unheld) == 0, f"orders of the running batch lost their hold: {max(unheld)}"
    assert issuing_state == "success", output[-3000:]
    assert {t["state"] for t in tasks if t["task_id"] == "issue_bills"} == {"success"}
    # Every order sent once, the refused one never.
    answers = {oid: rig.sandbox.order_answers(oid).get("insertbill", {}) for oid in ids}
    assert all(a == {"0": 1} for a in answers.values()), answers
    assert rig.statuses_count("inserted") == len(ids)
    assert rig.store.get_row(refused)["status"] == "refused"
    assert rig.sql("SELECT count(*) FROM nontax.bill_order WHERE held_by IS NOT NULL") == [(0,)]
    assert rig.violations([*ids, refused]) == []


def test_a_batch_that_loses_its_hold_ends_failed_and_says_how_many_and_why(make_rig, tmp_path):
    # A short hold (renewed every 4 s): the batch finds out at its next renewal.
    rig = make_rig(timeout=2)
    rig.envs[0]["NONTAX_HOLD_S"] = "1"
    orders = rig.load(40)
    ids = [o.order_id for o in orders]
    rig.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=800)
    thief = "nontax_requests|manual__x|carry_out_requests|-1|1"
    with rig.start({"order_ids": ids, "workers": 2}, tmp_path / "issuing.log") as issuing:
        wait_until(
            lambda: rig.statuses_count("inserted") >= 2 or not issuing.alive(),
            timeout=240,
            what="the batch inserting",
        )
        # Another try takes the batch's orders that are not finished from under it.
        taken = rig.sql(
            "UPDATE nontax.bill_order SET held_by = %s, claimed_by = 'nontax_requests|manual__x', "
            "claim_expires_at = now() + interval '10 minutes' WHERE order_id = ANY(%s) "
            "AND status IN ('authorized', 'uploaded') RETURNING order_id",
            (thief, ids),
        )
        assert issuing.alive() and len(taken) > 5, issuing.output()[-3000:]
        wait_until(lambda: not issuing.alive(), timeout=300, what="the issuing run's end")
        output = issuing.output()

    _, _, tasks = latest_run(rig.envs[0], output=output)
    batch = [t for t in tasks if t["task_id"] == "issue_bills"]
    assert [(t["state"], t["try_number"]) for t in batch] == [("failed", 1)], output[-3000:]
    sent = {oid for oid in ids if rig.sandbox.order_answers(oid).get("insertbill")}
    not_sent = [oid for (oid,) in taken if oid not in sent]
    assert not_sent, "every order was sent: the hold was taken too late"
    # Orders in flight when the hold went may have been sent; none after it.
    assert len(sent) <= len(ids) - len(not_sent)
    lost = [line for line in output.splitlines() if "lost its hold on" in line]
    assert lost, output[-3000:]
    count = int(lost[0].split("lost its hold on ")[1].split()[0])
    assert count >= len(not_sent)
    assert thief in lost[0] and "holds it now" in lost[0]
