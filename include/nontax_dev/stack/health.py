"""When a starting stack is ready: the API answers, the DAG is parsed, Airflow's components
report healthy, the receiver answers; and the wait for each, which stops at once when one of
the stack's processes has exited."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import requests

from nontax_dev.airflow_api import AirflowApi, AirflowApiError
from nontax_dev.stack import StackError
from nontax_dev.stack.processes import Proc, tail
from wechat_nontax.settings import RECEIVER_PATH

HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


def wait_until(
    what: str, deadline: float, ready: Callable[[], bool], procs: list[Proc], timeout_s: float
) -> None:
    """Wait until `ready()`; StackError when a process of `procs` exits or at `deadline`."""
    while True:
        for proc in procs:
            if proc.process() is None:
                raise StackError(
                    f"{proc.name} exited while waiting for {what}; {proc.log}:\n"
                    f"{tail(Path(proc.log))}"
                )
        try:
            if ready():
                return
        except (OSError, AirflowApiError) as exc:
            last = str(exc)
        else:
            last = "not yet"
        if time.monotonic() > deadline:
            logs = "\n".join(f"  {p.log}" for p in procs)
            raise StackError(
                f"timed out after {timeout_s:.0f}s waiting for {what} "
                f"({last[:500]}); the logs:\n{logs}"
            )
        time.sleep(0.5)


def api_answers(api: AirflowApi) -> bool:
    try:
        api.version()
    except requests.RequestException:
        return False
    return True


def dag_parsed(api: AirflowApi) -> bool:
    """The DAG is there; StackError at once when its file does not import."""
    try:
        api.dag()
    except AirflowApiError as exc:
        if exc.status != 404:
            raise
        ours = [e for e in api.import_errors() if "nontax" in e.get("filename", "")]
        if ours:
            raise StackError(f"the DAG file does not import: {ours[0]['stack_trace']}") from None
        return False
    except requests.RequestException:
        return False
    return True


def airflow_healthy(api: AirflowApi) -> bool:
    health = api.health()
    return all((health.get(c) or {}).get("status") == "healthy" for c in HEALTH_COMPONENTS)


def receiver_answers(receiver_url: str) -> bool:
    health = receiver_url.replace(RECEIVER_PATH, "/healthz")
    with contextlib.suppress(requests.RequestException):
        return requests.get(health, timeout=3).status_code == 200
    return False
