"""Every name and default the project's code shares, in one place.

Names (DAGs, tasks, Connections, the pool, the Asset) are constants. What a deployment sets comes
from the environment, each variable read here and nowhere else: the pool and its slots at import,
the hold and the PDF root when asked (a test or a worker may set them after the import). Each DAG
names its own schedule (a cron expression from the environment, in Beijing time); the rest of its
arguments, the same for all of them, come from `dag_settings`, which imports Airflow only when a
DAG file calls it so that the pure parts of the package can import this module.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

# -- the DAGs, their tasks and what they update --------------------------------------------------
INSERTBILL_DAG_ID = "nontax_insertbill"  # issues the due bills, daily
REQUESTS_DAG_ID = "nontax_requests"  # carries out refusals and voids
WAITING_DAG_ID = "nontax_waiting"  # issues, within minutes, orders whose payers just authorised
# Its schedule: the wait from a payer's authorisation to the bill is this interval plus a run.
WAITING_SCHEDULE_ENV = "NONTAX_WAITING_SCHEDULE"
WAITING_SCHEDULE_DEFAULT = "*/2 * * * *"
ISSUE_TASK_ID = "issue_bills"  # one mapped instance a batch, in both issuing DAGs
REQUESTS_TASK_ID = "carry_out_requests"
# Updated by every issuing run that inserted bills.
BILLS_ISSUED_ASSET = {"name": "nontax_bills_issued", "uri": "nontax://bills/issued"}
TIMEZONE = "Asia/Shanghai"

# -- Connections and the pool --------------------------------------------------------------------
WECHAT_CONN_ID = "wechat_nontax_default"
ORDERS_CONN_ID = "nontax_orders_db"
# The pool that bounds the calls to WeChat of every DAG across all runs, and its slots as the
# deployment sets them: an issuing run is spread over at least this many batches.
WECHAT_POOL = os.environ.get("NONTAX_WECHAT_POOL", "wechat_nontax")
POOL_SLOTS = int(os.environ.get("NONTAX_POOL_SLOTS", "4"))

# -- claims and holds ----------------------------------------------------------------------------
# How long a run's claim lasts when nothing renews it (orders claimed and waiting for their
# batch, or left due by a try): longer than any run, short enough that a crashed run's orders
# are due again the same day. A run that ended frees its claims at once (see run_steps).
DEFAULT_LEASE_S = 3600
# How long a task try's hold on an order lasts unless renewed (every quarter of it).
DEFAULT_HOLD_S = 120.0
HOLD_ENV = "NONTAX_HOLD_S"


def default_hold_s() -> float:
    """How long a task try's hold on its orders lasts unrenewed (`NONTAX_HOLD_S`, 120 s): a
    try that dies (SIGKILL, a lost worker) frees its orders this long after its last renewal."""
    return float(os.environ.get(HOLD_ENV, DEFAULT_HOLD_S))


# -- media ids and PDFs --------------------------------------------------------------------------
# WeChat deletes a media id that is not attached to a card within 3 days; upload again well
# before that.
MEDIA_ID_LIFETIME_S = 3 * 24 * 3600
DEFAULT_MEDIA_MARGIN_S = 6 * 3600
# Where the bills' PDFs are: a directory or an object-storage URL, as the workers see it.
PDF_ROOT_ENV = "NONTAX_PDF_ROOT"


def pdf_root_setting() -> str | None:
    return os.environ.get(PDF_ROOT_ENV)


def dag_settings(schedule_env: str, default_cron: str) -> dict[str, Any]:
    """DAG arguments: the schedule from `schedule_env` (else `default_cron`), no catch-up, one
    run at a time, and the task defaults (four retries with backoff, the failure webhook)."""
    import pendulum
    from airflow.sdk import CronTriggerTimetable

    from wechat_nontax.notify import notify_failure

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
