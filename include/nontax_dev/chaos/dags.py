"""The DAG files as deployed, parsed once in the runner's process, with only their clocks
shortened: time, never logic (see nontax_dev.chaos)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from nontax_dev.airflow_run import REQUESTS_DAG_ID, ROOT
from wechat_nontax.settings import INSERTBILL_DAG_ID, ISSUE_TASK_ID, REQUESTS_TASK_ID

# The WeChat Connection's timeout; the batch operators' transient-error budget (300 s in the
# DAG); Airflow's retry delay (30 s doubling in the DAG).
CLIENT_TIMEOUT_S = 2.0
TIME_BUDGET_S = 6.0
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 2.0


def load_dags() -> tuple[Any, Any]:
    """The issuing DAG and the requests DAG, from their files, with the shortened clocks."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{INSERTBILL_DAG_ID}.py"))
    if bag.import_errors:
        raise RuntimeError(f"the DAG does not import: {bag.import_errors}")
    dag = bag.dags[INSERTBILL_DAG_ID]
    requests = DagBag(dag_folder=str(ROOT / "dags" / f"{REQUESTS_DAG_ID}.py"))
    if requests.import_errors:
        raise RuntimeError(f"the requests DAG does not import: {requests.import_errors}")
    requests_dag = requests.dags[REQUESTS_DAG_ID]
    for task in (*dag.tasks, *requests_dag.tasks):
        task.retry_delay = timedelta(seconds=RETRY_DELAY_S)
        task.max_retry_delay = timedelta(seconds=MAX_RETRY_DELAY_S)
    # A mapped task: its operator's arguments are the partial's (an attribute set on the mapped
    # task itself would never reach the batches).
    dag.get_task(ISSUE_TASK_ID).partial_kwargs["time_budget_s"] = TIME_BUDGET_S
    requests_dag.get_task(REQUESTS_TASK_ID).time_budget_s = TIME_BUDGET_S
    return dag, requests_dag
