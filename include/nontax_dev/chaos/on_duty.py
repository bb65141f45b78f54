"""The chaos runner's Airflow: its DAG runs, and a person's look and clear through the REST API.

A run is the public `DAG.test()` of the DAG file's DAG, in the runner's process, with only the
clocks shortened (nontax_dev.chaos.dags). Everything a person on duty does goes through Airflow's
REST API v2, as the UI does: an `airflow api-server` (the core API only) on the same SQLite
metadata database answers which instances are red, what the claim handed to the batches
(its XCom), what the runs rendered and kept (XCom, rendered fields: the secret check), and
clears the red instances with their downstream tasks (`clearTaskInstances`).

One step has no public interface: running what a clear made ready, in this process. A
scheduler would run it in workers that parse the DAG file themselves, without the shortened
clocks (so a run of the chaos would take minutes instead of seconds), and `DAG.test()` clears
the whole run before it starts (so it cannot take a run up where a person's clear left it).
`_run_cleared` keeps that step: the loop of `DAG.test()` itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nontax_dev.airflow_api import AirflowApi
from nontax_dev.airflow_run import AIRFLOW
from wechat_nontax.settings import CLAIM_TASK_ID, INSERTBILL_DAG_ID

ADMIN_USER = "admin"
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
STARTUP_S = 240.0  # the API server's import and first answer, on 2 busy cores


class ChaosAirflow:
    """The API server beside the runner's in-process runs (a context manager)."""

    def __init__(self, home: Path, env: dict[str, str]):
        from wechat_sandbox.process import free_port

        self.home = home
        self.port = free_port()
        self._password = secrets.token_urlsafe(16)
        passwords = home / "simple_auth_manager_passwords.json"
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({ADMIN_USER: self._password}, out)
        self.env = {
            **env,
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        }
        self._proc: subprocess.Popen | None = None
        self.api: AirflowApi | None = None

    def __enter__(self) -> ChaosAirflow:
        log = (self.home / "api-server.log").open("ab")
        command = [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.port)]
        self._proc = subprocess.Popen(
            [*command, "--apps", "core", "--workers", "1"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped as a group, with anything it forked
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.api is not None:
            self.api.close()
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)

    def _wait_ready(self) -> None:
        import requests

        api = AirflowApi(f"http://127.0.0.1:{self.port}", ADMIN_USER, self._password)
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"airflow api-server exited ({self._proc.returncode}): see "
                    f"{self.home / 'api-server.log'}"
                )
            with contextlib.suppress(requests.RequestException):
                if api.session.get(f"{api.base_url}/api/v2/version", timeout=5).ok:
                    api.login()
                    self.api = api
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"airflow api-server not answering after {STARTUP_S:.0f} s")
            time.sleep(0.5)

    @property
    def _api(self) -> AirflowApi:
        assert self.api is not None, "use ChaosAirflow as a context manager"
        return self.api

    # -- runs ---------------------------------------------------------------------------------

    @staticmethod
    def run(dag: Any, conf: dict[str, Any] | None = None, *, run_at: datetime | None = None) -> Any:
        """A run of `dag` in this process (`DAG.test()`); with `run_at`, named
        `manual__<run_at>` (a run id known before). Returns the run."""
        if run_at is None:
            return dag.test(run_conf=conf)
        return dag.test(run_conf=conf, run_after=run_at, logical_date=run_at)

    # -- what a person sees and does (REST) ----------------------------------------------------

    def red(self, run_id: str, task_id: str, dag_id: str = INSERTBILL_DAG_ID) -> list[int]:
        """The map indexes of `task_id`'s failed (or upstream-failed) instances."""
        return [
            ti["map_index"]
            for ti in self._api.task_instances(quote(run_id, safe=""), dag_id)
            if ti["task_id"] == task_id and ti["state"] in ("failed", "upstream_failed")
        ]

    def claimed_batches(self, run_id: str, dag_id: str = INSERTBILL_DAG_ID) -> list[list[str]]:
        """The batches the run's claim handed to the batch instances (its XCom), [] if none."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{CLAIM_TASK_ID}/xcomEntries/return_value"
        )
        try:
            value = self._api.get(path)["value"]
        except Exception as error:  # no XCom: the claim failed before it pushed one
            if getattr(error, "status", None) == 404:
                return []
            raise
        if isinstance(value, str):
            value = json.loads(value)
        return value if isinstance(value, list) else []

    def clear_and_rerun(
        self,
        dag: Any,
        dr: Any,
        instances: Iterable[tuple[str, int]],
        with_tasks: Sequence[str],
    ) -> None:
        """A person's clear of `instances` and the tasks `with_tasks` (their downstream) in the
        run `dr` of `dag`, then what the scheduler would do: run what is ready until the run
        ends."""
        self._api.clear(
            dr.run_id,  # in the body: as it is
            [*({(t, i) for t, i in instances}), *with_tasks],
            only_failed=False,
            dag_id=dr.dag_id,
        )
        _run_cleared(dag, dr)

    def secret_hits(self, runs: Iterable[tuple[str, str]], needles: Sequence[str]) -> int:
        """Occurrences of `needles` in the XComs and rendered fields of `runs` (dag id, run
        id), as the API shows them."""
        hits = 0
        for dag_id, run_id in runs:
            run = quote(run_id, safe="")
            for ti in self._api.task_instances(run, dag_id):
                text = json.dumps(ti.get("rendered_fields") or {}, ensure_ascii=False)
                hits += sum(text.count(needle) for needle in needles)
            for entry in self._xcom_entries(dag_id, run):
                text = json.dumps(entry.get("value"), ensure_ascii=False, default=str)
                hits += sum(text.count(needle) for needle in needles)
        return hits

    def _xcom_entries(self, dag_id: str, run: str) -> list[dict[str, Any]]:
        base = f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances"
        entries: list[dict[str, Any]] = []
        while True:
            page = self._api.get(
                f"{base}/~/xcomEntries", params={"limit": 100, "offset": len(entries)}
            )
            entries += page["xcom_entries"]
            if not page["xcom_entries"] or len(entries) >= page["total_entries"]:
                break
        return [
            self._api.get(
                f"{base}/{e['task_id']}/xcomEntries/{quote(e['key'], safe='')}",
                params={"map_index": e["map_index"]},
            )
            for e in entries
        ]


def _run_cleared(dag: Any, dr: Any) -> None:
    """Run the cleared instances of `dr` (a run `dag.test()` returned) until it ends: the loop of
    `DAG.test()` (dependency check, `_run_task` per ready instance), private to Airflow 3.3
    (pinned; `check_private_loop` checks it at start). No public interface does it in this
    process: see the module docstring."""
    from airflow import settings
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils import timezone
    from airflow.utils.state import DagRunState, TaskInstanceState

    session = settings.Session()  # the one `DAG.test()` ran `dr` in: its state is read anew
    session.expire_all()
    dr.state = DagRunState.RUNNING  # the clear queued it; the scheduler would start it
    session.merge(dr)
    session.commit()
    deadline = time.monotonic() + 600
    while dr.state == DagRunState.RUNNING and time.monotonic() < deadline:
        session.expire_all()
        schedulable, _ = dr.update_state(session=session)
        for ti in schedulable:
            if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
            ti.scheduled_dttm = timezone.utcnow()
        session.commit()
        ready = [
            ti
            for ti in dr.get_task_instances(session=session)
            if ti.state == TaskInstanceState.SCHEDULED
        ]
        if not ready:
            time.sleep(0.5)  # waiting for a retry delay
        for ti in ready:
            with contextlib.suppress(Exception):  # a failure is the task's state, as in test()
                _run_task(ti=ti, task=dag.task_dict[ti.task_id])


def check_private_loop() -> None:
    """Refuse to start on an Airflow whose `DAG.test()` loop `_run_cleared` no longer mirrors."""
    from airflow.sdk.definitions import dag as sdk_dag

    if not hasattr(sdk_dag, "_run_task"):
        raise RuntimeError("this Airflow has no airflow.sdk.definitions.dag._run_task")
