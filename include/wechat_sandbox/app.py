"""The sandbox's ASGI application: WeChat endpoints plus the admin API under /_sandbox/.

Handlers stay light on purpose (hundreds of calls per second on two cores): routes are plain
Starlette routes taking the Request, bodies are parsed with `json.loads`, answers are pre-encoded
bytes, all state lives in memory in this one process, and every wait is an `asyncio.sleep`.

Like WeChat, the API answers HTTP 200 with `{errcode, errmsg}` for errors, and never a 500 for a
bad request: malformed JSON, missing fields and wrong types give 47001; unexpected exceptions
give errcode -1.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from wechat_sandbox import errors as E
from wechat_sandbox.auth_links import AuthLinks
from wechat_sandbox.config import ADMIN_TOKEN_HEADER, Settings, SettingsError
from wechat_sandbox.faults import FaultRuleError, FaultSet
from wechat_sandbox.state import AUTH_STATUSES, REIMBURSE_STATUSES, SandboxState

log = logging.getLogger("wechat_sandbox")

_INVALID = object()  # a body that is not JSON
_LOST_ANSWER_LOG = "without completing response"

FIVE_XX_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json(payload: Any, status: int = 200) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json")


def _loads(body: bytes) -> Any:
    if not body:
        return _INVALID
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _INVALID


class LostAnswerResponse(Response):
    """Sends the status line and headers (Content-Length of the full body), then stops.

    uvicorn then closes the connection ("ASGI callable returned without completing response"),
    so the client sees the headers and a body cut short: with `requests` the call raises
    `requests.exceptions.ChunkedEncodingError` (or `ConnectionError`), never a normal answer.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )


