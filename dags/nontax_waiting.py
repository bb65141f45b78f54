"""Issue the bills of waiting orders as soon as their payers have authorised them: every 15
minutes at NONTAX_WAITING_SCHEDULE (cron, Asia/Shanghai; default `*/15 * * * *`), and by hand.

An insert answered 72038 (the payer's authorisation not seen yet) leaves its order
`awaiting_auth`, to be looked at again 15 minutes later (`not_before`) and failed 24 h after the
first such answer. This DAG claims only the waiting orders whose next look is due (claim scope
`authorization_look_due`: when none is, the run reads no other row and sends nothing), asks
getauthdata for each and inserts those the payer has authorised, with the issuing DAG's own
operators: the same Connections, pool, token cache, holds and write-backs. The daily run of
`nontax_insertbill` stays the backstop: it claims the same orders when their look is due.

Its report judges the run's own orders only: an order of another run that needs a person keeps
the daily run red, not this one every 15 minutes.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from wechat_nontax.issuing.dag_parts import issue_claimed_batches, issuing_dag_args
from wechat_nontax.issuing.operators import ClaimOrdersOperator
from wechat_nontax.settings import ORDERS_CONN_ID, POOL_SLOTS, WAITING_DAG_ID, dag_settings

with DAG(
    dag_id=WAITING_DAG_ID,
    **dag_settings("NONTAX_WAITING_SCHEDULE", "*/15 * * * *"),
    **issuing_dag_args(),
    doc_md=__doc__,
):
    claim = ClaimOrdersOperator(
        task_id="claim_orders",
        orders_conn_id=ORDERS_CONN_ID,
        scope="authorization_look_due",
        batch_size=2500,
        min_batches=POOL_SLOTS,
        max_orders="{{ params.max_orders }}",
        execution_timeout=timedelta(minutes=10),
    )
    # No token step: a run with nothing due makes no call; a batch fetches the shared token.
    issue_claimed_batches(claim, max_workers="{{ params.workers }}", earlier_runs=False)
