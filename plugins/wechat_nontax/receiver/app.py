"""The receiver's web service: WeChat's URL check, its events, and a health endpoint.

A verified authorisation event is recorded in the order database within the record budget
(NONTAX_RECEIVER_RECORD_BUDGET_S); when the database is slow or away it is kept in the spool
instead, and either way `success` is answered well within WeChat's 5 s. A background thread
replays the spool. Every refusal is one log line with its reason; no body, token or key is ever
logged (the access log is off: the query carries signatures and echostr).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from wechat_nontax.observability import metrics
from wechat_nontax.receiver.callback import Credentials, open_message, verify_url_check
from wechat_nontax.receiver.config import ReceiverSettings
from wechat_nontax.receiver.crypto import CallbackRefused
from wechat_nontax.receiver.events import AuthorizationEvent, IgnoredEvent, read_event
from wechat_nontax.receiver.recorder import EventRecorder
from wechat_nontax.receiver.spool import Spool
from wechat_nontax.settings import RECEIVER_PATH

log = logging.getLogger("wechat_nontax.receiver")
SUCCESS = "success"  # what ends WeChat's retries


class TooLarge(Exception):
    pass


def create_app(
    creds: Credentials,
    settings: ReceiverSettings,
    recorder: EventRecorder,
    spool: Spool,
    *,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    # Database calls run here, never on the event loop: a stuck one costs a thread, not the
    # service. More threads than WeChat's burst of concurrent pushes needs.
    pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="record")
    stop = threading.Event()

    def replay_loop() -> None:
        while not stop.wait(settings.replay_every_s):
            if not spool.depth():
                continue
            try:
                for event, outcome in spool.replay(recorder.record):
                    log.info("spooled event of order %s recorded: %s", event.order_id, outcome)
            except Exception as exc:  # noqa: BLE001 - the database still away: next round
                log.warning("spool replay waits for the database (%s)", type(exc).__name__)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        replayer = threading.Thread(target=replay_loop, name="spool-replay", daemon=True)
        replayer.start()
        log.info(
            "receiver up on %s (safe mode: %s, spool: %d events)",
            RECEIVER_PATH, bool(creds.aes_keys), spool.depth(),
        )  # fmt: skip
        yield
        stop.set()
        replayer.join(timeout=5)
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def refused(request: Request, exc: CallbackRefused, length: int | None = None) -> Response:
        client = request.client.host if request.client else "?"
        size = "" if length is None else f", {length} bytes"
        log.warning(
            "refused %d %s: %s (from %s%s)", exc.status, request.method, exc.reason, client, size
        )
        metrics.receiver_refused(exc.reason.split(":")[0])
        return PlainTextResponse(exc.reason.split(":")[0], status_code=exc.status)

    @app.get(RECEIVER_PATH)
    async def url_check(request: Request) -> Response:
        try:
            echostr = verify_url_check(
                request.query_params, creds, clock(), settings.replay_window_s
            )
        except CallbackRefused as exc:
            return refused(request, exc)
        log.info("URL check answered")
        return PlainTextResponse(echostr)

    @app.post(RECEIVER_PATH)
    async def callback(request: Request) -> Response:
        started = time.monotonic()
        try:
            outcome, response = await _answer(request)
        except Exception as exc:  # noqa: BLE001 - neither recorded nor spooled: WeChat tries again
            log.error("event not taken: %s (answered 500)", type(exc).__name__)
            outcome, response = "error", PlainTextResponse("error", status_code=500)
        metrics.receiver_event(outcome)
        metrics.receiver_answered(outcome, time.monotonic() - started)
        return response

    async def _answer(request: Request) -> tuple[str, Response]:
        """What was done with the request (the metrics' outcome) and the answer to give."""
        try:
            body = await _read_body(request, settings.max_body)
        except TooLarge:
            exc = CallbackRefused("oversized: body over the limit", 413)
            return "refused", refused(request, exc)
        try:
            event = read_event(
                open_message(request.query_params, body, creds, clock(), settings.replay_window_s)
            )
        except CallbackRefused as exc:
            return "refused", refused(request, exc, len(body))
        if isinstance(event, IgnoredEvent):
            log.info("ignored %s", event.kind)
            return "ignored", PlainTextResponse(SUCCESS)
        return await _record_or_spool(event), PlainTextResponse(SUCCESS)

    async def _record_or_spool(event: AuthorizationEvent) -> str:
        loop = asyncio.get_running_loop()
        try:
            outcome = await asyncio.wait_for(
                loop.run_in_executor(pool, recorder.record, event), settings.record_budget_s
            )
        except Exception as exc:  # noqa: BLE001 - slow or away: keep it, answer success
            # A record still running may commit later; the spooled copy then changes nothing.
            await loop.run_in_executor(None, spool.append, event)
            metrics.receiver_spooled()
            log.warning(
                "event of order %s spooled: the database did not take it (%s)",
                event.order_id, type(exc).__name__,
            )  # fmt: skip
            return "spooled"
        log.info("event of order %s recorded: %s", event.order_id, outcome)
        return "recorded"

    @app.get("/healthz")
    async def healthz() -> Response:
        loop = asyncio.get_running_loop()
        try:
            database = await asyncio.wait_for(
                loop.run_in_executor(pool, recorder.reachable), settings.record_budget_s
            )
        except TimeoutError:
            database = False
        # Up even without the database: events are spooled meanwhile.
        return JSONResponse({"status": "up", "database": database, "spool_depth": spool.depth()})

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (TooLarge) as soon as it is known to exceed `limit`: by its declared
    length before reading any of it, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)
