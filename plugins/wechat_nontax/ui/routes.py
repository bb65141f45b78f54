"""The Bills page: a page of our own inside the Airflow UI for the person on duty.

Mounted by `wechat_nontax.ui.plugin` at `/bills` on the api-server and opened from
Browse -> Bills (in the UI's frame). Server-rendered HTML (Jinja2, autoescaped), readable
without JavaScript; a small script of its own (`static/bills.js`) follows the Airflow UI's
language, time zone and light or dark theme. The pages, one module each:
- `/bills/`: the overview (`overview`);
- `/bills/order?id=...`: one order (`order_page`);
- `/bills/reset|issue|refuse|void?id=...`: the actions on one order (`actions`);
- `/bills/many`, `/bills/action?id=...`: an action on many orders, and an action recorded
  (`bulk`).

Airflow does not protect a plugin's routes: every route checks the caller with Airflow's own
auth manager (`guards`). The order database is the Airflow Connection `nontax_orders_db`,
opened per request (`database`). What goes wrong is a page that says what happened and what to
do, in the person's language (`pages`), never Airflow's raw JSON nor a bare "Internal Server
Error".
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg2
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from wechat_nontax.store.sql import OrderStoreError
from wechat_nontax.ui import actions, bulk, order_page, overview
from wechat_nontax.ui.i18n import N_
from wechat_nontax.ui.pages import message_page

log = logging.getLogger(__name__)


def create_app() -> FastAPI:
    app = FastAPI(
        title="Bills",
        description="The orders that need a person, one order's history, and actions on them.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(HTTPException)
    def refused(request: Request, exc: HTTPException) -> HTMLResponse:
        """Every refusal as a page saying what was wrong (a 400 for bad input)."""
        return message_page(request, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        problems = "; ".join(
            f"{error['loc'][-1]}: {error['msg']}" for error in exc.errors() if error.get("loc")
        )
        return message_page(request, status.HTTP_400_BAD_REQUEST, problems or "bad input")

    @app.exception_handler(psycopg2.Error)
    @app.exception_handler(OrderStoreError)
    def database_unreachable(request: Request, exc: Exception) -> HTMLResponse:
        # The class only: a message may name the server or its user.
        log.warning("Bills page: the order database failed: %s", type(exc).__name__)
        return message_page(
            request, status.HTTP_503_SERVICE_UNAVAILABLE,
            N_("The order database did not answer."),
        )  # fmt: skip

    @app.exception_handler(Exception)
    def broken(request: Request, exc: Exception) -> HTMLResponse:
        log.exception("Bills page: %s %s failed", request.method, request.url.path)
        return message_page(
            request, status.HTTP_500_INTERNAL_SERVER_ERROR, N_("This page could not be made.")
        )

    for room in (overview, order_page, actions, bulk):
        app.include_router(room.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app
