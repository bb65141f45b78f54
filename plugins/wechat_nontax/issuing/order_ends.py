"""How an issuing batch writes each order's end: a bill inserted, a quota to wait for, an
authorisation to wait for, a final failure. Each write names the try's hold and the row version
it read; a write the order's row refuses means the hold is lost (`BatchHold.lost`).

A bill WeChat issued whose code the order database cannot take is logged (codes are not
secrets) and kept in `unrecorded`, for the operator's journal: it cannot be had from WeChat
again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from wechat_nontax.issuing.batch_hold import BatchHold
from wechat_nontax.issuing.batch_quotas import BatchQuotas
from wechat_nontax.issuing.batch_stop import BatchStop, OrderEnded
from wechat_nontax.issuing.outcomes import OrderResult, Outcome
from wechat_nontax.issuing.pending_uploads import PendingUploads
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.quotas import QuotaStop
from wechat_nontax.store.reads import StoredOrder
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.rules import AUTHORIZATION_DEADLINE_S, AUTHORIZATION_RECHECK_S
from wechat_nontax.wechat.statuses import Action, Status, Step

log = logging.getLogger(__name__)


class OrderEnds:
    def __init__(
        self,
        store: OrderStore,
        *,
        run_id: str,
        hold: BatchHold,
        uploads: PendingUploads,
        quotas: BatchQuotas,
        stop: BatchStop,
        clock: Callable[[], float],
    ):
        self.store = store
        self.run_id = run_id
        self._hold = hold
        self._uploads = uploads
        self._quotas = quotas
        self._stop = stop
        self._clock = clock
        # Bills WeChat issued that the order database could not record (for the journal).
        self.unrecorded: list[OrderResult] = []
        self._unrecorded_lock = threading.Lock()

    def bill(self, stored: StoredOrder, bill, duration_ms: int) -> OrderResult:
        """Write the bill's code at once; if the order database stays away, log it and keep it
        for the journal."""
        order_id = stored.order_id
        version = self._hold.version_of(order_id)
        try:
            status = self.store.record_inserted(
                order_id, bill.code, bill.openid, version=version, run_id=self.run_id,
                duration_ms=duration_ms, upload=self._uploads.take(order_id),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (whatever the database says, the code is kept)
            log.error(
                "UNRECORDED BILL: order %s is in the card package with code %s, openid %s; "
                "the order database could not record it (%s)",
                order_id, bill.code, bill.openid, exc,
            )  # fmt: skip
            self._stop.stop(Outcome.RETRY_LATER, f"not sent: the order database failed: {exc}")
            result = OrderResult(
                order_id, Outcome.UNRECORDED, f"inserted, code {bill.code}: not recorded yet",
                bill=(bill.code, bill.openid),
            )  # fmt: skip
            with self._unrecorded_lock:
                self.unrecorded.append(result)
            return result
        if status == Status.MISMATCHED:
            return OrderResult(
                order_id, Outcome.MISMATCHED,
                f"inserted, code {bill.code}, from row version {version}; the "
                "row changed while it was sent (a reload after this try's hold ran out): "
                "compare the bill with the order, void it if wrong",
            )  # fmt: skip
        return OrderResult(order_id, Outcome.INSERTED)

    def quota_answer(
        self, stored: StoredOrder, exc: errors.WeChatError, step: str, *, api: str
    ) -> OrderResult:
        """WeChat answered a daily quota for `api`: record it for every batch until the quota
        resets, then leave this order waiting for it."""
        stop = self._quotas.record(api, exc, now=self._clock())
        return self.wait_for_quota(stored, step, stop)

    def wait_for_quota(self, stored: StoredOrder, step: str, stop: QuotaStop) -> OrderResult:
        """Not sent for a used-up daily quota: the order stays due and is not claimed again
        before the quota resets; the batch's other orders that need that call wait for it too
        (for the token endpoint's, every call: the batch stops)."""
        reason = stop.reason()
        self._quotas.meet(stop)
        if stop.api == Step.TOKEN:
            self._stop.stop(Outcome.QUOTA, f"{reason}; left due")
        order_id = stored.order_id
        self._uploads.write(order_id)
        written = self.store.record_quota_wait(
            order_id, hold=self._hold.of(order_id), run_id=self.run_id, step=step,
            errcode=stop.errcode, errmsg=reason, not_before_s=max(stop.seconds_left, 1.0),
        )  # fmt: skip
        if not written:
            return self._hold.lost(order_id)
        return OrderResult(order_id, Outcome.QUOTA, reason)

    def answer(
        self,
        stored: StoredOrder,
        exc: errors.WeChatError,
        step: str,
        *,
        status: str | None = None,
        reason: str | None = None,
    ) -> OrderEnded:
        """Write the order's end after WeChat's answer `exc` for this task and return the
        exception that carries it."""
        action = exc.rule.action
        order_id = stored.order_id
        self._uploads.write(order_id)
        hold = self._hold.of(order_id)
        reason = reason or f"{exc.rule.reason} ({answer_text(exc)})"
        if action is Action.STOP_QUOTA:
            return OrderEnded(self.quota_answer(stored, exc, step, api=step))
        outcome = Outcome.FAILED
        if action is Action.ALREADY_INSERTED:
            status, outcome = Status.DUPLICATE, Outcome.ALREADY_INSERTED
        elif action is Action.WAIT_AUTHORIZATION and status is None:
            return OrderEnded(
                self.wait_authorization(
                    stored,
                    reason,
                    step=step,
                    errcode=exc.errcode,
                    errmsg=exc.errmsg,
                    answer=answer_text(exc),
                )
            )
        elif action is Action.REJECT and status is None:
            status, outcome = Status.REJECTED, Outcome.REJECTED
        status = status or Status.FAILED
        written = self.store.record_end(
            order_id, status, reason, hold=hold, run_id=self.run_id, step=step,
            errcode=exc.errcode, errmsg=exc.errmsg,
        )  # fmt: skip
        if not written:
            return OrderEnded(self._hold.lost(order_id))
        return OrderEnded(OrderResult(order_id, outcome, reason))

    def wait_authorization(
        self,
        stored: StoredOrder,
        reason: str,
        *,
        step: str,
        errcode: int | None,
        errmsg: str,
        answer: str,
    ) -> OrderResult:
        """Not authorised yet: asked again later, or failed once the wait outlasted the
        deadline (counted from the first time WeChat said so)."""
        order_id = stored.order_id
        hold = self._hold.of(order_id)
        since = stored.auth_wait_since.timestamp() if stored.auth_wait_since else self._clock()
        waited = self._clock() - since
        if waited < AUTHORIZATION_DEADLINE_S:
            status, outcome, not_before_s = (
                Status.AWAITING_AUTH, Outcome.AWAITING_AUTH, AUTHORIZATION_RECHECK_S
            )  # fmt: skip
        else:
            status, outcome, not_before_s = Status.FAILED, Outcome.FAILED, None
            reason = f"not authorised {waited / 3600:.0f} h after WeChat first said so ({answer})"
        written = self.store.record_end(
            order_id, status, reason, hold=hold, run_id=self.run_id, step=step,
            errcode=errcode, errmsg=errmsg, not_before_s=not_before_s,
        )  # fmt: skip
        if not written:
            return self._hold.lost(order_id)
        return OrderResult(order_id, outcome, reason)


def answer_text(exc: errors.WeChatError) -> str:
    return f"errcode {exc.errcode}: {exc.errmsg}" if exc.errcode is not None else exc.errmsg
