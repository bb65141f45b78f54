"""Airflow's REST API as the Bills page asks it: with the caller's own token (the caller's
permissions decide), at this api-server, never at an address taken from the request."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests
from fastapi import Request

from wechat_nontax.settings import bills_api_url_setting
from wechat_nontax.ui.guards import caller_token
from wechat_nontax.ui.view import dags_of_step, run_url


def api_url() -> str:
    """Where the page asks Airflow's REST API: this api-server (`settings.BILLS_API_URL_ENV`
    overrides)."""
    if configured := bills_api_url_setting():
        return configured.rstrip("/")
    from airflow.configuration import conf

    host = conf.get("api", "host", fallback="127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 (comparing)
    return f"http://{host}:{conf.getint('api', 'port', fallback=8080)}"


class Airflow:
    """Airflow's REST API asked with the caller's own token, once per question within a
    request."""

    def __init__(self, request: Request):
        self._request = request
        self._answers: dict[str, dict[str, Any] | None] = {}

    def _get(self, path: str) -> dict[str, Any] | None:
        """The answer's JSON; None when Airflow does not know it or could not be asked."""
        if path not in self._answers:
            try:
                response = requests.get(
                    f"{api_url()}/api/v2/{path}",
                    headers={"Authorization": f"Bearer {caller_token(self._request)}"},
                    timeout=10,
                )
                self._answers[path] = response.json() if response.status_code == 200 else None
            except (requests.RequestException, ValueError):
                self._answers[path] = None
        return self._answers[path]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        return self._get(f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def paused(self, dag_id: str) -> bool | None:
        """Whether the DAG is paused (a run asked for then waits, queued); None: unknown."""
        dag = self._get(f"dags/{dag_id}")
        return None if dag is None else bool(dag.get("is_paused"))

    def dag_of_run(self, run_id: str, step: str | None) -> str | None:
        """The DAG that made the run a history row of `step` names: the one its step says, or,
        of several that Airflow has, the first that has the run (none: no link rather than a
        404). A DAG Airflow does not have costs one question a page, its runs none."""
        likeliest, *others = dags_of_step(step)
        dags = [likeliest, *(dag_id for dag_id in others if self._get(f"dags/{dag_id}"))]
        if len(dags) == 1:
            return likeliest
        return next((dag_id for dag_id in dags if self.run(dag_id, run_id)), None)

    def run_link(self, run_id: str | None, step: str | None) -> str | None:
        dag_id = self.dag_of_run(run_id, step) if run_id else None
        return run_url(run_id, dag_id) if run_id and dag_id else None


def post_run(request: Request, dag_id: str, conf: dict[str, Any], note: str) -> requests.Response:
    """Ask Airflow's REST API for a manual run of `dag_id` with the caller's own token (so the
    caller's permissions decide); Airflow's answer."""
    return requests.post(
        f"{api_url()}/api/v2/dags/{dag_id}/dagRuns",
        json={"logical_date": None, "conf": conf, "note": note},
        headers={"Authorization": f"Bearer {caller_token(request)}"},
        timeout=30,
    )


def trigger(request: Request, dag_id: str, conf: dict[str, Any], note: str) -> str | None:
    """`post_run`'s run id, or None when Airflow did not create one."""
    try:
        response = post_run(request, dag_id, conf, note)
    except requests.RequestException:
        return None
    return response.json()["dag_run_id"] if response.status_code in (200, 201) else None


def refusal_detail(response: requests.Response) -> str | None:
    """The `detail` of Airflow's refusal, when it gave one as JSON."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None
    detail = response.json().get("detail")
    return detail if isinstance(detail, str) else None
