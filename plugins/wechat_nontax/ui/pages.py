"""How a Bills page is made: the templates (Jinja2, autoescaped), the reader's language and
clock, the headers every page carries, and the pages that say what went wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request, status
from fastapi.responses import HTMLResponse

from wechat_nontax.settings import INSERTBILL_DAG_ID, TIMEZONE
from wechat_nontax.ui.i18n import LANG_COOKIE, N_, TZ_COOKIE, Reader, language_of, zone_of
from wechat_nontax.ui.view import yuan

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_templates.filters["yuan"] = yuan

# The page's own script (`static/bills.js`) may run; nothing inline, nothing from elsewhere.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # Only the Airflow UI (same origin) may frame the page.
    "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'self'; form-action 'self'",
}


def reader_of(request: Request) -> Reader:
    """The person's language and time zone: the Airflow UI's choices (cookies the page's
    script keeps), else the browser's language and the unit's zone."""
    return Reader(
        language_of(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")),
        zone_of(request.cookies.get(TZ_COOKIE)),
    )


def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    reader = reader_of(request)
    html = _templates.get_template(name).render(
        dag_id=INSERTBILL_DAG_ID,
        unit_zone=TIMEZONE,
        t=reader,
        _=reader.gettext,
        **context,
    )
    return HTMLResponse(html, status_code=code, headers=dict(_HEADERS))


_TITLES = {
    status.HTTP_400_BAD_REQUEST: N_("Bad request"),
    status.HTTP_401_UNAUTHORIZED: N_("Not signed in"),
    status.HTTP_403_FORBIDDEN: N_("Not allowed"),
    status.HTTP_404_NOT_FOUND: N_("Not found"),
    status.HTTP_409_CONFLICT: N_("Not done"),
    status.HTTP_500_INTERNAL_SERVER_ERROR: N_("Something went wrong"),
    status.HTTP_502_BAD_GATEWAY: N_("Airflow did not answer"),
    status.HTTP_503_SERVICE_UNAVAILABLE: N_("The order database cannot be reached"),
}

# What a person can do about each kind of refusal or failure.
_WHAT_TO_DO = {
    status.HTTP_401_UNAUTHORIZED: N_("Sign in to Airflow again, then open Bills from its menu."),
    status.HTTP_403_FORBIDDEN: N_(
        "Your Airflow account may not do this. Ask an Airflow administrator for the role, or "
        "ask a colleague who has it."
    ),
    status.HTTP_404_NOT_FOUND: N_(
        "Check the order id; search for it on the Bills page by order_id, billing_no or "
        "billing_code."
    ),
    status.HTTP_500_INTERNAL_SERVER_ERROR: N_(
        "Nothing was changed by this page. Try again in a minute; if it stays, tell the team "
        "that runs Airflow the time it happened (the api-server's log has the details)."
    ),
    status.HTTP_502_BAD_GATEWAY: N_(
        "Nothing was started. Try again in a minute; if it stays, tell the team that runs Airflow."
    ),
    status.HTTP_503_SERVICE_UNAVAILABLE: N_(
        "Nothing was read or changed. Try again in a minute; if it stays, tell the team that "
        "runs Airflow that the order database (Connection nontax_orders_db) does not answer."
    ),
}


def message_page(
    request: Request,
    code: int,
    message: str,
    *,
    user: str | None = None,
    title: str | None = None,
    back: str = "./",
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """A page that says what happened (`message`, translated where the catalogue knows it)
    and what to do about it."""
    page = render(
        request, "bills_message.html", code=code, user=user,
        title=title or _TITLES.get(code, N_("Refused")), message=message,
        what_to_do=_WHAT_TO_DO.get(code), back=back,
    )  # fmt: skip
    page.headers.update(headers or {})
    return page
