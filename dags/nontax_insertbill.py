"""Issue fiscal e-bills into WeChat card packages: claim due orders, refresh the token, issue
each batch (upload the bill's PDF, insert the bill), announce, report.

Daily at NONTAX_SCHEDULE (cron, Asia/Shanghai; default 02:30) and by hand with params. How each
step works lives in the `wechat_nontax` package; this file only says what runs and in what order.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from wechat_nontax.dag_arguments import dag_arguments
from wechat_nontax.issuing.dag_parts import issue_claimed_batches, issuing_dag_args
from wechat_nontax.issuing.operators import ClaimOrdersOperator, RefreshTokenOperator
from wechat_nontax.settings import (
    CLAIM_TASK_ID,
    INSERTBILL_DAG_ID,
    INSERTBILL_SCHEDULE_DEFAULT,
    INSERTBILL_SCHEDULE_ENV,
    ORDERS_CONN_ID,
    POOL_SLOTS,
    WECHAT_CONN_ID,
    WECHAT_POOL,
)

with DAG(
    dag_id=INSERTBILL_DAG_ID,
    **dag_arguments(INSERTBILL_SCHEDULE_ENV, INSERTBILL_SCHEDULE_DEFAULT),
    **issuing_dag_args(
        order_ids=Param([], type="array", description="Only these orders (empty: all due)"),
        # Measured best on 2 cores (make bench): a run spread over one batch per pool slot.
        batch_size=Param(2500, type="integer", minimum=1, maximum=2500, description="At most"),
        min_batches=Param(
            POOL_SLOTS, type="integer", minimum=1, maximum=64, description="Spread over (slots)"
        ),
        dry_run=Param(False, type="boolean", description="Validate and report, send nothing"),
    ),
    doc_md=__doc__,
):
    claim = ClaimOrdersOperator(
        task_id=CLAIM_TASK_ID,
        orders_conn_id=ORDERS_CONN_ID,
        batch_size="{{ params.batch_size }}",
        min_batches="{{ params.min_batches }}",
        max_orders="{{ params.max_orders }}",
        order_ids="{{ params.order_ids }}",
        execution_timeout=timedelta(minutes=10),
    )
    token = RefreshTokenOperator(
        task_id="refresh_token",
        wechat_conn_id=WECHAT_CONN_ID,
        dry_run="{{ params.dry_run }}",
        pool=WECHAT_POOL,
        execution_timeout=timedelta(minutes=5),
    )
    # Each batch, then announce and report (the last task: the run takes its state).
    issue = issue_claimed_batches(
        claim,
        max_workers="{{ params.workers }}",
        dry_run="{{ params.dry_run }}",
        wechat_conn_id=WECHAT_CONN_ID,
        orders_conn_id=ORDERS_CONN_ID,
    )
    token >> issue