class _QuietLostAnswers(logging.Filter):
    """uvicorn logs every dropped answer as an error; for a lost_answer fault that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _LOST_ANSWER_LOG not in record.getMessage()


def _install_log_filter() -> None:
    # python-multipart warns about every malformed upload: that is bad input, answered 47001.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietLostAnswers) for f in logger.filters):
        logger.addFilter(_QuietLostAnswers())


class _AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _admin_json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    value = _loads(body)
    if value is _INVALID:
        raise _AdminError(400, "the body is not valid JSON")
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    """A fresh sandbox application with its own state, from `settings` (default: environment)."""
    settings = settings if settings is not None else Settings.from_env()
    state = SandboxState(settings)
    links = AuthLinks(state.clock)
    faults = FaultSet()
    _install_log_filter()

    app = FastAPI(
        title="WeChat API sandbox",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.sandbox = state
    app.state.auth_links = links
    app.state.faults = faults

    # ------------------------------------------------------------ the call pipeline
    async def serve(endpoint: str, request: Request, handler: Any, *, json_body: bool) -> Response:
        """Count the call, apply fault rules, run the handler, turn any surprise into -1."""
        state.count_call(endpoint)
        arrived = state.clock()
        order_id: str | None = None
        payload: Any = None
        try:
            body: Any = None
            if json_body:
                body = _loads(await request.body())
                if isinstance(body, dict):
                    candidate = body.get("order_id")
                    if endpoint == "updatestatus":  # names its bill by code: the order behind it
                        code = body.get("code")
                        candidate = state.order_for_code(code) if isinstance(code, str) else None
                    if isinstance(candidate, str) and candidate:
                        order_id = candidate
            if endpoint == "insertbill" and order_id is not None:
                state.note_insert_attempt(order_id)
            plan = faults.match(endpoint, order_id)
            if plan is None:
                payload = await handler(request, body)
                response = _json(payload)
            else:
                state.faulted_calls += 1
                if plan.latency_s:
                    await asyncio.sleep(plan.latency_s)
                if plan.token_expire:
                    state.expire_tokens()
                rule = plan.answer
                if rule is None:
                    payload = await handler(request, body)
                    response = _json(payload)
                elif rule.kind == "errcode":
                    payload = E.error(rule.errcode if rule.errcode is not None else -1, rule.errmsg)
                    response = _json(payload)
                else:
                    payload = None
                    reason = FIVE_XX_REASONS.get(rule.status, "Server Error")
                    html = f"<html><body><h1>{rule.status} {reason}</h1></body></html>"
                    response = Response(html, status_code=rule.status, media_type="text/html")
                if plan.hold_s:
                    await asyncio.sleep(plan.hold_s)
                if plan.lost:
                    state.lost_answers += 1
                    response = LostAnswerResponse(
                        response.body,
                        status_code=response.status_code,
                        media_type=response.media_type,
                    )
            errcode = payload.get("errcode") if isinstance(payload, dict) else None
            if order_id is not None:
                if endpoint == "insertbill":
                    state.note_insert_answer(order_id, errcode)
                state.note_answer(endpoint, order_id, errcode)
            status = payload.get("invoice_status") if isinstance(payload, dict) else None
            state.log_call(arrived, endpoint, order_id, errcode, status)
            return response
        except ClientDisconnect:
            state.log_call(arrived, endpoint, order_id, None)
            return Response(status_code=200)
        except Exception:
            log.exception("unexpected error while serving %s", endpoint)
            return _json(E.error(E.SYSTEM_BUSY))

    def token_of(request: Request) -> Any:
        return state.check_token(request.query_params.get("access_token"))

    # ------------------------------------------------------------ WeChat endpoints
    async def h_stable_token(request: Request, body: Any) -> dict[str, Any]:
        if body is _INVALID:
            return E.error(E.DATA_FORMAT)
        return state.stable_token(body)

    async def h_token(request: Request, body: Any) -> dict[str, Any]:
        q = request.query_params
        return state.classic_token(q.get("grant_type"), q.get("appid"), q.get("secret"))

    async def h_setpdf(request: Request, body: Any) -> dict[str, Any]:
        token, problem = token_of(request)
        if problem is not None:
            return problem
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return E.error(E.DATA_FORMAT)
        try:
            form = await request.form()
        except (StarletteHTTPException, MultiPartException, ValueError, KeyError):
            return E.error(E.DATA_FORMAT)
        try:
            upload = form.get("pdf")
            if not isinstance(upload, UploadFile):
                return E.error(E.DATA_FORMAT)
            data = await upload.read()
            return state.upload_pdf(token, data, upload.filename)
        finally:
            await form.close()

    async def h_getpdf(request: Request, body: Any) -> dict[str, Any]:
        token, problem = token_of(request)
        if problem is not None:
            return problem
        return state.get_pdf(token, None if body is _INVALID else body, str(request.base_url))

    def with_token(method: Any) -> Any:
        """A handler for a JSON call: the token checked, then `method(token, body or None)`."""

        async def handler(request: Request, body: Any) -> dict[str, Any]:
            token, problem = token_of(request)
            if problem is not None:
                return problem
            return method(token, None if body is _INVALID else body)

        return handler

    async def h_getauthdata(request: Request, body: Any) -> dict[str, Any]:
        _token, problem = token_of(request)
        if problem is not None:
            return problem
        return state.auth_data(None if body is _INVALID else body)

    async def h_getticket(request: Request, body: Any) -> dict[str, Any]:
        token, problem = token_of(request)
        if problem is not None:
            return problem
        return links.get_ticket(token.appid, request.query_params.get("type"))

    async def h_getbillauthurl(request: Request, body: Any) -> dict[str, Any]:
        token, problem = token_of(request)
        if problem is not None:
            return problem
        return links.auth_url(token.appid, None if body is _INVALID else body)

    def wechat(endpoint: str, handler: Any, *, json_body: bool = True) -> Any:
        async def route(request: Request) -> Response:
            return await serve(endpoint, request, handler, json_body=json_body)

        route.__name__ = f"wechat_{endpoint}"
        return route

    app.add_route("/cgi-bin/stable_token", wechat("stable_token", h_stable_token), ["POST"])
    app.add_route("/cgi-bin/token", wechat("token", h_token, json_body=False), ["GET"])
    app.add_route(
        "/card/invoice/platform/setpdf", wechat("setpdf", h_setpdf, json_body=False), ["POST"]
    )
    app.add_route("/card/invoice/platform/getpdf", wechat("getpdf", h_getpdf), ["POST"])
    app.add_route(
        "/nontax/insertbill", wechat("insertbill", with_token(state.insert_bill)), ["POST"]
    )
    app.add_route(
        "/cgi-bin/ticket/getticket", wechat("getticket", h_getticket, json_body=False), ["GET"]
    )
    app.add_route("/nontax/getbillauthurl", wechat("getbillauthurl", h_getbillauthurl), ["POST"])
    app.add_route("/card/invoice/getauthdata", wechat("getauthdata", h_getauthdata), ["POST"])
    app.add_route(
        "/card/invoice/rejectinsert",
        wechat("rejectinsert", with_token(state.reject_insert)),
        ["POST"],
    )
    app.add_route(
        "/card/invoice/platform/updatestatus",
        wechat("updatestatus", with_token(state.update_status)),
        ["POST"],
    )

    # ------------------------------------------------------------ admin API
    # Every admin route wants the admin token (it can fake bills, read PDFs, switch faults on).
    # Without one configured the admin API is closed; `/_sandbox/health` alone is open.
    admin_token = (settings.admin_token or "").encode()

    def admitted(request: Request) -> bool:
        given = request.headers.get(ADMIN_TOKEN_HEADER, "").encode()
        return bool(admin_token) and hmac.compare_digest(given, admin_token)

    def admin(handler: Any, *, open_route: bool = False) -> Any:
        async def route(request: Request) -> Response:
            if not open_route and not admitted(request):
                return _json({"error": f"the admin API wants the {ADMIN_TOKEN_HEADER} header"}, 401)
            try:
                result = await handler(request)
            except _AdminError as exc:
                return _json({"error": exc.message}, status=exc.status)
            except (SettingsError, FaultRuleError, ValueError) as exc:
                return _json({"error": str(exc)}, status=400)
            except Exception:
                log.exception("unexpected error in admin route %s", request.url.path)
                return _json(E.error(E.SYSTEM_BUSY))
            return result if isinstance(result, Response) else _json(result)

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
        return _json({"status": "ok"})

    p = "/_sandbox"
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

    # ------------------------------------------------------------ error answers
    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 400)
        if not request.url.path.startswith(p):
            state.count_call("unknown")
        detail = getattr(exc, "detail", "") or "error"
        return _json({"errcode": status, "errmsg": f"{detail}"}, status=status)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc)
        return _json(E.error(E.SYSTEM_BUSY))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    return app
