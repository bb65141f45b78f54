"""Issue fiscal e-bills into WeChat card packages: claim due orders, refresh the token, issue
each batch (upload the bill's PDF, insert the bill), announce, report.

Daily at NONTAX_SCHEDULE (cron, Asia/Shanghai; default 02:30) and by hand with params. How each
step works lives in the `wechat_nontax` package; this file only says what runs and in what order.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, Asset, Param

from wechat_nontax.dag_settings import dag_settings
from wechat_nontax.operators import (
    DEFAULT_ORDERS_CONN_ID,
    DEFAULT_WECHAT_CONN_ID,
    WECHAT_POOL,
    AnnounceBillsOperator,
    ClaimOrdersOperator,
    IssueBillsOperator,
    RefreshTokenOperator,
    RunReportOperator,
    batch_label,
)

WECHAT_CONN_ID = DEFAULT_WECHAT_CONN_ID
ORDERS_CONN_ID = DEFAULT_ORDERS_CONN_ID
# The pool's slots, as the deployment sets them: a run is spread over at least this many batches.
POOL_SLOTS = int(os.environ.get("NONTAX_POOL_SLOTS", "4"))
BILLS_ISSUED = Asset(name="nontax_bills_issued", uri="nontax://bills/issued")

with DAG(
    dag_id="nontax_insertbill",
    **dag_settings("NONTAX_SCHEDULE", "30 2 * * *"),
    params={
        "order_ids": Param([], type="array", description="Only these orders (empty: all due)"),
        "max_orders": Param(None, type=["null", "integer"], minimum=1, description="At most"),
        # Measured best on 2 cores (make bench): a run spread over one batch per pool slot.
        "batch_size": Param(2500, type="integer", minimum=1, maximum=2500, description="At most"),
        "min_batches": Param(
            POOL_SLOTS, type="integer", minimum=1, maximum=64, description="Spread over (slots)"
        ),
        "workers": Param(16, type="integer", minimum=1, maximum=64, description="Calls per batch"),
        "dry_run": Param(False, type="boolean", description="Validate and report, send nothing"),
    },
    render_template_as_native_obj=True,
    user_defined_filters={"batch_label": batch_label},
    tags=["wechat", "fiscal-bills"],
    doc_md=__doc__,
):
    claim = ClaimOrdersOperator(
        task_id="claim_orders",
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
    # One task instance per batch, labelled in the UI by its first and last order.
    issue = IssueBillsOperator.partial(
        task_id="issue_bills",
        wechat_conn_id=WECHAT_CONN_ID,
        orders_conn_id=ORDERS_CONN_ID,
        max_workers="{{ params.workers }}",
        dry_run="{{ params.dry_run }}",
        pool=WECHAT_POOL,
        map_index_template="{{ task.order_ids | batch_label }}",
        # A batch at its bounds (2,500 orders, one worker, slow answers) takes about an hour;
        # past this Airflow stops it and it is retried on its unfinished orders.
        execution_timeout=timedelta(hours=3),
    ).expand(order_ids=claim.output)
    # After every batch, failed ones too: bills issued beside orders that failed still count.
    announce = AnnounceBillsOperator(
        task_id="announce_bills",
        batches=claim.output,
        orders_conn_id=ORDERS_CONN_ID,
        outlets=[BILLS_ISSUED],
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=5),
    )
    # The last task, so the run takes its state: red while any order of the run needs a person
    # or was left unfinished, or the claim failed.
    report = RunReportOperator(
        task_id="report",
        batches=claim.output,
        orders_conn_id=ORDERS_CONN_ID,
        dry_run="{{ params.dry_run }}",
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=10),
    )
    [claim, token] >> issue >> announce >> report
    issue >> report  # the report waits for every batch itself, whatever is cleared
