"""Who may do what on the Bills page, checked with Airflow's own auth manager: Airflow does not
protect a plugin's routes. Reading needs read access to the issuing DAG, every action (its
confirmation page too) edit access, issue-now also the right to trigger it; a POST must come
from this very origin. The same questions decide which actions a page offers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, HTTPException, Request, status

from wechat_nontax.settings import INSERTBILL_DAG_ID

CanRead = Depends(requires_access_dag("GET", param_dag_id=INSERTBILL_DAG_ID))


CanEdit = Depends(requires_access_dag("PUT", param_dag_id=INSERTBILL_DAG_ID))


CanTrigger = Depends(
    requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=INSERTBILL_DAG_ID)
)


def allowed(user: Any) -> frozenset[str]:
    """What the user may do here: "edit" (every action), "trigger" (issue-now's run too); the
    same checks as CanEdit and CanTrigger, asked beforehand so a page offers only those."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    manager, details = get_auth_manager(), DagDetails(id=INSERTBILL_DAG_ID)
    may = set()
    if manager.is_authorized_dag(method="PUT", details=details, user=user):
        may.add("edit")
    if manager.is_authorized_dag(
        method="POST", access_entity=DagAccessEntity.RUN, details=details, user=user
    ):
        may.add("trigger")
    return frozenset(may)


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


SameOrigin = Depends(same_origin)


def caller_token(request: Request) -> str | None:
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)
