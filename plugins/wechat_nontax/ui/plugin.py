"""The Bills page in the Airflow UI (Browse -> Bills), declared: which app, at which prefix,
which nav entry. The routes are in `wechat_nontax.ui.routes`.

Registered through the package's `airflow.plugins` entry point, so every Airflow component
imports this module (workers too): it imports nothing heavy and opens no connection. The FastAPI
app is built the first time the api-server hands it a request.
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
            from wechat_nontax.ui.routes import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class BillsPlugin(AirflowPlugin):
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
