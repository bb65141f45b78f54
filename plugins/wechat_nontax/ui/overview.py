"""`/bills/`: counts by status and the orders that need a person (newest change first), with
filters by status and by the days of the reader's zone, and a search by order_id, billing_no
or billing_code across every status. Pages go on from the last order shown (`after`) or back
from the first (`before`), so a deep page costs what the first does (bench/bills_view.py).
Orders can be picked there for an action on many (`wechat_nontax.ui.bulk`)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from wechat_nontax.store.reads import BillsPage
from wechat_nontax.ui.airflow_client import Airflow
from wechat_nontax.ui.database import order_store
from wechat_nontax.ui.guards import CanRead, allowed
from wechat_nontax.ui.pages import reader_of, render
from wechat_nontax.ui.view import (
    ATTENTION,
    BULK_MAX,
    MARK_MAX,
    PAGE_SIZE,
    STATUS_CHOICES,
    day_start,
    mark_of,
    page_mark,
    printable,
    statuses_of,
)
from wechat_nontax.wechat.statuses import Status

router = APIRouter()


@router.get("/", response_class=HTMLResponse, dependencies=[CanRead])
def overview(
    request: Request,
    user: GetUserDep,
    status_: Annotated[str, Query(alias="status", max_length=32)] = ATTENTION,
    since: Annotated[str | None, Query(max_length=10)] = None,
    until: Annotated[str | None, Query(max_length=10)] = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=MARK_MAX)] = None,
    before: Annotated[str | None, Query(max_length=MARK_MAX)] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    reader = reader_of(request)
    search = (printable(q, "q") or "").strip() or None
    statuses = statuses_of(status_, search)
    # Until the end of the day named, both in the reader's zone.
    since_at = day_start(since, "since", reader)
    until_at = day_start(until, "until", reader, days_after=1)
    after_mark, before_mark = page_mark(after), None if after else page_mark(before)
    with order_store() as store:
        counts = store.count_by_status()
        fetched = store.bills_page(
            BillsPage(
                statuses, since=since_at, until=until_at, search=search, after=after_mark,
                before=before_mark, limit=PAGE_SIZE + 1,
            )
        )  # fmt: skip
    # One more than a page tells whether there is more beyond it.
    more = len(fetched) > PAGE_SIZE
    if before_mark:
        rows, newer, older = fetched[-PAGE_SIZE:], more, True
    else:
        rows, newer, older = fetched[:PAGE_SIZE], after_mark is not None, more
    filters = {"status": status_, "since": since or "", "until": until or "", "q": q or ""}
    kept = {k: v for k, v in filters.items() if v}

    def link(**mark: str) -> str:
        return f"?{urlencode({**kept, **mark})}"

    today, yesterday = reader.today().isoformat(), reader.yesterday().isoformat()
    # The reasons of this page's red orders, for "all with this reason".
    reasons = sorted(
        {r["reason"] for r in rows if r["reason"] and r["status"] in Status.NEEDS_ATTENTION}
    )
    return render(
        request,
        "bills_overview.html",
        user=user.get_name(),
        may=allowed(user),
        counts=[(str(s), counts.get(str(s), 0)) for s in Status],
        total=sum(counts.values()),
        rows=rows,
        filters=filters,
        searched=search is not None,
        status_choices=STATUS_CHOICES,
        page=page,
        first_url=link() if (after_mark or before_mark) else None,
        prev_url=link(before=mark_of(rows[0]), page=str(max(1, page - 1)))
        if rows and newer
        else None,
        next_url=link(after=mark_of(rows[-1]), page=str(page + 1)) if rows and older else None,
        today_url=f"?{urlencode({'status': status_, 'since': today, 'until': today})}",
        yesterday_url=f"?{urlencode({'status': status_, 'since': yesterday, 'until': yesterday})}",
        order_url=lambda order_id: f"order?{urlencode({'id': order_id})}",
        reason_url=lambda reason: f"many?{urlencode({'action': 'reset', 'reason': reason})}",
        reasons=reasons,
        bulk_max=BULK_MAX,
        run_link=Airflow(request).run_link,
        picks=Status.NEEDS_ATTENTION,
        pickable=any(r["status"] in Status.NEEDS_ATTENTION for r in rows),
    )
