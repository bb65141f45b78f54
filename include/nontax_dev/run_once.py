"""`make run-once`: run the DAG once with `dag.test()` (what `airflow dags test` runs).

The Connections come from `AIRFLOW_CONN_NONTAX_ORDERS_DB` and `AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT`
when set; without the latter, the sandbox on WECHAT_SANDBOX_PORT (start it with `make sandbox`).
Run params go in NONTAX_RUN_CONF as JSON, e.g. '{"dry_run": true}'.
"""

from __future__ import annotations

import json
import os
import sys

from nontax_dev.airflow_run import ROOT, airflow_env, dags_test, sandbox_connection


def main() -> int:
    port = os.environ.get("WECHAT_SANDBOX_PORT", "8765")
    wechat = os.environ.get("AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT") or sandbox_connection(
        f"http://127.0.0.1:{port}"
    )
    env = airflow_env(
        ROOT / ".airflow" / "run-once",
        orders_db=os.environ.get("AIRFLOW_CONN_NONTAX_ORDERS_DB"),
        wechat_conn=wechat,
    )
    conf = json.loads(os.environ.get("NONTAX_RUN_CONF") or "{}")
    result = dags_test(env, conf, log_file=ROOT / ".airflow" / "run-once" / "last-run.log")
    for task in result.tasks:
        label = "" if task["map_index"] < 0 else task["map_index"]
        print(f"{task['task_id']:<28} {label!s:<6} {task['state']}")
    print(f"run {result.run_id}: {result.run_state} (log: .airflow/run-once/last-run.log)")
    return 0 if result.run_state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
