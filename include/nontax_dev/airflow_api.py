"""A small client of Airflow's REST API v2, for the stack's health checks and the stack tests.

Logs in like a person would (SimpleAuthManager: `POST /auth/token` with a username and password
gives a JWT sent as `Authorization: Bearer`) and takes a fresh token when the API answers 401.
Only what the project uses: versions and health, the DAG, runs, task instances, their logs, and
`clearTaskInstances`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import requests

from wechat_nontax.settings import INSERTBILL_DAG_ID as DAG_ID

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
# Task instance states after which nothing happens any more without a person.
FINISHED_TI_STATES = frozenset(
    {"success", "failed", "skipped", "upstream_failed", "removed", "up_for_retry"}
)


class AirflowApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} answered {status}: {body[:2000]}")
        self.status = status
        self.body = body


class AirflowApi:
    """`AirflowApi("http://127.0.0.1:8080", "admin", password)`."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self.session = requests.Session()
        self._token: str | None = None

    def close(self) -> None:
        self.session.close()

    # -- plumbing -------------------------------------------------------------------------------

    def login(self) -> str:
        """A fresh JWT (also kept for the next calls)."""
        response = self.session.post(
            f"{self.base_url}/auth/token",
            json={"username": self.username, "password": self._password},
            timeout=self.timeout,
        )
        if response.status_code not in (200, 201):
            raise AirflowApiError("POST", "/auth/token", response.status_code, response.text)
        self._token = response.json()["access_token"]
        return self._token

    @property
    def token(self) -> str:
        return self._token or self.login()

    def request(self, method: str, path: str, *, expect: Iterable[int] = (200,), **kw: Any):
        kw.setdefault("timeout", self.timeout)
        url = f"{self.base_url}{path}"
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
            response = self.session.request(method, url, headers=headers, **kw)
            if response.status_code == 401 and attempt == 0:
                self._token = None  # expired or from an earlier stack: log in again
                continue
            break
        if response.status_code not in tuple(expect):
            raise AirflowApiError(method, path, response.status_code, response.text)
        return response

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, json=body, **kw).json()

    def patch(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PATCH", path, json=body, **kw).json()

    # -- the API ---------------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        """`GET /api/v2/version` (answers without logging in)."""
        response = self.session.get(f"{self.base_url}/api/v2/version", timeout=self.timeout)
        if response.status_code != 200:
            raise AirflowApiError("GET", "/api/v2/version", response.status_code, response.text)
        return response.json()

    def health(self) -> dict[str, Any]:
        """`GET /api/v2/monitor/health`: metadatabase, scheduler, triggerer, dag_processor."""
        response = self.session.get(f"{self.base_url}/api/v2/monitor/health", timeout=self.timeout)
        if response.status_code != 200:
            raise AirflowApiError(
                "GET", "/api/v2/monitor/health", response.status_code, response.text
            )
        return response.json()

    def dag(self, dag_id: str = DAG_ID) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}")

    def import_errors(self) -> list[dict[str, Any]]:
        return self.get("/api/v2/importErrors")["import_errors"]

    def set_paused(self, paused: bool, dag_id: str = DAG_ID) -> dict[str, Any]:
        return self.patch(f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def pool(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v2/pools/{name}")

    def trigger(self, conf: dict[str, Any] | None = None, dag_id: str = DAG_ID) -> str:
        """A manual run (no logical date) with `conf`; returns its run id."""
        body = {"logical_date": None, "conf": conf or {}}
        return self.post(f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def runs(self, dag_id: str = DAG_ID, **params: Any) -> list[dict[str, Any]]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait_run(
        self, run_id: str, *, timeout: float = 300, poll_s: float = 1.0, dag_id: str = DAG_ID
    ) -> dict[str, Any]:
        """Poll the run until it is success or failed; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id, dag_id)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                states = {
                    (t["task_id"], t["map_index"]): t["state"]
                    for t in self.task_instances(run_id, dag_id)
                }
                raise TimeoutError(f"run {run_id} still {run['state']} after {timeout}s: {states}")
            time.sleep(poll_s)

    def wait_idle(self, *, timeout: float = 300, dag_id: str = DAG_ID) -> None:
        """Wait until the DAG has no queued or running run."""
        deadline = time.monotonic() + timeout
        while True:
            active = [r for r in self.runs(dag_id) if r["state"] in ("queued", "running")]
            if not active:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still active after {timeout}s: {active}")
            time.sleep(1.0)

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones one by one), page after page: the API
        returns at most its `maximum_page_limit` (100 by default) at a time."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        instances: list[dict[str, Any]] = []
        while True:
            page = self.get(path, params={"limit": 100, "offset": len(instances)})
            instances += page["task_instances"]
            if not page["task_instances"] or len(instances) >= page["total_entries"]:
                return instances

    def log_text(
        self, run_id: str, task_id: str, try_number: int, map_index: int = -1, dag_id: str = DAG_ID
    ) -> str:
        """A task instance's log as plain text (each structured record on its own line)."""
        data = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": "true"},
            headers={"Accept": "application/json"},
        )
        lines = []
        for record in data.get("content", []):
            if isinstance(record, dict):
                rest = {k: v for k, v in record.items() if k not in ("event", "timestamp")}
                tail = f"  {json.dumps(rest, ensure_ascii=False, default=str)}" if rest else ""
                lines.append(f"{record.get('event', '')}{tail}")
            else:
                lines.append(str(record))
        return "\n".join(lines)

    def clear(
        self,
        run_id: str,
        task_ids: list[str | tuple[str, int] | list[Any]],
        *,
        dry_run: bool = False,
        only_failed: bool = True,
        include_downstream: bool = False,
        include_upstream: bool = False,
        dag_id: str = DAG_ID,
    ) -> list[dict[str, Any]]:
        """`POST /api/v2/dags/{dag_id}/clearTaskInstances` for one run; returns the task
        instances cleared (or that would be, with dry_run)."""
        body = {
            "dag_run_id": run_id,
            "dry_run": dry_run,
            "task_ids": [list(t) if isinstance(t, tuple) else t for t in task_ids],
            "only_failed": only_failed,
            "include_downstream": include_downstream,
            "include_upstream": include_upstream,
            "include_past": False,
            "include_future": False,
        }
        return self.post(f"/api/v2/dags/{dag_id}/clearTaskInstances", body)["task_instances"]
