"""Carry out the requests to refuse an order (rejectinsert) or void its bill (updatestatus
CANCEL) that people and the unit's systems record in `nontax.bill_request`: every few minutes
at NONTAX_REQUESTS_SCHEDULE (cron, Asia/Shanghai; default every 5 minutes), and by hand.

A DAG of its own rather than a task of `nontax_insertbill`: a refusal or a void is wanted within
minutes (the payer sees a pending or a valid-looking bill meanwhile), while issuing runs once a
day and may take an hour; and the person on duty sees the requests' runs, red or green, apart
from the issuing runs. Same Connections, token cache and pool as issuing; how each step works
lives in the `wechat_nontax` package.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from wechat_nontax.dag_arguments import dag_arguments
from wechat_nontax.requests.operators import CarryOutRequestsOperator, RequestsReportOperator
from wechat_nontax.settings import (
    ORDERS_CONN_ID,
    REPORT_TASK_ID,
    REQUESTS_DAG_ID,
    REQUESTS_SCHEDULE_DEFAULT,
    REQUESTS_SCHEDULE_ENV,
    REQUESTS_TASK_ID,
    WECHAT_CONN_ID,
    WECHAT_POOL,
)

with DAG(
    dag_id=REQUESTS_DAG_ID,
    **dag_arguments(REQUESTS_SCHEDULE_ENV, REQUESTS_SCHEDULE_DEFAULT),
    params={
        "max_requests": Param(None, type=["null", "integer"], minimum=1, description="At most"),
    },
    render_template_as_native_obj=True,
    tags=["wechat", "fiscal-bills"],
    doc_md=__doc__,
):
    carry_out = CarryOutRequestsOperator(
        task_id=REQUESTS_TASK_ID,
        wechat_conn_id=WECHAT_CONN_ID,
        orders_conn_id=ORDERS_CONN_ID,
        max_requests="{{ params.max_requests }}",
        pool=WECHAT_POOL,
        execution_timeout=timedelta(minutes=30),
    )
    # The last task, so the run takes its state: red while a request of the run was not carried
    # out (refused or failed), whatever became of the first task.
    report = RequestsReportOperator(
        task_id=REPORT_TASK_ID,
        orders_conn_id=ORDERS_CONN_ID,
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=5),
    )
    carry_out >> report
