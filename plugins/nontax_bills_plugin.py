"""The Bills view in the Airflow UI (Browse -> Bills): see `wechat_nontax.bills_view`.

Every Airflow component imports this file (workers too): it imports nothing heavy and opens no
connection. The FastAPI app is built the first time the api-server hands it a request.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class _BillsApp:
    """An ASGI app that builds the real one (FastAPI, Jinja2, the order store) on first use."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from wechat_nontax.bills_view import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class NontaxBillsPlugin(AirflowPlugin):
    name = "nontax_bills"
    fastapi_apps = [{"app": _BillsApp(), "url_prefix": "/bills", "name": "Bills"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "Bills",
            "href": "/bills/",
            "url_route": "bills",
            "destination": "nav",
            "category": "browse",
        }
    ]
