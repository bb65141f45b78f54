"""The sandbox's ASGI application: the WeChat endpoints, and the admin API of admin_api.py.

Handlers stay light on purpose (hundreds of calls per second on two cores): routes are plain
Starlette routes taking the Request, bodies are parsed with `json.loads`, answers are pre-encoded
bytes, all state lives in memory in this one process, and every wait is an `asyncio.sleep`.

Like WeChat, the API answers HTTP 200 with `{errcode, errmsg}` for errors, and never a 500 for a
bad request: malformed JSON, missing fields and wrong types give 47001; unexpected exceptions
give errcode -1.
"""

from __future__ import annotations

import asyncio
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
from wechat_sandbox.admin_api import ADMIN_PREFIX, add_admin_routes
from wechat_sandbox.answers import INVALID, json_response, loads
from wechat_sandbox.auth_links import AuthLinks
from wechat_sandbox.config import Settings
from wechat_sandbox.faults import FaultSet
from wechat_sandbox.state import SandboxState

log = logging.getLogger("wechat_sandbox")

_LOST_ANSWER_LOG = "without completing response"

FIVE_XX_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


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
                body = loads(await request.body())
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
                response = json_response(payload)
            else:
                state.faulted_calls += 1
                if plan.latency_s:
                    await asyncio.sleep(plan.latency_s)
                if plan.token_expire:
                    state.expire_tokens()
                rule = plan.answer
                if rule is None:
                    payload = await handler(request, body)
                    response = json_response(payload)
                elif rule.kind == "errcode":
                    payload = E.error(rule.errcode if rule.errcode is not None else -1, rule.errmsg)
                    response = json_response(payload)
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
            return json_response(E.error(E.SYSTEM_BUSY))

    def token_of(request: Request) -> Any:
        return state.check_token(request.query_params.get("access_token"))

    # ------------------------------------------------------------ WeChat endpoints
    async def h_stable_token(request: Request, body: Any) -> dict[str, Any]:
        if body is INVALID:
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
        return state.get_pdf(token, None if body is INVALID else body, str(request.base_url))

    def with_token(method: Any) -> Any:
        """A handler for a JSON call: the token checked, then `method(token, body or None)`."""

        async def handler(request: Request, body: Any) -> dict[str, Any]:
            token, problem = token_of(request)
            if problem is not None:
                return problem
            return method(token, None if body is INVALID else body)

        return handler

    async def h_getauthdata(request: Request, body: Any) -> dict[str, Any]:
        _token, problem = token_of(request)
        if problem is not None:
            return problem
        return state.auth_data(None if body is INVALID else body)

    async def h_getticket(request: Request, body: Any) -> dict[str, Any]:
        token, problem = token_of(request)
        if problem is not None:
            return problem
        return links.get_ticket(token.appid, request.query_params.get("type"))

    async def h_getbillauthurl(request: Request, body: Any) -> dict[str, Any]:
        token, problem = token_of(request)
        if problem is not None:
            return problem
        return links.auth_url(token.appid, None if body is INVALID else body)

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

    add_admin_routes(app, state, links, faults, settings.admin_token)

    # ------------------------------------------------------------ error answers
    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 400)
        if not request.url.path.startswith(ADMIN_PREFIX):
            state.count_call("unknown")
        detail = getattr(exc, "detail", "") or "error"
        return json_response({"errcode": status, "errmsg": f"{detail}"}, status=status)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc)
        return json_response(E.error(E.SYSTEM_BUSY))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    return app
