"""The parts the issuing DAGs share: their arguments and the steps after their claim.

The DAG files say what runs when; this says how the batches, the announcement and the report
hang together, once for both issuing DAGs.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, BaseOperator

from wechat_nontax.issuing.issue_operator import IssueBillsOperator
from wechat_nontax.issuing.operators import (
    AnnounceBillsOperator,
    ClaimOrdersOperator,
    RunReportOperator,
)
from wechat_nontax.issuing.task_args import batch_label
from wechat_nontax.settings import (
    BILLS_ISSUED_ASSET,
    ISSUE_TASK_ID,
    ORDERS_CONN_ID,
    REPORT_TASK_ID,
    WECHAT_CONN_ID,
    WECHAT_POOL,
)


def issuing_dag_args(**params: Any) -> dict[str, Any]:
    """The DAG arguments the issuing DAGs share: the params `max_orders` and `workers`, then
    `params`; templates rendered as values; the mapped batches labelled by `batch_label`."""
    from airflow.sdk import Param

    return {
        "params": {
            "max_orders": Param(None, type=["null", "integer"], minimum=1, description="At most"),
            "workers": Param(
                16, type="integer", minimum=1, maximum=64, description="Calls per batch"
            ),
            **params,
        },
        "render_template_as_native_obj": True,
        "user_defined_filters": {"batch_label": batch_label},
        "tags": ["wechat", "fiscal-bills"],
    }


def issue_claimed_batches(
    claim: ClaimOrdersOperator,
    *,
    max_workers: int | str,
    dry_run: bool | str = False,
    earlier_runs: bool = True,
    wechat_conn_id: str = WECHAT_CONN_ID,
    orders_conn_id: str = ORDERS_CONN_ID,
) -> BaseOperator:
    """The issuing DAGs' steps after their claim, in the DAG being defined: `issue_bills` (one
    instance per batch), `announce_bills`, `report`. Returns `issue_bills`, for what else it
    waits for."""
    from datetime import timedelta

    # One task instance per batch, labelled in the UI by its first and last order.
    issue = IssueBillsOperator.partial(
        task_id=ISSUE_TASK_ID,
        wechat_conn_id=wechat_conn_id,
        orders_conn_id=orders_conn_id,
        max_workers=max_workers,
        dry_run=dry_run,
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
        orders_conn_id=orders_conn_id,
        outlets=[Asset(**BILLS_ISSUED_ASSET)],
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=5),
    )
    # The last task, so the run takes its state: red while any order of the run needs a person
    # or was left unfinished, or the claim failed.
    report = RunReportOperator(
        task_id=REPORT_TASK_ID,
        batches=claim.output,
        orders_conn_id=orders_conn_id,
        dry_run=dry_run,
        earlier_runs=earlier_runs,
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=10),
    )
    claim >> issue >> announce >> report
    issue >> report  # the report waits for every batch itself, whatever is cleared
    return issue
