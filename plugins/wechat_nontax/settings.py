"""What the project's DAGs share: the calendar they run in, how their tasks are retried, the
pool's size and the Asset the issuing DAGs update.

Each DAG names its own schedule (a cron expression from the environment, in Beijing time); the
rest is the same for all of them, kept here once.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, CronTriggerTimetable

from wechat_nontax.notify import notify_failure

TIMEZONE = "Asia/Shanghai"
# The pool's slots, as the deployment sets them: an issuing run is spread over at least this
# many batches.
POOL_SLOTS = int(os.environ.get("NONTAX_POOL_SLOTS", "4"))
# Updated by every issuing run that inserted bills.
BILLS_ISSUED = Asset(name="nontax_bills_issued", uri="nontax://bills/issued")


def dag_settings(schedule_env: str, default_cron: str) -> dict[str, Any]:
    """DAG arguments: the schedule from `schedule_env` (else `default_cron`), no catch-up, one
    run at a time, and the task defaults (four retries with backoff, the failure webhook)."""
    return {
        "schedule": CronTriggerTimetable(
            os.environ.get(schedule_env, default_cron), timezone=TIMEZONE
        ),
        "start_date": pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {
            # A try the Celery executor could not send (the broker away) counts as a failed try
            # though it never ran: four, 30 s doubling (each up to twice that, Airflow's spread),
            # outlast a broker away for 7.5 minutes before a batch is left to the next run.
            "retries": 4,
            "retry_delay": timedelta(seconds=30),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=10),
            "on_failure_callback": notify_failure,
        },
    }
