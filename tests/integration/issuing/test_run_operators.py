"""The run's steps as operators, executed directly against real Postgres: the claim's batches,
and what announce and report do when the claim never finished."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from factories import make_order
from wechat_nontax.issuing.operators import (
    AnnounceBillsOperator,
    ClaimOrdersOperator,
    RunReportOperator,
)
from wechat_nontax.store.orders import OrderStore


def context(run_id: str, conf: dict | None = None) -> dict:
    pushed: dict = {}
    ti = SimpleNamespace(
        dag_id="nontax_insertbill",
        run_id=run_id,
        xcom_push=lambda key, value: pushed.update({key: value}),
        xcom_pull=lambda task_ids, key: pushed.get(key) if task_ids == "claim_orders" else None,
        pushed=pushed,
    )
    return {
        "run_id": run_id,
        "dag_run": SimpleNamespace(start_date=datetime.now(UTC), conf=conf or {}),
        "dag": SimpleNamespace(dag_id="nontax_insertbill"),
        "params": {"order_ids": [], "max_orders": None, "batch_size": 2500, "min_batches": 4,
                   "workers": 16, "dry_run": False},
        "ti": ti,
    }  # fmt: skip


def claimed_by(store: OrderStore, order_ids: list[str]) -> set:
    return {store.get_row(order_id)["claimed_by"] for order_id in order_ids}


def test_the_claim_spreads_the_run_over_the_pool_slots(store):
    store.upsert_orders([make_order(i) for i in range(400)])
    claim = ClaimOrdersOperator(task_id="claim_orders", batch_size=2500, min_batches=4)
    batches = claim.execute(context("run-1"))
    assert [len(b) for b in batches] == [100] * 4
    # Claimed under a key naming the DAG: another DAG's run may have the same run id.
    assert claimed_by(store, [o for b in batches for o in b]) == {"nontax_insertbill|run-1"}


def test_a_failed_claim_makes_a_red_report_and_releases_what_it_claimed(store):
    orders = [make_order(i) for i in range(3)]
    store.upsert_orders(orders)
    ids = [o.order_id for o in orders]
    # The claim committed, then its task failed before returning its batches (no XCom: None).
    store.claim_due("nontax_insertbill|run-1", lease_s=3600)
    assert claimed_by(store, ids) == {"nontax_insertbill|run-1"}

    announce = AnnounceBillsOperator(task_id="announce_bills", batches=None)
    with pytest.raises(AirflowSkipException, match="claim did not finish"):
        announce.execute(context("run-1"))

    report = RunReportOperator(task_id="report", batches=None)
    with pytest.raises(AirflowFailException, match="claim_orders did not finish"):
        report.execute(context("run-1"))
    assert claimed_by(store, ids) == {None}  # due for the next run (or the cleared claim)
