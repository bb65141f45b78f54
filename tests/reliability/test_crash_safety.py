"""Crash safety: the worker killed with SIGKILL mid-batch, the order database's connection dropped.

A kill is `os.killpg(SIGKILL)` of `airflow dags test`, started in a process group of its own (the
task runs inside that process, as on a worker). The moments are found by watching the sandbox and
the order database, never by sleeping a guessed time. After a kill, the sandbox is left to answer
what it still holds before the test goes on, so that nothing of the dead run lands later.
"""

from __future__ import annotations

import threading

import pytest
from reliability_helpers import sandbox_idle

from waiting import wait_until
from wechat_nontax.issuing.issue_operator import IssueBillsOperator
from wechat_nontax.issuing.pending_uploads import UPLOAD_WRITE_AFTER_S

pytestmark = pytest.mark.e2e


def test_killed_between_the_bill_and_its_write_back_then_the_lease_ends(make_rig, tmp_path):
    # The client would wait 30 s; the sandbox records the victim's bill, then holds the answer.
    rig = make_rig(timeout=30)
    orders = rig.load(12)
    ids = [o.order_id for o in orders]
    victim = ids[5]
    rig.sandbox.add_fault(
        endpoint="insertbill", kind="timeout", timeout_s=8, count=1, order_ids=[victim]
    )
    with rig.start({"batch_size": 12, "workers": 4}, tmp_path / "killed.log") as dag:
        wait_until(
            lambda: rig.sandbox.orders().get(victim, {}).get("successes") == 1 or not dag.alive(),
            timeout=240,
            what="the victim's bill in the sandbox",
        )
        assert dag.alive(), dag.output()[-3000:]
        # Killed while the answer is still held (8 s), once the insert has been in flight long
        # enough for its media id to be written on its own (UPLOAD_WRITE_AFTER_S; a kill sooner
        # costs only a new upload: the row stays `authorized`, tests/integration/issuing/
        # test_issuing.py).
        wait_until(
            lambda: rig.store.get_row(victim)["status"] == "uploaded",
            timeout=8 - UPLOAD_WRITE_AFTER_S,
            what="the victim's media id written while its insert is in flight",
        )
        dag.kill()
    wait_until(lambda: sandbox_idle(rig.sandbox), timeout=30, what="the held answer")

    # WeChat has the bill; the order database does not know it yet, and the dead run's lease
    # keeps every other run off its unfinished orders until it ends.
    row = rig.store.get_row(victim)
    assert row["status"] == "uploaded" and row["code"] is None
    assert row["claimed_by"] is not None
    assert rig.store.claim_due("another-run", lease_s=60, order_ids=ids) == []
    assert [b["order_id"] for b in rig.sandbox.bills()].count(victim) == 1

    rig.end_leases()
    result = rig.run({"batch_size": 12})
    assert result.run_state == "success", result.output[-3000:]

    statuses = rig.statuses()
    assert statuses[victim] == "duplicate"
    assert "already in the user's card package" in rig.store.get_row(victim)["reason"]
    assert set(statuses.values()) <= {"inserted", "duplicate"}
    # A duplicate is an order whose bill WeChat recorded while the dead run could not write
    # it back: the victim, and any other call in flight at the moment of the kill.
    in_flight = {o for o, s in statuses.items() if s == "duplicate"}
    assert len(in_flight) <= 4  # at most one call per worker
    assert rig.violations(ids) == []
    assert all(s["successes"] == 1 for s in rig.sandbox.orders().values())


def test_killed_between_upload_and_insert_then_the_instance_is_cleared(make_rig, tmp_path):
    rig = make_rig(timeout=30)
    orders = rig.load(10)
    ids = [o.order_id for o in orders]
    # Every insert waits 4 s in the sandbox, then answers -1 without recording anything: each of
    # the 4 workers holds an uploaded order whose insert is in flight.
    rig.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=-1, latency_ms=4000)
    with rig.start({"batch_size": 10, "workers": 4}, tmp_path / "killed.log") as dag:
        wait_until(
            lambda: (
                (
                    rig.statuses_count("uploaded") >= 4
                    and rig.sandbox.calls().get("insertbill", 0) >= 1
                )
                or not dag.alive()
            ),
            timeout=240,
            what="PDFs uploaded and their inserts in flight",
        )
        assert dag.alive(), dag.output()[-3000:]
        dag.kill()
    wait_until(lambda: sandbox_idle(rig.sandbox), timeout=30, what="the delayed answers")

    assert rig.sandbox.bills() == []
    uploaded = {o: s for o, s in rig.statuses().items() if s == "uploaded"}
    assert len(uploaded) >= 4
    assert rig.sandbox.calls()["setpdf"] == len(uploaded)  # each upload recorded
    for order_id in uploaded:
        assert rig.store.get_row(order_id)["s_pdf_media_id"]

    # The person on duty clears the red batch instance of that run (same run, same claim).
    rig.sandbox.clear_faults()
    run_id = rig.latest_run_id()
    assert run_id
    rerun = rig.rerun_instance(run_id, 0)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    assert set(rig.statuses().values()) == {"inserted"}
    assert rig.sandbox.calls()["setpdf"] == 10  # each PDF uploaded once: the media ids held
    assert rig.violations(ids) == []


def test_order_db_connection_dropped_mid_batch_reconnects_and_records_every_bill(
    orders_db, wechat_conn, tmp_path, monkeypatch
):
    """The order database's connections of a running batch are cut (`pg_terminate_backend`):
    the write-backs reconnect, every bill is recorded with its code, none is sent twice and the
    task succeeds (before: it failed at once, and up to one code per worker was lost)."""
    from types import SimpleNamespace

    from reliability_helpers import Rig

    from factories import make_order, write_pdf

    monkeypatch.setenv("NONTAX_PDF_ROOT", str(tmp_path / "pdfs"))
    rig = Rig(orders_db, wechat_conn, [], tmp_path / "pdfs")
    try:
        orders = [make_order(i) for i in range(24)]
        for order in orders:
            write_pdf(rig.pdf_root, order)
        rig.store.upsert_orders(orders)
        ids = [o.order_id for o in orders]
        ti = SimpleNamespace(
            dag_id="nontax_insertbill", run_id="run-dropped", task_id="issue_bills",
            map_index=0, try_number=1, max_tries=2,
        )  # fmt: skip
        context = {"run_id": "run-dropped", "ti": ti}
        wechat_conn.add_fault(endpoint="insertbill", kind="latency", latency_ms=250)
        insert = IssueBillsOperator(task_id="issue_bills", order_ids=ids, max_workers=2)
        outcome: list = []

        def work() -> None:
            try:
                outcome.append(insert.execute(context))
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        wait_until(
            lambda: rig.statuses_count("inserted") >= 3,
            timeout=120,
            what="the first bills written back",
        )
        killed = rig.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'nontax-%%' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        assert killed, "no connection of the task to drop"
        worker.join(timeout=120)
        assert not worker.is_alive(), "the task hangs after losing its database connection"
        assert outcome and isinstance(outcome[0], dict), outcome
        assert outcome[0] == {"inserted": len(ids)}

        statuses = rig.statuses()
        bills = {b["order_id"]: b for b in wechat_conn.bills()}
        assert set(statuses.values()) == {"inserted"}
        assert sorted(bills) == sorted(ids)
        for order_id in ids:
            assert rig.store.get_row(order_id)["code"] == bills[order_id]["code"]
        # What the run's report task does at its end.
        rig.store.release("nontax_insertbill|run-dropped")
        assert rig.violations(ids) == []
    finally:
        rig.close()
