"""The DAG arguments the three DAGs share: the schedule, one run at a time, the task defaults.

Imported by the DAG files only (it imports Airflow); the names and defaults it reads are in
`settings`.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable

from wechat_nontax.notify import notify_failure
from wechat_nontax.settings import MAX_RETRY_DELAY, TIMEZONE, retry_delay, schedule_of


def dag_arguments(schedule_env: str, default_cron: str) -> dict[str, Any]:
    """The schedule from `schedule_env` (else `default_cron`), no catch-up, one run at a time,
    and the task defaults (four retries with backoff, the failure webhook)."""
    cron = schedule_of(schedule_env, default_cron)
    return {
        "schedule": CronTriggerTimetable(cron, timezone=TIMEZONE),
        "start_date": pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {
            # A try the Celery executor could not send (the broker away) counts as a failed try
            # though it never ran: four, 30 s doubling (each up to twice that, Airflow's spread),
            # outlast a broker away for 7.5 minutes before a batch is left to the next run.
            "retries": 4,
            "retry_delay": retry_delay(),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": MAX_RETRY_DELAY,
            "on_failure_callback": notify_failure,
        },
    }
