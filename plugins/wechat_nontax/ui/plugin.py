"""The Bills page in the Airflow UI (Browse -> Bills), declared: which app, at which prefix,
which nav entry. The routes are in `wechat_nontax.ui.routes`. Beside it, the backlog gauges for
Prometheus at `/nontax/metrics` (`wechat_nontax.observability.endpoint`).

Registered through the package's `airflow.plugins` entry point, so every Airflow component
imports this module (workers too): it imports nothing heavy and opens no connection. The FastAPI
app is built the first time the api-server hands it a request.
"""

from __future__ import annotations

import importlib
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from wechat_nontax.settings import METRICS_URL_PREFIX


class _LazyApp:
    """An ASGI app that builds the real one (FastAPI, Jinja2, the order store) on first use:
    `module`'s `create_app()`."""

    def __init__(self, module: str) -> None:
        self._module = module
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = importlib.import_module(self._module).create_app()
        await self._app(scope, receive, send)


class BillsPlugin(AirflowPlugin):
    name = "nontax_bills"
    fastapi_apps = [  # noqa: RUF012
        {"app": _LazyApp("wechat_nontax.ui.routes"), "url_prefix": "/bills", "name": "Bills"},
        {
            "app": _LazyApp("wechat_nontax.observability.endpoint"),
            "url_prefix": METRICS_URL_PREFIX,
            "name": "Nontax metrics",
        },
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Bills",
            "href": "/bills/",
            "url_route": "bills",
            "destination": "nav",
            "category": "browse",
        }
    ]
