"""Telling someone when a task fails: a webhook, configured, off by default.

Set the Airflow Connection `nontax_notify` (an HTTP Connection: host = the webhook URL) to
receive a JSON POST for each failed task: dag, run, task, map index, try, the reason's first
line, and the log URL. With no such Connection nothing is sent. A notification that cannot be
sent is logged and never fails anything else.

The webhook URL is a credential: the `key=` of a WeCom robot or the `access_token=` of a
DingTalk one is all it takes to post as that robot. So it is sent with plain `requests` (no
redirects: another host would get the URL's key), and a failure logs only the host and the
exception's type or the HTTP status, never the URL, its query or the exception's text (requests
quotes the URL there). HttpHook is not used for the call: it logs the URL and the answer's body.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from wechat_nontax.wechat.errors import scrub_url_logs

NOTIFY_CONN_ID = "nontax_notify"
TIMEOUT_S = 10
log = logging.getLogger(__name__)
scrub_url_logs()  # urllib3's DEBUG request line carries the URL's key


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


def webhook_url(conn: Any) -> str:
    """The Connection's URL: its host when that is a whole URL, else schema://host:port."""
    host = conn.host or ""
    if "://" in host:
        return host
    port = f":{conn.port}" if conn.port else ""
    return f"{conn.schema or 'https'}://{host}{port}"


def notify_failure(context: dict[str, Any]) -> None:
    import requests
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(NOTIFY_CONN_ID)
    except Exception:  # noqa: BLE001 (no Connection: notifications are off)
        return
    url = webhook_url(conn)
    host = urlsplit(url).hostname or "(no host)"
    try:
        response = requests.post(
            url, json=failure_message(context), timeout=TIMEOUT_S, allow_redirects=False
        )
    except Exception as exc:  # noqa: BLE001 (a notification never fails anything else)
        log.warning("could not send the failure notification to %s: %s", host, type(exc).__name__)
        return
    if not 200 <= response.status_code < 300:
        log.warning(
            "the failure notification to %s was answered HTTP %s", host, response.status_code
        )
