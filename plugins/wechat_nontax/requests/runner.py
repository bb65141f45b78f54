"""Carrying out the pending requests: refuse an order (rejectinsert), void a bill (updatestatus).

The "how" behind the DAG `nontax_requests`, free of Airflow. One task try works through the
requests one after the other (they come by the handful: a call each): it holds the request's
order (`bill_requests.RequestStore.take`), checks what the call would refuse, makes the call
through the hook (token from the shared cache), and writes the outcome back under its hold.

At most once on WeChat's side: a request is called for only while its order is held by this
try; after a crash between the call and the write-back, the request is still pending and its
order's hold runs out, and the next try's call is answered 72035 (refused already) or 72060
(voided already), which the policy's `STEP_POLICY` classifies as `ALREADY_DONE`: recorded done.

Daily quotas as the issuing batches keep them: a quota answer to rejectinsert or updatestatus
is recorded in `nontax.api_quota` for the appid and the call (`refuse`, `void`), and no such
call is made before the quota resets: its requests wait, pending, until then.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from wechat_nontax.observability import metrics
from wechat_nontax.requests.contract import RequestKind, RequestStatus
from wechat_nontax.requests.store import Request, RequestRow, RequestStore, Taken, call_problems
from wechat_nontax.store.holders import claim_key, lost_hold_reason
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.quotas import QuotaStop
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.retry import Backoff
from wechat_nontax.wechat.statuses import Action
from wechat_nontax.wechat.timing import seconds_until_quota_reset

log = logging.getLogger(__name__)

# A request whose calls keep failing transiently is tried again by later runs, at most this many
# calls in all; then it fails for a person. With the DAG every 5 minutes: about an hour.
MAX_REQUEST_CALLS = 12
# Between runs, a request that failed transiently waits at least this long.
TRANSIENT_WAIT_S = 60.0


class RequestOutcome(StrEnum):
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"
    WAITING = "waiting"  # still pending: its order is busy, or a transient failure, a quota
    NOT_HELD = "not_held"  # another try wrote first or took the order: nothing recorded here


@dataclass(frozen=True, slots=True)
class RequestResult:
    request_id: int
    order_id: str
    kind: str
    outcome: RequestOutcome
    reason: str = ""


NEEDS_PERSON = frozenset({RequestOutcome.REFUSED, RequestOutcome.FAILED})


class WeChatRequests(Protocol):
    def reject_insert(self, order_id: str, reason: str, url: str | None = None) -> None: ...
    def update_status(self, card_id: str, code: str, status: str) -> None: ...


class RequestRunner:
    """One task try over the pending requests."""

    def __init__(
        self,
        api: WeChatRequests,
        store: RequestStore,
        *,
        quotas: OrderStore,
        run_id: str,
        holder: str,
        hold_s: float,
        time_budget_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
    ):
        self.api = api
        self.store = store
        # The daily quota record the issuing batches use (`nontax.api_quota`), per appid and
        # call: a quota answer to a refusal or a void stops that call for every run until
        # the reset, as one to an insert stops inserts.
        self.quotas = quotas
        self._appid = str(getattr(api, "appid", "") or "")
        self.run_id = run_id
        self.holder = holder
        self.hold_s = hold_s
        self._clock = clock
        # Set when the task is stopped or its supervisor is gone: nothing more is sent. A wait
        # between retries ends with it (unless the caller brings its own sleep).
        self._stop = threading.Event()
        self._stopped = ""
        self._backoff = Backoff(
            clock() + time_budget_s, clock=clock, sleep=sleep or self._stop.wait,
            jitter=random.Random().random,  # noqa: S311 (jitter, not security)
        )  # fmt: skip
        self._blocked: str | None = None  # no access token: nothing more is sent this try

    @property
    def blocked(self) -> str | None:
        """Why this try stopped calling (no access token), None when it did not."""
        return self._blocked

    def stop(self, reason: str) -> None:
        """Send nothing more (the task is being killed, or its supervisor is gone): the call in
        flight is recorded, the requests not reached stay pending, untouched, and the hold
        ends. Called from a signal handler or another thread: no lock is taken here."""
        if not self._stop.is_set():
            self._stopped = reason
            self._stop.set()

    def run(self, limit: int | None = None) -> list[RequestResult]:
        results = []
        try:
            for request in self.store.pending(limit):
                if self._stop.is_set():
                    break
                results.append(self._one(request))
                if self._blocked is not None:
                    break  # no token: the others stay pending, untouched, for the next run
        finally:
            self.store.release(claim_key(self.holder), self.holder)
        return self._explain_lost(results)

    def _explain_lost(self, results: list[RequestResult]) -> list[RequestResult]:
        """Say why each order whose hold this try lost is no longer its own: who holds it now,
        or that the hold ran out (read once, after the try's calls)."""
        lost = [r.order_id for r in results if r.outcome is RequestOutcome.NOT_HELD]
        if not lost:
            return results
        try:
            why = self.quotas.why_not_held(lost, refusals=False)
        except Exception as exc:  # noqa: BLE001 (the outcome stands without its why)
            log.warning("could not read who holds the orders this try lost: %s", exc)
            return results
        return [
            dataclasses.replace(
                r, reason=f"{r.reason}: lost its hold, {lost_hold_reason(why[r.order_id])}"
            )
            if r.outcome is RequestOutcome.NOT_HELD
            else r
            for r in results
        ]

    def _one(self, request: Request) -> RequestResult:
        taken = self.store.take(request, run_id=self.run_id, holder=self.holder, hold_s=self.hold_s)
        if isinstance(taken, str):
            return self._result(request, RequestOutcome.WAITING, taken)
        if isinstance(taken, RequestRow):  # the order's status does not allow it: no call
            return self._result(request, RequestOutcome.REFUSED, taken.outcome or "")
        problem = call_problems(taken)
        if problem is not None:
            return self._end(taken, RequestStatus.REFUSED, f"not sent: {problem}", None)
        return self._call(taken)

    def _call(self, taken: Taken) -> RequestResult:
        request = taken.request
        answers: dict[int | str, int] = {}
        calls = taken.calls
        while True:
            if calls >= MAX_REQUEST_CALLS:
                return self._end(
                    taken, RequestStatus.FAILED,
                    f"{calls} calls went unanswered or failed transiently: see the order's "
                    "history", None,
                )  # fmt: skip
            if not self.store.renew(taken, hold_s=self.hold_s):
                return self._result(request, RequestOutcome.NOT_HELD, "not sent")
            if self._stop.is_set():
                return self._waiting(taken, self._stopped, None, wait_s=None)
            stop = self.quotas.quota_stops(self._appid, [request.kind]).get(request.kind)
            if stop is not None:
                return self._waiting_for_quota(taken, stop)
            self.store.note_call(taken)
            calls += 1
            try:
                if request.kind == RequestKind.REFUSE:
                    self.api.reject_insert(request.order_id, request.reason)
                else:
                    self.api.update_status(taken.card_id, taken.code or "", "CANCEL")
            except errors.AlreadyDoneError as exc:
                return self._done(taken, f"WeChat had it done already: {exc.rule.reason}", exc)
            except errors.InvalidRequestError as exc:
                return self._end(taken, RequestStatus.REFUSED, f"not sent: {exc}", None)
            except errors.WeChatError as exc:
                if exc.step == "token":
                    self._blocked = f"not sent: no access token: {exc}"
                    return self._waiting(taken, self._blocked, exc, wait_s=None)
                rule = errors.error_for(
                    exc.signal, exc.errmsg, step=request.kind,
                    answers=answers.setdefault(exc.signal, 0) + 1,
                ).rule  # fmt: skip
                answers[exc.signal] += 1
                if rule.action is Action.STOP_QUOTA:
                    stop = self.quotas.record_quota_stop(
                        self._appid, request.kind, errcode=exc.errcode, errmsg=exc.errmsg,
                        seconds=seconds_until_quota_reset(self._clock()), run_id=self.run_id,
                    )  # fmt: skip
                    return self._waiting_for_quota(taken, stop)
                if rule.action is Action.ALREADY_INSERTED:
                    # A refusal answered 72056: the bill is in the card package after all.
                    return self._end(
                        taken, RequestStatus.REFUSED, rule.reason, exc, order_duplicate=True
                    )
                if rule.waits:
                    delay = self._backoff.delay(rule, answers[exc.signal])
                    if not self._backoff.wait(delay):
                        return self._waiting(
                            taken, f"tried again by a later run: {exc}", exc,
                            wait_s=max(delay, TRANSIENT_WAIT_S),
                        )  # fmt: skip
                    continue
                return self._end(taken, RequestStatus.FAILED, f"{rule.reason} ({exc})", exc)
            return self._done(taken, "done", None)

    def _done(self, taken: Taken, outcome: str, exc: errors.WeChatError | None) -> RequestResult:
        errcode = exc.errcode if exc is not None and exc.errcode is not None else 0
        if not self.store.record_done(taken, outcome, run_id=self.run_id, errcode=errcode):
            return self._lost(taken)
        return self._result(taken.request, RequestOutcome.DONE, outcome)

    def _end(
        self,
        taken: Taken,
        status: RequestStatus,
        outcome: str,
        exc: errors.WeChatError | None,
        *,
        order_duplicate: bool = False,
    ) -> RequestResult:
        written = self.store.record_end(
            taken, status, outcome, run_id=self.run_id,
            errcode=exc.errcode if exc is not None else None, order_duplicate=order_duplicate,
        )  # fmt: skip
        if not written:
            return self._lost(taken)
        return self._result(taken.request, RequestOutcome(str(status)), outcome)

    def _waiting(
        self,
        taken: Taken,
        outcome: str,
        exc: errors.WeChatError | None,
        *,
        wait_s: float | None,
        errcode: int | None = None,
    ) -> RequestResult:
        errcode = exc.errcode if exc is not None else errcode
        self.store.record_waiting(
            taken, outcome, run_id=self.run_id, errcode=errcode, not_before_s=wait_s
        )
        return self._result(taken.request, RequestOutcome.WAITING, outcome)

    def _waiting_for_quota(self, taken: Taken, stop: QuotaStop) -> RequestResult:
        """Not sent (again) before the call's daily quota resets; the request stays pending."""
        return self._waiting(
            taken, stop.reason(), None, errcode=stop.errcode, wait_s=max(stop.seconds_left, 1.0)
        )

    def _lost(self, taken: Taken) -> RequestResult:
        reason = "another holder took the order or the request ended: this result not recorded"
        log.warning("request #%s: %s", taken.request.request_id, reason)
        metrics.hold_lost("request")
        return self._result(taken.request, RequestOutcome.NOT_HELD, reason)

    def _result(self, request: Request, outcome: RequestOutcome, reason: str) -> RequestResult:
        log.info(
            "request #%s %s %s: %s%s", request.request_id, request.kind, request.order_id,
            outcome, f" ({reason})" if reason else "",
        )  # fmt: skip
        metrics.request_ended(request.kind, outcome)
        return RequestResult(request.request_id, request.order_id, request.kind, outcome, reason)


def result_table(results: list[RequestResult]) -> str:
    """The try's requests for its log: one line each."""
    if not results:
        return "no pending request was due"
    return "\n".join(
        f"#{r.request_id:<6} {r.kind:<6} {r.order_id:<20} {r.outcome:<8} {r.reason}"
        for r in results
    )
