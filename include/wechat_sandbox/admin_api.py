"""The sandbox's admin API under /_sandbox/: what a test, the demo or the chaos runner reads
(state, calls, bills, tokens, media, links) and sets (authorisations, bill statuses, settings,
faults, a reset). Every route wants the admin token but `/_sandbox/health` and a media's PDF
(getpdf's link)."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from wechat_sandbox import errors as E
from wechat_sandbox.answers import INVALID, json_response, loads
from wechat_sandbox.auth_links import AuthLinks
from wechat_sandbox.authorizations import AUTH_STATUSES
from wechat_sandbox.bills import REIMBURSE_STATUSES
from wechat_sandbox.config import ADMIN_TOKEN_HEADER, SettingsError
from wechat_sandbox.faults import FaultRuleError, FaultSet
from wechat_sandbox.state import SandboxState

log = logging.getLogger("wechat_sandbox")

ADMIN_PREFIX = "/_sandbox"


class _AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _admin_json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    value = loads(body)
    if value is INVALID:
        raise _AdminError(400, "the body is not valid JSON")
    return value


def add_admin_routes(
    app: FastAPI,
    state: SandboxState,
    links: AuthLinks,
    faults: FaultSet,
    admin_token_setting: str | None,
) -> None:
    """The admin API's routes on `app`, over the sandbox's state, links and faults."""
    # Every admin route wants the admin token (it can fake bills, read PDFs, switch faults on).
    # Without one configured the admin API is closed; `/_sandbox/health` alone is open.
    admin_token = (admin_token_setting or "").encode()

    def admitted(request: Request) -> bool:
        given = request.headers.get(ADMIN_TOKEN_HEADER, "").encode()
        return bool(admin_token) and hmac.compare_digest(given, admin_token)

    def admin(handler: Any, *, open_route: bool = False) -> Any:
        async def route(request: Request) -> Response:
            if not open_route and not admitted(request):
                return json_response(
                    {"error": f"the admin API wants the {ADMIN_TOKEN_HEADER} header"}, 401
                )
            try:
                result = await handler(request)
            except _AdminError as exc:
                return json_response({"error": exc.message}, status=exc.status)
            except (SettingsError, FaultRuleError, ValueError) as exc:
                return json_response({"error": str(exc)}, status=400)
            except Exception:
                log.exception("unexpected error in admin route %s", request.url.path)
                return json_response(E.error(E.SYSTEM_BUSY))
            return result if isinstance(result, Response) else json_response(result)

        route.__name__ = f"admin_{handler.__name__}"
        return route

    async def a_state(request: Request) -> Any:
        summary = state.summary()
        summary["faults"] = faults.active()
        return summary

    async def a_calls(request: Request) -> Any:
        return state.calls_dict()

    async def a_call_log(request: Request) -> Any:
        since = request.query_params.get("since")
        try:
            start = float(since) if since is not None else None
        except ValueError:
            raise _AdminError(400, "since must be a Unix time") from None
        return {"calls": state.call_log_list(start)}

    async def a_tokens(request: Request) -> Any:
        return {"tokens": state.tokens_list()}

    async def a_bills(request: Request) -> Any:
        bills = state.bills_list()
        return {"count": len(bills), "bills": bills, "orders": state.orders_dict()}

    async def a_bill(request: Request) -> Any:
        order_id = request.path_params["order_id"]
        bill, stats = state.bill(order_id), state.order_stats(order_id)
        if bill is None and stats is None:
            raise _AdminError(404, f"no insertbill call for order {order_id!r}")
        return {"bill": bill, "order": stats}

    async def a_orders(request: Request) -> Any:
        return {"orders": state.orders_dict()}

    async def a_reset(request: Request) -> Any:
        state.reset()
        links.reset()
        faults.reset()
        return {"ok": True, "config": state.settings.to_dict()}

    async def a_links(request: Request) -> Any:
        return links.links_list()

    async def a_expire_tickets(request: Request) -> Any:
        return {"expired": links.expire_tickets()}

    async def a_get_config(request: Request) -> Any:
        return state.settings.to_dict()

    async def a_config(request: Request) -> Any:
        updates = await _admin_json(request)
        if not isinstance(updates, dict):
            raise _AdminError(400, "the body must be a JSON object of settings")
        return state.configure(updates)

    async def a_authorizations(request: Request) -> Any:
        return {"authorizations": dict(state.authorizations)}

    async def a_put_authorization(request: Request) -> Any:
        body = await _admin_json(request)
        if not isinstance(body, dict) or body.get("status") not in AUTH_STATUSES:
            raise _AdminError(400, f"body must be {{status: one of {', '.join(AUTH_STATUSES)}}}")
        return state.set_authorization(request.path_params["order_id"], body["status"])

    async def a_delete_authorization(request: Request) -> Any:
        return {"removed": state.clear_authorization(request.path_params["order_id"])}

    async def a_bulk_authorizations(request: Request) -> Any:
        body = await _admin_json(request)
        orders = body.get("orders") if isinstance(body, dict) else None
        if not isinstance(orders, dict) or not all(
            isinstance(k, str) and v in AUTH_STATUSES for k, v in orders.items()
        ):
            raise _AdminError(400, "body must be {orders: {order_id: status}}")
        for order_id, status in orders.items():
            state.set_authorization(order_id, status)
        return {"count": len(orders)}

    async def a_rejections(request: Request) -> Any:
        rejections = state.rejections_dict()
        return {"count": len(rejections), "rejections": rejections}

    async def a_statuses(request: Request) -> Any:
        return {"statuses": state.statuses_dict()}

    async def a_put_status(request: Request) -> Any:
        body = await _admin_json(request)
        wanted = body.get("reimburse_status") if isinstance(body, dict) else None
        if wanted not in REIMBURSE_STATUSES:
            raise _AdminError(
                400, f"body must be {{reimburse_status: one of {', '.join(REIMBURSE_STATUSES)}}}"
            )
        order_id = request.path_params["order_id"]
        try:
            answer = state.set_bill_status(order_id, wanted)
        except KeyError:
            raise _AdminError(404, f"no bill for order {order_id!r}") from None
        return {"errcode": answer["errcode"], "status": state.statuses_dict()[order_id]}

    async def a_order_answers(request: Request) -> Any:
        return {"answers": state.answers_for(request.path_params["order_id"])}

    async def a_expire_tokens(request: Request) -> Any:
        return {"expired": state.expire_tokens()}

    async def a_media(request: Request) -> Any:
        return {"media": state.media_list()}

    async def a_expire_media(request: Request) -> Any:
        return {"expired": state.expire_media()}

    async def a_media_pdf(request: Request) -> Any:
        # Open: it is the pdf_url getpdf hands out (WeChat's is a link anyone holding it opens),
        # named by a random 19-digit media id.
        data = state.media_pdf(request.path_params["media_id"])
        if data is None:
            raise _AdminError(404, "unknown s_media_id")
        return Response(data, media_type="application/pdf")

    async def a_faults(request: Request) -> Any:
        return {"faults": faults.list()}

    async def a_add_fault(request: Request) -> Any:
        rule = faults.add(await _admin_json(request))
        return {"id": rule.id, "rule": rule.to_dict()}

    async def a_clear_faults(request: Request) -> Any:
        return {"removed": faults.clear()}

    async def a_delete_fault(request: Request) -> Any:
        try:
            rule_id = int(request.path_params["fault_id"])
        except ValueError:
            raise _AdminError(404, "unknown fault id") from None
        if not faults.remove(rule_id):
            raise _AdminError(404, "unknown fault id")
        return {"removed": rule_id}

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    p = ADMIN_PREFIX
    app.add_route(f"{p}/health", health, ["GET"])
    for path, handler, methods in (
        (f"{p}/state", a_state, ["GET"]),
        (f"{p}/calls", a_calls, ["GET"]),
        (f"{p}/calls/log", a_call_log, ["GET"]),
        (f"{p}/tokens", a_tokens, ["GET"]),
        (f"{p}/tokens/expire", a_expire_tokens, ["POST"]),
        (f"{p}/bills", a_bills, ["GET"]),
        (f"{p}/bills/{{order_id}}", a_bill, ["GET"]),
        (f"{p}/orders", a_orders, ["GET"]),
        (f"{p}/orders/{{order_id}}/answers", a_order_answers, ["GET"]),
        (f"{p}/rejections", a_rejections, ["GET"]),
        (f"{p}/statuses", a_statuses, ["GET"]),
        (f"{p}/statuses/{{order_id}}", a_put_status, ["PUT"]),
        (f"{p}/reset", a_reset, ["POST"]),
        (f"{p}/links", a_links, ["GET"]),
        (f"{p}/tickets/expire", a_expire_tickets, ["POST"]),
        (f"{p}/config", a_get_config, ["GET"]),
        (f"{p}/config", a_config, ["POST"]),
        (f"{p}/authorizations", a_authorizations, ["GET"]),
        (f"{p}/authorizations", a_bulk_authorizations, ["POST"]),
        (f"{p}/authorizations/{{order_id}}", a_put_authorization, ["PUT"]),
        (f"{p}/authorizations/{{order_id}}", a_delete_authorization, ["DELETE"]),
        (f"{p}/media", a_media, ["GET"]),
        (f"{p}/media/expire", a_expire_media, ["POST"]),
        (f"{p}/media/{{media_id}}/pdf", a_media_pdf, ["GET"]),
        (f"{p}/faults", a_faults, ["GET"]),
        (f"{p}/faults", a_add_fault, ["POST"]),
        (f"{p}/faults", a_clear_faults, ["DELETE"]),
        (f"{p}/faults/{{fault_id}}", a_delete_fault, ["DELETE"]),
    ):
        app.add_route(path, admin(handler, open_route=handler is a_media_pdf), methods)
