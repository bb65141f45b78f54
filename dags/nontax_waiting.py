"""Issue, within minutes, the bills of orders whose payers have just authorised them: every
2 minutes at NONTAX_WAITING_SCHEDULE (cron, Asia/Shanghai; default `*/2 * * * *`), and by hand.

An order loaded before its payer authorised (`unauthorized`) becomes due the moment the payer's
authorisation event is recorded (`nontax.record_authorization_event`); an order WeChat answered
72038 (`awaiting_auth`) becomes due when its next getauthdata look is (every 15 minutes, or at
once when the payer's event arrives). Each run claims what is due at that moment with the
issuing DAG's own operators: the same claim and holds (two runs of the two DAGs never take one
order: the claim skips locked rows and live leases, each write names its holder), the same
Connections, pool and token cache. When nothing is due the claim reads the due index's empty
range only, and the run sends nothing (no token step: a batch fetches the shared token). The
daily run of `nontax_insertbill` stays the backstop (this DAG paused, WeChat away for a while).

Why a schedule and not an Asset-triggered DAG: in Airflow 3.3.2 asset events can stay queued
for a consumer with `max_active_runs=1` (apache/airflow#56050) and one run consumes every
queued event (#55956), so an event can only mean "sweep what is due" anyway; a schedule sweeps
the same way without a trigger to keep alive, and bounds the wait from an authorisation to its
bill by the interval plus a run's own time (`bench/auth_to_bill.py`).

Its report judges the run's own orders only: an order of another run that needs a person keeps
the daily run red, not this one every 2 minutes.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from wechat_nontax.dag_arguments import dag_arguments
from wechat_nontax.issuing.dag_parts import issue_claimed_batches, issuing_dag_args
from wechat_nontax.issuing.operators import ClaimOrdersOperator
from wechat_nontax.settings import (
    CLAIM_TASK_ID,
    ORDERS_CONN_ID,
    POOL_SLOTS,
    WAITING_DAG_ID,
    WAITING_SCHEDULE_DEFAULT,
    WAITING_SCHEDULE_ENV,
)

with DAG(
    dag_id=WAITING_DAG_ID,
    **dag_arguments(WAITING_SCHEDULE_ENV, WAITING_SCHEDULE_DEFAULT),
    **issuing_dag_args(),
    doc_md=__doc__,
):
    claim = ClaimOrdersOperator(
        task_id=CLAIM_TASK_ID,
        orders_conn_id=ORDERS_CONN_ID,
        batch_size=2500,
        min_batches=POOL_SLOTS,
        max_orders="{{ params.max_orders }}",
        execution_timeout=timedelta(minutes=10),
    )
    # No token step: a run with nothing due makes no call; a batch fetches the shared token.
    issue_claimed_batches(claim, max_workers="{{ params.workers }}", earlier_runs=False)
