"""Every name and default the project's code shares, in one place.

Names (DAGs, tasks, Connections, the pool, the Asset) are constants. What a deployment sets comes
from the environment, each variable read here and nowhere else: the pool and its slots at import,
the hold, the PDF root, the schedules, the retry delay and the rest when asked (a test or a worker
may set them after the import). Secrets are not settings: Connections (`AIRFLOW_CONN_*`, read by
Airflow, or by `store.connection.dsn_from_env` for the tools that run without it) and the
receiver's callback credentials (`receiver.config`) are read where they are used; their names are
here. The DAGs' arguments are built from them by `wechat_nontax.dag_arguments`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from zoneinfo import ZoneInfo

# -- the DAGs, their tasks and what they update --------------------------------------------------
INSERTBILL_DAG_ID = "nontax_insertbill"  # issues the due bills, daily
REQUESTS_DAG_ID = "nontax_requests"  # carries out refusals and voids
WAITING_DAG_ID = "nontax_waiting"  # issues, within minutes, orders whose payers just authorised
# Each DAG's schedule: the variable that sets it (a cron expression, Beijing time) and its default.
INSERTBILL_SCHEDULE_ENV = "NONTAX_SCHEDULE"
INSERTBILL_SCHEDULE_DEFAULT = "30 2 * * *"
REQUESTS_SCHEDULE_ENV = "NONTAX_REQUESTS_SCHEDULE"
REQUESTS_SCHEDULE_DEFAULT = "*/5 * * * *"
# The wait from a payer's authorisation to the bill is this interval plus a run.
WAITING_SCHEDULE_ENV = "NONTAX_WAITING_SCHEDULE"
WAITING_SCHEDULE_DEFAULT = "*/2 * * * *"
CLAIM_TASK_ID = "claim_orders"  # the issuing DAGs' claim: its XCom names the batches
ISSUE_TASK_ID = "issue_bills"  # one mapped instance a batch, in both issuing DAGs
REQUESTS_TASK_ID = "carry_out_requests"
REPORT_TASK_ID = "report"  # the last task of every DAG: its state is the run's
# Updated by every issuing run that inserted bills.
BILLS_ISSUED_ASSET = {"name": "nontax_bills_issued", "uri": "nontax://bills/issued"}
# Beijing time: schedules, bill dates and WeChat's daily quotas (China has no daylight saving).
TIMEZONE = "Asia/Shanghai"
BEIJING_TIME = ZoneInfo(TIMEZONE)

# -- Connections and the pool --------------------------------------------------------------------
WECHAT_CONN_ID = "wechat_nontax_default"
ORDERS_CONN_ID = "nontax_orders_db"
# The bearer token Prometheus sends to the backlog gauges (its password); without it the
# endpoint answers 503 to everyone.
METRICS_CONN_ID = "nontax_metrics"
# Where the backlog gauges are served on the api-server: /nontax/metrics.
METRICS_URL_PREFIX = "/nontax"
# The pool that bounds the calls to WeChat of every DAG across all runs, and its slots as the
# deployment sets them: an issuing run is spread over at least this many batches.
WECHAT_POOL_ENV, DEFAULT_WECHAT_POOL = "NONTAX_WECHAT_POOL", "wechat_nontax"
WECHAT_POOL = os.environ.get(WECHAT_POOL_ENV, DEFAULT_WECHAT_POOL)
POOL_SLOTS_ENV, DEFAULT_POOL_SLOTS = "NONTAX_POOL_SLOTS", 4
POOL_SLOTS = int(os.environ.get(POOL_SLOTS_ENV, DEFAULT_POOL_SLOTS))


# Where a service that runs without Airflow (the authorisation receiver) sends its metrics: the
# StatsD server of the deployment's own `[metrics]` settings, as Airflow reads them from the
# environment (AIRFLOW__METRICS__STATSD_ON, _HOST, _PORT, _PREFIX); None when StatsD is off.
def statsd_for_services() -> tuple[str, int, str] | None:
    on = os.environ.get("AIRFLOW__METRICS__STATSD_ON", "").strip().lower()
    if on not in ("true", "1", "yes", "on"):
        return None
    return (
        os.environ.get("AIRFLOW__METRICS__STATSD_HOST") or "localhost",
        int(os.environ.get("AIRFLOW__METRICS__STATSD_PORT") or 8125),
        os.environ.get("AIRFLOW__METRICS__STATSD_PREFIX") or "airflow",
    )


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


# Where the Bills page asks Airflow's REST API (issue-now's run, a run's state): this api-server at
# `[api] host`/`port`, unless this names another address (a proxy in front of it).
BILLS_API_URL_ENV = "NONTAX_BILLS_API_URL"


def bills_api_url_setting() -> str | None:
    return os.environ.get(BILLS_API_URL_ENV) or None


# -- Airflow's retries ---------------------------------------------------------------------------
# The first retry's delay (`NONTAX_RETRY_DELAY_S`, 30 s), doubled at each next try up to
# MAX_RETRY_DELAY; read when a DAG file is parsed.
DEFAULT_RETRY_DELAY_S = 30.0
RETRY_DELAY_ENV = "NONTAX_RETRY_DELAY_S"
MAX_RETRY_DELAY = timedelta(minutes=10)


def retry_delay() -> timedelta:
    return timedelta(seconds=float(os.environ.get(RETRY_DELAY_ENV, DEFAULT_RETRY_DELAY_S)))


def schedule_of(schedule_env: str, default_cron: str) -> str:
    """A DAG's cron expression: its variable's, else its default."""
    return os.environ.get(schedule_env, default_cron)


# -- the event receiver (a web service of its own: `nontax receiver`) ---------------------------
# The callback token, EncodingAESKey (and the previous one during a rotation) and the appid:
# the Connection `wechat_nontax_callback` (login: appid, password: token, extra:
# encoding_aes_key, previous_encoding_aes_key), read from AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK
# without Airflow, else the variables below. See docs/configuration.md.
CALLBACK_CONN_ID = "wechat_nontax_callback"
CALLBACK_TOKEN_ENV = "NONTAX_CALLBACK_TOKEN"  # noqa: S105 - a variable's name
CALLBACK_AES_KEY_ENV = "NONTAX_CALLBACK_AES_KEY"
CALLBACK_PREVIOUS_AES_KEY_ENV = "NONTAX_CALLBACK_PREVIOUS_AES_KEY"
CALLBACK_APPID_ENV = "NONTAX_CALLBACK_APPID"
RECEIVER_PATH = "/wechat/callback"  # the callback URL's path set in WeChat's console
RECEIVER_HOST_ENV, DEFAULT_RECEIVER_HOST = "NONTAX_RECEIVER_HOST", "127.0.0.1"
RECEIVER_PORT_ENV, DEFAULT_RECEIVER_PORT = "NONTAX_RECEIVER_PORT", 8770
# Where verified events wait when the order database cannot take them at once.
RECEIVER_SPOOL_ENV, DEFAULT_RECEIVER_SPOOL = "NONTAX_RECEIVER_SPOOL", ".run/receiver-spool"
# A request whose timestamp is further than this from now is refused (a replay).
RECEIVER_REPLAY_WINDOW_ENV, DEFAULT_RECEIVER_REPLAY_WINDOW_S = (
    "NONTAX_RECEIVER_REPLAY_WINDOW_S",
    300,
)
# WeChat's events are under 2 KiB; a larger body is refused unread.
RECEIVER_MAX_BODY_ENV, DEFAULT_RECEIVER_MAX_BODY = "NONTAX_RECEIVER_MAX_BODY", 64 * 1024
# How long a request waits for the database before the event is spooled and `success` answered:
# well inside WeChat's 5 s.
RECEIVER_RECORD_BUDGET_ENV, DEFAULT_RECEIVER_RECORD_BUDGET_S = (
    "NONTAX_RECEIVER_RECORD_BUDGET_S",
    1.5,
)
# How often the spool is replayed into the database while it holds events.
RECEIVER_REPLAY_EVERY_ENV, DEFAULT_RECEIVER_REPLAY_EVERY_S = "NONTAX_RECEIVER_REPLAY_EVERY_S", 2.0


def receiver_setting(env: str, default: float | int | str) -> float | int | str:
    """One of the receiver's settings above from the environment, of its default's type."""
    value = os.environ.get(env)
    return default if value in (None, "") else type(default)(value)
