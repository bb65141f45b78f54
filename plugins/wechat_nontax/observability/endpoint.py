"""The backlog gauges over HTTP: `GET /nontax/metrics` on Airflow's api-server, in Prometheus'
text format, for a scraper that sends `Authorization: Bearer <token>`.

On the api-server because every deployment already runs and exposes it (behind its TLS proxy)
and it already reads the Connections: no process, port or container more to run and guard. The
token is the password of the Connection `nontax_metrics` (read at each scrape, so a new one
takes effect at once), compared in constant time; Airflow's own login does not suit a scraper
(its tokens expire). Without that Connection the endpoint answers 503 to everyone, never open.

A scrape opens one connection to the order database (`nontax_orders_db`), runs one statement
(`backlog.BACKLOG_SQL`) and closes it. When the database does not answer, the scrape still
succeeds with `nontax_backlog_up 0`, which an alert watches.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Response, status

from wechat_nontax.observability.backlog import exposition, read_backlog
from wechat_nontax.settings import METRICS_CONN_ID

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def scrape_token() -> str | None:
    """The token a scraper must send: the password of the Connection `nontax_metrics`."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(METRICS_CONN_ID).password or None
    except Exception:  # noqa: BLE001 (not defined: the endpoint stays closed)
        return None


def check_bearer(authorization: str | None, expected: str | None) -> None:
    """Raise the HTTP answer for a caller without the right bearer token."""
    if not expected:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"no scrape token: define the Connection {METRICS_CONN_ID} (its password)",
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is needed",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong token")


def create_app() -> FastAPI:
    app = FastAPI(title="nontax metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    def backlog_metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        check_bearer(authorization, scrape_token())
        from wechat_nontax.store.connection import connect

        started = time.perf_counter()
        backlog = None
        try:
            conn = connect(application_name="nontax_metrics")
            try:
                backlog = read_backlog(conn)
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 (the scrape says so: nontax_backlog_up 0)
            log.warning("the backlog could not be read: %s", type(exc).__name__)
        body = exposition(backlog, time.perf_counter() - started)
        return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return app
