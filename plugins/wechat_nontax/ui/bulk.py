"""Actions on many orders at once: `/bills/many` (GET: the confirmation page listing every
order picked and what will happen to it; POST: the action) and `/bills/action?id=N` (the
action as recorded: who, when, which orders, what happened to each).

Orders are picked on the overview (check boxes) or as "all that need a person for this
reason"; at most `BULK_MAX` at a time. Make due again, or make due again and issue now (one
run of the issuing DAG for all of them); the same rules as on one order, per order
(`wechat_nontax.store.actions`)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import requests
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from wechat_nontax.settings import INSERTBILL_DAG_ID
from wechat_nontax.store.actions import HELD, BillActions
from wechat_nontax.ui.airflow_client import post_run, refusal_detail
from wechat_nontax.ui.database import order_db
from wechat_nontax.ui.guards import CanEdit, CanRead, SameOrigin, allowed
from wechat_nontax.ui.i18n import N_
from wechat_nontax.ui.pages import message_page, render
from wechat_nontax.ui.view import (
    ACTIONS,
    BULK_MAX,
    PICKED_BY_HAND,
    PICKED_BY_REASON,
    bad_input,
    picked_reason,
    printable,
    run_url,
)

router = APIRouter()

# The actions on many: make due again, or that and a run now (the single actions' rules: make
# due again's, per order).
TITLES = {"reset": N_("Make due again"), "issue": N_("Make due again and issue now")}
KINDS = tuple(TITLES)


def _why_not(row: dict[str, Any]) -> str | None:
    return ACTIONS["reset"].why_not(row) or (HELD if row.get("held") else None)


def _kind(action: str) -> str:
    if action not in KINDS:
        raise bad_input("action: reset or issue")
    return action


def _ids(values: list[str]) -> list[str]:
    ids = sorted({printable(v.strip(), "order id") for v in values} - {""})
    if len(ids) > BULK_MAX:
        raise bad_input(f"at most {BULK_MAX:,} orders at a time")
    return ids


@router.get("/many", response_class=HTMLResponse, dependencies=[CanEdit])
def many_confirm(
    request: Request,
    user: GetUserDep,
    action: Annotated[str, Query(max_length=16)] = "reset",
    order_ids: Annotated[list[str], Query(alias="id", max_length=BULK_MAX)] = [],  # noqa: B006
    reason: Annotated[str | None, Query(max_length=2000)] = None,
) -> HTMLResponse:
    kind = _kind(action)
    more = False
    with order_db() as (_, conn):
        if reason is not None:
            found = BillActions(conn).red_orders_of_reason(
                printable(reason, "reason"), BULK_MAX + 1
            )
            ids, more = found[:BULK_MAX], len(found) > BULK_MAX
            picked = f"{PICKED_BY_REASON}{reason}"
        else:
            ids = _ids(order_ids)
            picked = PICKED_BY_HAND
        rows = BillActions(conn).facts(ids)
    for row in rows:
        row["why_not"] = _why_not(row)
    may = allowed(user)
    return render(
        request, "bills_many.html", user=user.get_name(), kind=kind, rows=rows, reason=reason,
        more=more, picked=picked, fit=sum(r["why_not"] is None for r in rows),
        orders="\n".join(r["order_id"] for r in rows), bulk_max=BULK_MAX,
        may_issue="trigger" in may, title=TITLES[kind],
    )  # fmt: skip


@router.post("/many", response_class=HTMLResponse, dependencies=[SameOrigin, CanEdit])
def many(
    request: Request,
    user: GetUserDep,
    action: Annotated[str, Form(max_length=16)],
    orders: Annotated[str, Form(max_length=BULK_MAX * 65)],
    picked: Annotated[str, Form(max_length=2100)],
) -> Any:
    kind = _kind(action)
    name = user.get_name()
    if kind == "issue" and "trigger" not in allowed(user):
        return message_page(request, status.HTTP_403_FORBIDDEN, "Forbidden", user=name)
    # One order a line; a browser sends a hidden field's line breaks as CR LF.
    ids = _ids(orders.splitlines())
    if not ids:
        raise bad_input("no order picked")
    with order_db() as (_, conn):
        actions = BillActions(conn)
        result = actions.make_due(
            ids, kind=kind, by=name, picked=printable(picked, "picked"),
            why_not=ACTIONS["reset"].why_not,
            note=f"made due again by {name} (Airflow user) in the Bills page, action #{{action}}",
        )  # fmt: skip
        if kind == "issue" and result.done:
            try:
                response = post_run(
                    request, INSERTBILL_DAG_ID, {"order_ids": result.done},
                    f"issue now: {len(result.done)} orders, by {name} in the Bills page "
                    f"(action #{result.action_id})",
                )  # fmt: skip
            except requests.RequestException:
                response = None
            if response is not None and response.status_code in (200, 201):
                actions.record_run(
                    result.action_id, response.json()["dag_run_id"], result.done,
                    f"issue now by {name} (Airflow user) in the Bills page, "
                    f"action #{result.action_id}",
                )  # fmt: skip
            else:
                detail = refusal_detail(response) if response is not None else None
                return RedirectResponse(
                    f"action?{urlencode({'id': result.action_id, 'no_run': detail or '-'})}",
                    status_code=status.HTTP_303_SEE_OTHER,
                )
    return RedirectResponse(
        f"action?{urlencode({'id': result.action_id})}", status_code=status.HTTP_303_SEE_OTHER
    )


@router.get("/action", response_class=HTMLResponse, dependencies=[CanRead])
def action_page(
    request: Request,
    user: GetUserDep,
    action_id: Annotated[int, Query(alias="id", ge=1, le=2**62)],
    no_run: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    with order_db() as (_, conn):
        record = BillActions(conn).get(action_id)
    if record is None:
        return message_page(
            request, status.HTTP_404_NOT_FOUND, "no such action", user=user.get_name()
        )
    done = [o for o in record.orders if o[1] == "done"]
    refused = [o for o in record.orders if o[1] == "refused"]
    return render(
        request, "bills_action.html", user=user.get_name(), record=record, done=done,
        refused=refused, no_run=printable(no_run, "no_run"), title=TITLES[record.kind],
        picked_reason=picked_reason(record.picked),
        run_link=run_url(record.run_id) if record.run_id else None,
        order_url=lambda order_id: f"order?{urlencode({'id': order_id})}",
    )  # fmt: skip
