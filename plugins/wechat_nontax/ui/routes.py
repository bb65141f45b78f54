"""The Bills view: a page of our own inside the Airflow UI for the person on duty.

Mounted by `wechat_nontax.ui.plugin` at `/bills` on the api-server and opened from
Browse -> Bills. Server-rendered HTML (Jinja2, autoescaped), readable without JavaScript:
- `/bills/`: counts by status and the orders that need a person (newest change first), with
  filters by status and date and a search by order_id, billing_no or billing_code; pages go on
  from the last order shown (`after`) or back from the first (`before`), so a deep page costs
  what the first does (each query's plan: bench/bills_view.py);
- `/bills/order?id=...`: one order, its whole history, links to the Airflow run and task
  instance that last touched it, its media id's age;
- `/bills/reset`, `/bills/issue`, `/bills/refuse`, `/bills/void` (`?id=...`): a confirmation page
  (GET), the action (POST). Refuse and void only record a request (`requests.contract`); the DAG
  `nontax_requests` carries it out, and the POST asks Airflow for a run of it at once.

Airflow does not protect a plugin's routes: every route here checks the caller with Airflow's
own auth manager (the UI's JWT cookie or a Bearer token). Reading needs read access to the DAG,
every action (its confirmation page too) edit access; a POST must come from this very origin.
The order database is the Airflow Connection `nontax_orders_db`, opened per request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
import requests
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse

from wechat_nontax.issuing.validation import MAX_REFUSAL_REASON_CHARS
from wechat_nontax.requests.contract import (
    RequestKind,
    RequestStatus,
    request_action,
)
from wechat_nontax.requests.store import RequestStore
from wechat_nontax.settings import (
    INSERTBILL_DAG_ID,
    ISSUE_TASK_ID,
    MEDIA_ID_LIFETIME_S,
    REQUESTS_DAG_ID,
    REQUESTS_TASK_ID,
)
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.reads import BillsPage
from wechat_nontax.ui.view import (
    ACTIONS,
    ATTENTION,
    ISSUING_DAGS,
    MARK_MAX,
    PAGE_SIZE,
    STATUS_CHOICES,
    _day,
    _needs_person,
    age,
    beijing,
    dags_of_step,
    mark_of,
    page_mark,
    printable,
    run_url,
    statuses_of,
    task_instance_url,
    task_url,
    what_was_done,
    when,
    yuan,
)
from wechat_nontax.wechat.statuses import Status

# Where issue-now asks Airflow's REST API for the run: this api-server, never an address taken
# from the request (the caller's token goes with the call).
API_URL_ENV = "NONTAX_BILLS_API_URL"


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


_templates.filters["yuan"] = yuan


_templates.filters["when"] = when


def render(name: str, code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(dag_id=INSERTBILL_DAG_ID, **context)
    return HTMLResponse(
        html,
        status_code=code,
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            # Only the Airflow UI (same origin) may frame the page.
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'none'; frame-ancestors 'self'; form-action 'self'",
        },
    )


def _public_host() -> str | None:
    """The host of `[api] base_url` (a reverse proxy may hand the api-server another Host)."""
    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback=None)
    return urlsplit(base_url).netloc if base_url else None


def same_origin(request: Request) -> None:
    """A POST must come from a page of this server: its Origin (or, without one, its Referer)
    names the host the request was sent to. Cross-site form posts also carry no cookie
    (SameSite=Lax); this refuses them before anything else happens."""
    source = request.headers.get("origin") or request.headers.get("referer")
    hosts = {request.headers.get("host"), _public_host()} - {None, ""}
    if not source or source == "null" or urlsplit(source).netloc not in hosts:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "refused: the request comes from another origin"
        )


CanRead = Depends(requires_access_dag("GET", param_dag_id=INSERTBILL_DAG_ID))


CanEdit = Depends(requires_access_dag("PUT", param_dag_id=INSERTBILL_DAG_ID))


CanTrigger = Depends(
    requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=INSERTBILL_DAG_ID)
)


def caller_token(request: Request) -> str | None:
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


def api_url() -> str:
    if configured := os.environ.get(API_URL_ENV):
        return configured.rstrip("/")
    from airflow.configuration import conf

    host = conf.get("api", "host", fallback="127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 (comparing)
    return f"http://{host}:{conf.getint('api', 'port', fallback=8080)}"


@contextlib.contextmanager
def order_db() -> Iterator[tuple[OrderStore, Any]]:
    """The order store and its connection (for the requests' statements), one per request."""
    from wechat_nontax.store.connection import connect

    conn = connect(application_name="nontax_bills_view")
    store = OrderStore(conn, write_retry_s=0)
    try:
        yield store, conn
    finally:
        store.close()


@contextlib.contextmanager
def order_store() -> Iterator[OrderStore]:
    with order_db() as (store, _):
        yield store


def _order_or_404(store: OrderStore, order_id: str) -> dict[str, Any]:
    row = store.get_row(printable(order_id, "order id"))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such order")
    return row


def _confirm(user: str, order_id: str, action: str) -> HTMLResponse:
    """The confirmation page of an action (a GET: it changes nothing)."""
    with order_store() as store:
        row = _order_or_404(store, order_id)
    what = ACTIONS[action]
    return render(
        "bills_confirm.html",
        user=user,
        row=row,
        action=action,
        title=what.title,
        explain=what.explain,
        reason_for=what.reason_for,
        reason_max=MAX_REFUSAL_REASON_CHARS,
        why_not=what.why_not(row),
        back=f"order?{urlencode({'id': order_id})}",
    )


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


_REFUSED_TITLES = {
    status.HTTP_400_BAD_REQUEST: "Bad request",
    status.HTTP_401_UNAUTHORIZED: "Not signed in",
    status.HTTP_403_FORBIDDEN: "Not allowed",
    status.HTTP_404_NOT_FOUND: "Not found",
}


def _refusal_page(code: int, message: str, headers: dict[str, str] | None) -> HTMLResponse:
    page = render(
        "bills_message.html", code=code, user=None, title=_REFUSED_TITLES.get(code, "Refused"),
        message=message, back="./",
    )  # fmt: skip
    page.headers.update(headers or {})
    return page


def create_app() -> FastAPI:
    app = FastAPI(
        title="Bills",
        description="The orders that need a person, one order's history, and actions on it.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(HTTPException)
    def refused(request: Request, exc: HTTPException) -> HTMLResponse:
        """Every refusal as a page saying what was wrong (a 400 for bad input)."""
        return _refusal_page(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        problems = "; ".join(
            f"{error['loc'][-1]}: {error['msg']}" for error in exc.errors() if error.get("loc")
        )
        return _refusal_page(status.HTTP_400_BAD_REQUEST, problems or "bad input", None)

    @app.get("/", response_class=HTMLResponse, dependencies=[CanRead])
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
        statuses = statuses_of(status_)
        # Until the end of the day named.
        since_at, until_at = _day(since, "since"), _day(until, "until", days_after=1)
        search = (printable(q, "q") or "").strip() or None
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

        return render(
            "bills_overview.html",
            user=user.get_name(),
            counts=[(str(s), counts.get(str(s), 0)) for s in Status],
            total=sum(counts.values()),
            rows=rows,
            filters=filters,
            status_choices=STATUS_CHOICES,
            page=page,
            first_url=link() if (after_mark or before_mark) else None,
            prev_url=link(before=mark_of(rows[0]), page=str(max(1, page - 1)))
            if rows and newer
            else None,
            next_url=link(after=mark_of(rows[-1]), page=str(page + 1)) if rows and older else None,
            order_url=lambda order_id: f"order?{urlencode({'id': order_id})}",
            run_link=Airflow(request).run_link,
        )

    @app.get("/order", response_class=HTMLResponse, dependencies=[CanRead])
    def order(
        request: Request,
        user: GetUserDep,
        order_id: Annotated[str, Query(alias="id", max_length=64)],
        done: Annotated[str | None, Query(max_length=16)] = None,
        run: Annotated[str | None, Query(max_length=250)] = None,
        request_id: Annotated[int | None, Query(alias="request", ge=1)] = None,
    ) -> HTMLResponse:
        with order_db() as (store, conn):
            row = _order_or_404(store, order_id)
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
        now = datetime.now(UTC)
        media_age = age(row["pdf_uploaded_at"], now) if row["s_pdf_media_id"] else ""
        media_expired = bool(
            row["s_pdf_media_id"]
            and row["pdf_uploaded_at"]
            and now - row["pdf_uploaded_at"] > timedelta(seconds=MEDIA_ID_LIFETIME_S)
        )
        pending = any(r.status == RequestStatus.PENDING for r in requests_)
        paused = airflow.paused(REQUESTS_DAG_ID) if pending else None
        recorded = what_was_done(
            printable(done, "done"), history, requests_, request_id, printable(run, "run")
        )
        # The run that carries it out, as Airflow has it (the URL only names it).
        done_run = recorded.run_id if recorded else None
        done_run_state = (airflow.run(recorded.dag_id, done_run) or {}).get("state") if (
            recorded and done_run
        ) else None  # fmt: skip
        return render(
            "bills_order.html",
            user=user.get_name(),
            row=row,
            history=history,
            last_run=last["run_id"] if last else None,
            last_run_url=run_url(last["run_id"], last_dag) if last and last_dag else None,
            last_task_url=task_url(row.get("held_by"))  # the try holding it now, if any
            or _last_task_url(last, last_dag, batch),
            billing_time=beijing(row["billing_time"]),
            done=recorded,
            done_run=done_run if done_run_state else None,
            done_run_state=done_run_state,
            requests_paused=paused,
            media_age=media_age,
            media_expired=media_expired,
            needs_person=_needs_person(row),
            requests=requests_,
            offered={name: a for name, a in ACTIONS.items() if a.why_not(row) is None},
            action_url=lambda action: f"{action}?{urlencode({'id': order_id})}",
            run_link=airflow.run_link,
            run_url=run_url,
        )

    # -- actions: GET shows the confirmation, POST acts -----------------------------------------

    @app.get("/reset", response_class=HTMLResponse, dependencies=[CanEdit])
    def reset_confirm(
        user: GetUserDep, order_id: Annotated[str, Query(alias="id", max_length=64)]
    ) -> HTMLResponse:
        return _confirm(user.get_name(), order_id, "reset")

    @app.post("/reset", response_class=HTMLResponse, dependencies=[Depends(same_origin), CanEdit])
    def reset(user: GetUserDep, order_id: Annotated[str, Form(max_length=64)]) -> Any:
        name = user.get_name()
        with order_store() as store:
            _order_or_404(store, order_id)
            done = store.reset(order_id, note=f"reset by {name} (Airflow user) in the Bills view")
        if not done:
            return render(
                "bills_message.html",
                code=status.HTTP_409_CONFLICT,
                user=name,
                title="Not reset",
                message="The order is finished, or a task try holds it right now: nothing changed.",
                back=f"order?{urlencode({'id': order_id})}",
            )
        return RedirectResponse(
            f"order?{urlencode({'id': order_id, 'done': 'reset'})}",
            status_code=status.HTTP_303_SEE_OTHER,
        )

    @app.get("/issue", response_class=HTMLResponse, dependencies=[CanEdit, CanTrigger])
    def issue_confirm(
        user: GetUserDep, order_id: Annotated[str, Query(alias="id", max_length=64)]
    ) -> HTMLResponse:
        return _confirm(user.get_name(), order_id, "issue")

    @app.post(
        "/issue",
        response_class=HTMLResponse,
        dependencies=[Depends(same_origin), CanEdit, CanTrigger],
    )
    def issue(
        request: Request, user: GetUserDep, order_id: Annotated[str, Form(max_length=64)]
    ) -> Any:
        name = user.get_name()
        with order_store() as store:
            why_not = ACTIONS["issue"].why_not(_order_or_404(store, order_id))
            if why_not is not None:  # the confirmation page said so; the POST checks again
                return render(
                    "bills_message.html", code=status.HTTP_409_CONFLICT, user=name,
                    title="No run triggered", message=f"Nothing asked: {why_not}",
                    back=f"order?{urlencode({'id': order_id})}",
                )  # fmt: skip
            response = _post_run(
                request, INSERTBILL_DAG_ID, {"order_ids": [order_id]},
                f"issue now: {order_id}, by {name} in the Bills view",
            )  # fmt: skip
            if response.status_code not in (200, 201):
                detail = (
                    response.json().get("detail")
                    if response.headers.get("content-type", "").startswith("application/json")
                    else None
                )
                return render(
                    "bills_message.html",
                    code=status.HTTP_502_BAD_GATEWAY
                    if response.status_code >= 500
                    else response.status_code,
                    user=name,
                    title="No run triggered",
                    message=f"Airflow answered {response.status_code}: {detail or 'see its log'}",
                    back=f"order?{urlencode({'id': order_id})}",
                )
            run_id = response.json()["dag_run_id"]
            store.record_operator_action(
                order_id,
                outcome="issue_now",
                run_id=run_id,
                note=f"issue now by {name} (Airflow user) in the Bills view",
            )
        return RedirectResponse(
            f"order?{urlencode({'id': order_id, 'done': 'issue', 'run': run_id})}",
            status_code=status.HTTP_303_SEE_OTHER,
        )

    # -- refuse and void: a request recorded, then a run of nontax_requests asked for ------------

    def request_post(
        request: Request, user: GetUserDep, order_id: str, reason: str, kind: RequestKind
    ) -> Any:
        name = user.get_name()
        back = f"order?{urlencode({'id': order_id})}"
        with order_db() as (store, conn):
            _order_or_404(store, order_id)
            answer = request_action(
                conn, order_id, kind, reason, f"{name} (Airflow user, Bills view)"
            )
        if not answer.accepted:
            return render(
                "bills_message.html",
                code=status.HTTP_409_CONFLICT,
                user=name,
                title="Not asked",
                message=f"Nothing recorded: {answer.reason}",
                back=back,
            )
        done = {"id": order_id, "done": kind, "request": str(answer.request_id)}
        # Carried out now rather than at the next scheduled run, if the caller may trigger it;
        # never while the DAG is paused (the run would only sit queued: the order page says
        # the DAG is paused instead).
        if Airflow(request).paused(REQUESTS_DAG_ID) is False:
            note = f"{kind} {order_id}, by {name} in the Bills view"
            if run_id := _trigger(request, REQUESTS_DAG_ID, {}, note):
                done["run"] = run_id
        return RedirectResponse(f"order?{urlencode(done)}", status_code=status.HTTP_303_SEE_OTHER)

    def add_request_routes(kind: RequestKind) -> None:
        # The kind is the route's, closed over: never a parameter a caller could set.
        def confirm(
            user: GetUserDep, order_id: Annotated[str, Query(alias="id", max_length=64)]
        ) -> HTMLResponse:
            return _confirm(user.get_name(), order_id, kind)

        def post(
            request: Request,
            user: GetUserDep,
            order_id: Annotated[str, Form(max_length=64)],
            reason: Annotated[str, Form(max_length=4 * MAX_REFUSAL_REASON_CHARS)],
        ) -> Any:
            return request_post(request, user, order_id, reason, kind)

        app.add_api_route(
            f"/{kind}", confirm, methods=["GET"], response_class=HTMLResponse,
            dependencies=[CanEdit],
        )  # fmt: skip
        app.add_api_route(
            f"/{kind}", post, methods=["POST"], response_class=HTMLResponse,
            dependencies=[Depends(same_origin), CanEdit],
        )  # fmt: skip

    for kind in RequestKind:
        add_request_routes(kind)

    return app


class Airflow:
    """Airflow's REST API asked with the caller's own token (the caller's permissions decide),
    once per question within a request."""

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


def _post_run(request: Request, dag_id: str, conf: dict[str, Any], note: str) -> requests.Response:
    """Ask Airflow's REST API for a manual run of `dag_id` with the caller's own token (so the
    caller's permissions decide); Airflow's answer."""
    return requests.post(
        f"{api_url()}/api/v2/dags/{dag_id}/dagRuns",
        json={"logical_date": None, "conf": conf, "note": note},
        headers={"Authorization": f"Bearer {caller_token(request)}"},
        timeout=30,
    )


def _trigger(request: Request, dag_id: str, conf: dict[str, Any], note: str) -> str | None:
    """`_post_run`'s run id, or None when Airflow did not create one."""
    try:
        response = _post_run(request, dag_id, conf, note)
    except requests.RequestException:
        return None
    return response.json()["dag_run_id"] if response.status_code in (200, 201) else None
