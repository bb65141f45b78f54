"""Telling someone when a task fails: a webhook, configured, off by default.

Set the Airflow Connection `nontax_notify` (an HTTP Connection: host = the webhook URL) to
receive a JSON POST for each failed task: dag, run, task, map index, try, the reason's first
line, and the log URL. With no such Connection nothing is sent. A notification that cannot be
sent is logged and never fails anything else.
"""

from __future__ import annotations

import logging
from typing import Any

NOTIFY_CONN_ID = "nontax_notify"
log = logging.getLogger(__name__)


def failure_message(context: dict[str, Any]) -> dict[str, Any]:
    ti = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    return {
        "dag_id": getattr(ti, "dag_id", None),
        "run_id": context.get("run_id"),
        "task_id": getattr(ti, "task_id", None),
        "map_index": getattr(ti, "map_index", None),
        "try_number": getattr(ti, "try_number", None),
        "reason": str(exception).splitlines()[0][:500] if exception else None,
        "log_url": getattr(ti, "log_url", None),
    }


def notify_failure(context: dict[str, Any]) -> None:
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(NOTIFY_CONN_ID)
    except Exception:  # noqa: BLE001 (no Connection: notifications are off)
        return
    try:
        from airflow.providers.http.hooks.http import HttpHook

        HttpHook(method="POST", http_conn_id=conn.conn_id).run(
            json=failure_message(context), extra_options={"timeout": 10}
        )
    except Exception:
        log.exception("could not send the failure notification")
