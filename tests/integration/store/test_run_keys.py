"""Claims and holds under keys that name the DAG (real Postgres): two DAGs' runs of one run id
never end each other's claims or holds, and claims of the older form (a bare run id) still run
out and are freed."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg2

from wechat_nontax.issuing.run_steps import claim_orders
from wechat_nontax.requests.store import RequestStore
from wechat_nontax.store.holders import claim_key, run_key, split_run_key, task_holder

RUN = "scheduled__2026-03-02T18:30:00+00:00"


def _ti(dag_id: str, task_id: str, map_index: int = -1, try_number: int = 1):
    return SimpleNamespace(
        dag_id=dag_id, run_id=RUN, task_id=task_id, map_index=map_index, try_number=try_number
    )


def test_a_holder_names_its_dag_run_task_map_index_and_try():
    holder = task_holder(_ti("nontax_insertbill", "issue_bills", 3, 2))
    assert holder == f"nontax_insertbill|{RUN}|issue_bills|3|2"
    assert claim_key(holder) == run_key("nontax_insertbill", RUN) == f"nontax_insertbill|{RUN}"
    assert split_run_key(claim_key(holder), "x") == ("nontax_insertbill", RUN)
    # The older four-part form: its claims were made under the bare run id.
    assert claim_key(f"{RUN}|issue_bills|3|2") == RUN
    assert split_run_key(RUN, "nontax_insertbill") == ("nontax_insertbill", RUN)


def test_the_requests_runs_release_leaves_the_batch_of_the_same_run_id_alone(env):
    orders = env.orders(3)
    ids = [o.order_id for o in orders]
    batch = task_holder(_ti("nontax_insertbill", "issue_bills", 0))
    env.store.claim_due(run_key("nontax_insertbill", RUN), lease_s=3600)
    assert set(env.store.hold_batch(batch, ids[:2], hold_s=600).held) == set(ids[:2])
    requests = RequestStore(psycopg2.connect(env.dsn))
    try:
        # What the requests run's tries and its report end: their own DAG's run's alone.
        own = task_holder(_ti("nontax_requests", "carry_out_requests"))
        assert requests.release(claim_key(own), own) == 0
        assert requests.release(run_key("nontax_requests", RUN)) == 0
    finally:
        requests.close()
    rows = {i: env.store.get_row(i) for i in ids}
    assert [rows[i]["held_by"] for i in ids] == [batch, batch, None]
    assert {r["claimed_by"] for r in rows.values()} == {f"nontax_insertbill|{RUN}"}
    # The issuing run's own report ends its claim, and the batch's hold only once it is over.
    assert env.store.release(run_key("nontax_insertbill", RUN)) == 1
    env.store.end_hold(batch, ids[:2], lease_s=3600)
    assert env.store.release(run_key("nontax_insertbill", RUN)) == 2
    assert {env.store.get_row(i)["claimed_by"] for i in ids} == {None}


def test_a_claim_of_the_older_form_is_freed_when_its_run_ended_and_runs_out_otherwise(env):
    orders = env.orders(2)
    ids = [o.order_id for o in orders]
    env.sql(
        "UPDATE nontax.bill_order SET claimed_by = %s, claim_expires_at = now() + "
        "interval '1 hour' WHERE order_id = %s",
        (RUN, ids[0]),
    )
    env.sql(
        "UPDATE nontax.bill_order SET claimed_by = 'manual__old', held_by = "
        "'manual__old|issue_bills|0|1', claim_expires_at = now() - interval '1 second' "
        "WHERE order_id = %s",
        (ids[1],),
    )
    asked = []

    def state(key):
        asked.append(split_run_key(key, "nontax_insertbill"))
        return "failed"

    claim = claim_orders(
        run_key("nontax_insertbill", "scheduled__next"), orders_conn_id="nontax_orders_db",
        batch_size=10, run_state=state, sleep=lambda s: None,
    )  # fmt: skip
    # The ended run's claim is freed (asked of the issuing DAG); the run-out hold is taken.
    assert asked == [("nontax_insertbill", RUN)]
    assert sorted(claim.order_ids) == sorted(ids)
