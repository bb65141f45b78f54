"""`/bills/order?id=...`: one order, its whole history and requests, links to the Airflow run
and task instance that last touched it, its media id's age, and the actions that fit it and
the person may do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from wechat_nontax.requests.contract import BLOCKS_ISSUING, RequestKind, RequestStatus
from wechat_nontax.requests.store import RequestStore
from wechat_nontax.settings import (
    ISSUE_TASK_ID,
    MEDIA_ID_LIFETIME_S,
    REQUESTS_DAG_ID,
    REQUESTS_TASK_ID,
)
from wechat_nontax.ui.airflow_client import Airflow
from wechat_nontax.ui.database import order_db, order_or_404
from wechat_nontax.ui.guards import CanRead, allowed
from wechat_nontax.ui.pages import reader_of, render
from wechat_nontax.ui.view import (
    ISSUING_DAGS,
    _needs_person,
    action_of,
    offered,
    printable,
    run_url,
    task_instance_url,
    task_url,
    what_was_done,
)

router = APIRouter()


def _last_task_url(
    last: dict[str, Any] | None, dag_id: str | None, batch: int | None
) -> str | None:
    """The task instance of the run that last wrote the order's history: the requests DAG's
    task, or the issuing run's batch that held the order (None when the run's claim does not
    name it: no link rather than a page Airflow does not have)."""
    if last is None or dag_id is None:
        return None
    if dag_id == REQUESTS_DAG_ID:
        return task_instance_url(dag_id, last["run_id"], REQUESTS_TASK_ID)
    if batch is None:
        return None
    return task_instance_url(dag_id, last["run_id"], ISSUE_TASK_ID, batch)


def with_refusal(row: dict[str, Any], requests_: list[Any]) -> dict[str, Any]:
    """The row with `refusal_pending`: a refusal stands against the order (the issuing DAG
    leaves it alone until the refusal is carried out or withdrawn)."""
    pending = any(r.kind == RequestKind.REFUSE and r.status in BLOCKS_ISSUING for r in requests_)
    return {**row, "refusal_pending": pending}


@router.get("/order", response_class=HTMLResponse, dependencies=[CanRead])
def order(
    request: Request,
    user: GetUserDep,
    order_id: Annotated[str, Query(alias="id", max_length=64)],
    done: Annotated[str | None, Query(max_length=16)] = None,
    run: Annotated[str | None, Query(max_length=250)] = None,
    request_id: Annotated[int | None, Query(alias="request", ge=1)] = None,
) -> HTMLResponse:
    reader = reader_of(request)
    with order_db() as (store, conn):
        row = order_or_404(store, order_id)
        history = store.history_rows(order_id)
        requests_ = RequestStore(conn).of_order(order_id)
        last = next((h for h in reversed(history) if h["run_id"]), None)
        airflow = Airflow(request)
        last_dag = airflow.dag_of_run(last["run_id"], last["step"]) if last else None
        # The batch (mapped instance) of the issuing run that last touched the order.
        batch = (
            store.batch_of(last_dag, last["run_id"], order_id)
            if last_dag in ISSUING_DAGS and last["step"] != "operator"
            else None
        )
    row = with_refusal(row, requests_)
    may = allowed(user)
    now = datetime.now(UTC)
    media_expired = bool(
        row["s_pdf_media_id"]
        and row["pdf_uploaded_at"]
        and now - row["pdf_uploaded_at"] > timedelta(seconds=MEDIA_ID_LIFETIME_S)
    )
    pending = any(r.status == RequestStatus.PENDING for r in requests_)
    paused = airflow.paused(REQUESTS_DAG_ID) if pending else None
    recorded = what_was_done(
        printable(done, "done"), history, requests_, request_id, printable(run, "run"), reader
    )
    # The run that carries it out, as Airflow has it (the URL only names it).
    done_run = recorded.run_id if recorded else None
    done_run_state = (airflow.run(recorded.dag_id, done_run) or {}).get("state") if (
        recorded and done_run
    ) else None  # fmt: skip
    return render(
        request,
        "bills_order.html",
        user=user.get_name(),
        row=row,
        history=history,
        last_run=last["run_id"] if last else None,
        last_run_url=run_url(last["run_id"], last_dag) if last and last_dag else None,
        last_task_url=task_url(row.get("held_by"))  # the try holding it now, if any
        or _last_task_url(last, last_dag, batch),
        done=recorded,
        done_run=done_run if done_run_state else None,
        done_run_state=done_run_state,
        requests_paused=paused,
        media_age=reader.age(row["pdf_uploaded_at"], now) if row["s_pdf_media_id"] else "",
        media_expired=media_expired,
        needs_person=_needs_person(row),
        requests=requests_,
        offered=offered(row, may),
        may_edit="edit" in may,
        action_of=action_of,
        action_url=lambda action: f"{action}?{urlencode({'id': order_id})}",
        run_link=airflow.run_link,
        run_url=run_url,
    )
