"""The actions on one order: `/bills/reset`, `/bills/issue`, `/bills/refuse`, `/bills/void`
(`?id=...`): a confirmation page (GET, it changes nothing), then the action (POST from this
origin). Refuse and void only record a request (`requests.contract`); the DAG
`nontax_requests` carries it out, and the POST asks Airflow for a run of it at once."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import requests
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from wechat_nontax.requests.contract import RequestKind, request_action
from wechat_nontax.requests.store import RequestStore
from wechat_nontax.settings import INSERTBILL_DAG_ID, REQUESTS_DAG_ID
from wechat_nontax.ui.airflow_client import Airflow, post_run, refusal_detail, trigger
from wechat_nontax.ui.database import order_db, order_or_404
from wechat_nontax.ui.guards import CanEdit, CanTrigger, SameOrigin
from wechat_nontax.ui.i18n import N_
from wechat_nontax.ui.order_page import with_refusal
from wechat_nontax.ui.pages import message_page, reader_of, render
from wechat_nontax.ui.view import ACTIONS
from wechat_nontax.wechat.validation import MAX_REFUSAL_REASON_CHARS

router = APIRouter()

OrderId = Annotated[str, Query(alias="id", max_length=64)]
OrderIdForm = Annotated[str, Form(max_length=64)]


def _order_url(order_id: str, **done: str) -> str:
    return f"order?{urlencode({'id': order_id, **done})}"


def _checked_row(conn: Any, store: Any, order_id: str) -> dict[str, Any]:
    """The order's row with what the rules need to know beyond it (a refusal asked for)."""
    row = order_or_404(store, order_id)
    return with_refusal(row, RequestStore(conn).of_order(order_id))


def _confirm(request: Request, user: str, order_id: str, action: str) -> HTMLResponse:
    """The confirmation page of an action (a GET: it changes nothing)."""
    with order_db() as (store, conn):
        row = _checked_row(conn, store, order_id)
    what = ACTIONS[action]
    return render(
        request, "bills_confirm.html", user=user, row=row, action=action, what=what,
        reason_max=MAX_REFUSAL_REASON_CHARS, why_not=what.why_not(row), back=_order_url(order_id),
    )  # fmt: skip


def _not_done(request: Request, user: str, order_id: str, title: str, why: str) -> HTMLResponse:
    return message_page(
        request, status.HTTP_409_CONFLICT, why, user=user, title=title, back=_order_url(order_id)
    )


@router.get("/reset", response_class=HTMLResponse, dependencies=[CanEdit])
def reset_confirm(request: Request, user: GetUserDep, order_id: OrderId) -> HTMLResponse:
    return _confirm(request, user.get_name(), order_id, "reset")


@router.post("/reset", response_class=HTMLResponse, dependencies=[SameOrigin, CanEdit])
def reset(request: Request, user: GetUserDep, order_id: OrderIdForm) -> Any:
    name = user.get_name()
    with order_db() as (store, conn):
        why = ACTIONS["reset"].why_not(_checked_row(conn, store, order_id))
        done = why is None and store.reset(
            order_id, note=f"made due again by {name} (Airflow user) in the Bills page"
        )
    if not done:
        why = why or N_("The order is finished, or a task try holds it right now: nothing changed.")
        return _not_done(request, name, order_id, N_("Not made due again"), why)
    return RedirectResponse(
        _order_url(order_id, done="reset"), status_code=status.HTTP_303_SEE_OTHER
    )


@router.get("/issue", response_class=HTMLResponse, dependencies=[CanEdit, CanTrigger])
def issue_confirm(request: Request, user: GetUserDep, order_id: OrderId) -> HTMLResponse:
    return _confirm(request, user.get_name(), order_id, "issue")


@router.post("/issue", response_class=HTMLResponse, dependencies=[SameOrigin, CanEdit, CanTrigger])
def issue(request: Request, user: GetUserDep, order_id: OrderIdForm) -> Any:
    name = user.get_name()
    reader = reader_of(request)
    with order_db() as (store, conn):
        why_not = ACTIONS["issue"].why_not(_checked_row(conn, store, order_id))
        if why_not is not None:  # the confirmation page said so; the POST checks again
            return _not_done(request, name, order_id, N_("No run started"), why_not)
        try:
            response = post_run(
                request, INSERTBILL_DAG_ID, {"order_ids": [order_id]},
                f"issue now: {order_id}, by {name} in the Bills page",
            )  # fmt: skip
        except requests.RequestException:
            return message_page(
                request, status.HTTP_502_BAD_GATEWAY,
                N_("Airflow's API could not be reached: no run was started."),
                user=name, title=N_("No run started"), back=_order_url(order_id),
            )  # fmt: skip
        if response.status_code not in (200, 201):
            said = reader.gettext("Airflow answered %(code)s: %(detail)s") % {
                "code": response.status_code,
                "detail": refusal_detail(response) or reader.gettext("see its log"),
            }
            code = (
                status.HTTP_502_BAD_GATEWAY if response.status_code >= 500 else response.status_code
            )
            return message_page(
                request, code, said, user=name, title=N_("No run started"),
                back=_order_url(order_id),
            )  # fmt: skip
        run_id = response.json()["dag_run_id"]
        store.record_operator_action(
            order_id, outcome="issue_now", run_id=run_id,
            note=f"issue now by {name} (Airflow user) in the Bills page",
        )  # fmt: skip
    return RedirectResponse(
        _order_url(order_id, done="issue", run=run_id), status_code=status.HTTP_303_SEE_OTHER
    )


# -- refuse and void: a request recorded, then a run of nontax_requests asked for ----------------


def _request_post(
    request: Request, user: Any, order_id: str, reason: str, kind: RequestKind
) -> Any:
    name = user.get_name()
    with order_db() as (store, conn):
        order_or_404(store, order_id)
        answer = request_action(conn, order_id, kind, reason, f"{name} (Airflow user, Bills page)")
    if not answer.accepted:
        return _not_done(request, name, order_id, N_("Not asked"), answer.reason)
    done = {"done": str(kind), "request": str(answer.request_id)}
    # Carried out now rather than at the next scheduled run, if the caller may trigger it;
    # never while the DAG is paused (the run would only sit queued: the order page says the
    # DAG is paused instead).
    if Airflow(request).paused(REQUESTS_DAG_ID) is False:
        note = f"{kind} {order_id}, by {name} in the Bills page"
        if run_id := trigger(request, REQUESTS_DAG_ID, {}, note):
            done["run"] = run_id
    return RedirectResponse(_order_url(order_id, **done), status_code=status.HTTP_303_SEE_OTHER)


def _add_request_routes(kind: RequestKind) -> None:
    # The kind is the route's, closed over: never a parameter a caller could set.
    def confirm(request: Request, user: GetUserDep, order_id: OrderId) -> HTMLResponse:
        return _confirm(request, user.get_name(), order_id, kind)

    def post(
        request: Request,
        user: GetUserDep,
        order_id: OrderIdForm,
        reason: Annotated[str, Form(max_length=4 * MAX_REFUSAL_REASON_CHARS)],
    ) -> Any:
        return _request_post(request, user, order_id, reason, kind)

    router.add_api_route(
        f"/{kind}", confirm, methods=["GET"], response_class=HTMLResponse, dependencies=[CanEdit]
    )
    router.add_api_route(
        f"/{kind}", post, methods=["POST"], response_class=HTMLResponse,
        dependencies=[SameOrigin, CanEdit],
    )  # fmt: skip


for _kind in RequestKind:
    _add_request_routes(_kind)
