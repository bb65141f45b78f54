"""Issue fiscal e-bills into WeChat card packages: claim due orders, refresh the token, upload
each bill's PDF, insert the bill, report.

Daily at NONTAX_SCHEDULE (cron, Asia/Shanghai; default 02:30) and by hand with params. How each
step works lives in the `wechat_nontax` package; this file only says what runs and in what order.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import (
    Asset,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
    task_group,
)

from wechat_nontax.notify import notify_failure
from wechat_nontax.operators import InsertBillOperator, UploadBillPdfOperator, batch_label

WECHAT_CONN_ID = "wechat_nontax_default"
ORDERS_CONN_ID = "nontax_orders_db"
WECHAT_POOL = os.environ.get("NONTAX_WECHAT_POOL", "wechat_nontax")
BILLS_ISSUED = Asset(name="nontax_bills_issued", uri="nontax://bills/issued")


@dag(
    dag_id="nontax_insertbill",
    schedule=CronTriggerTimetable(
        os.environ.get("NONTAX_SCHEDULE", "30 2 * * *"), timezone="Asia/Shanghai"
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="Asia/Shanghai"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": notify_failure,
    },
    params={
        "order_ids": Param([], type="array", description="Only these orders (empty: all due)"),
        "max_orders": Param(None, type=["null", "integer"], minimum=1, description="At most"),
        # 1,000 orders a batch: measured best with 16 workers and 4 pool slots (make bench).
        "batch_size": Param(1000, type="integer", minimum=1, maximum=5000),
        "workers": Param(16, type="integer", minimum=1, maximum=64, description="Calls per batch"),
        "dry_run": Param(False, type="boolean", description="Validate and report, send nothing"),
    },
    render_template_as_native_obj=True,
    user_defined_filters={"batch_label": batch_label},
    tags=["wechat", "fiscal-bills"],
    doc_md=__doc__,
)
def nontax_insertbill():
    @task
    def claim_orders() -> list[list[str]]:
        from wechat_nontax.run_steps import claim_orders

        context = get_current_context()
        params = context["params"]
        return claim_orders(
            context["run_id"],
            orders_conn_id=ORDERS_CONN_ID,
            batch_size=params["batch_size"],
            max_orders=params["max_orders"],
            order_ids=params["order_ids"],
        )

    @task(pool=WECHAT_POOL)
    def refresh_token() -> str:
        from wechat_nontax.run_steps import warm_token

        if get_current_context()["params"]["dry_run"]:
            return "dry run: no token needed"
        return warm_token(wechat_conn_id=WECHAT_CONN_ID)

    @task_group
    def issue_batch(order_ids: list[str]):
        common = {
            "order_ids": order_ids,
            "wechat_conn_id": WECHAT_CONN_ID,
            "orders_conn_id": ORDERS_CONN_ID,
            "max_workers": "{{ params.workers }}",
            "dry_run": "{{ params.dry_run }}",
            "pool": WECHAT_POOL,
            "map_index_template": "{{ task.order_ids | batch_label }}",
        }
        upload = UploadBillPdfOperator(task_id="upload_pdfs", **common)
        # Valid orders of a batch go on to insert even when others in it failed validation.
        insert = InsertBillOperator(task_id="insert_bills", trigger_rule="all_done", **common)
        upload >> insert

    @task(trigger_rule="all_done")
    def report(batches: list[list[str]]) -> dict:
        from wechat_nontax.run_steps import build_report, finish_report

        context = get_current_context()
        summary = build_report(
            context["run_id"],
            batches,
            orders_conn_id=ORDERS_CONN_ID,
            started_at=context["dag_run"].start_date,
            dry_run=context["params"]["dry_run"],
        )
        return finish_report(summary, context["ti"])

    # After every batch, failed ones too: bills issued beside orders that failed still count.
    @task(outlets=[BILLS_ISSUED], trigger_rule="all_done")
    def announce_bills(batches: list[list[str]]) -> int:
        from airflow.sdk.exceptions import AirflowSkipException

        from wechat_nontax.run_steps import count_inserted

        inserted = count_inserted(batches, orders_conn_id=ORDERS_CONN_ID)
        if not inserted:
            raise AirflowSkipException("no bill issued in this run")
        return inserted

    batches = claim_orders()
    issued = issue_batch.expand(order_ids=batches)
    # The report is the last task: it is red while any order of the run needs a person.
    summary = report(batches)
    refresh_token() >> issued >> announce_bills(batches) >> summary
    issued >> summary  # the report waits for every batch itself, whatever is cleared


nontax_insertbill()
