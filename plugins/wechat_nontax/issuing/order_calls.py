"""One remote call of an issuing batch for one order, with the policy applied.

A call is made only while the batch still sends, no refusal of the order was asked since the
batch took it, the try surely holds the order and no daily quota of the call (or of the calls
after it) is recorded as used up. WeChat's answer is retried as the policy's rule says while
the task's time budget lasts; a final answer ends the order (`OrderEnds.answer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from wechat_nontax.issuing.batch_hold import BatchHold
from wechat_nontax.issuing.batch_quotas import BatchQuotas
from wechat_nontax.issuing.batch_stop import BatchStop, OrderEnded
from wechat_nontax.issuing.order_ends import OrderEnds
from wechat_nontax.issuing.outcomes import OrderResult, Outcome
from wechat_nontax.issuing.pending_uploads import PendingUploads
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.reads import StoredOrder
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.retry import Backoff
from wechat_nontax.wechat.statuses import Action, Status, Step

log = logging.getLogger(__name__)

# A refusal asked this long before an order's upload or insert always keeps it from being sent
# (a batch looks before the order's first such call and each retry, and before its next call
# once this has passed: once per order when its calls go through at once). Within the chaos
# runner's IN_FLIGHT_S (nontax_dev/chaos/checks.py) with a call's time.
REFUSAL_RECHECK_S = 1.0

# The calls a refusal asked meanwhile keeps an order from: its upload and its insert.
_REFUSABLE_CALLS = frozenset({Step.UPLOAD, Step.INSERT})

LEFT_TO_REFUSAL = (
    "not sent: a refusal of it was asked while its batch ran; the DAG nontax_requests carries "
    "it out"
)


class OrderCalls:
    def __init__(
        self,
        store: OrderStore,
        *,
        run_id: str,
        hold: BatchHold,
        quotas: BatchQuotas,
        uploads: PendingUploads,
        ends: OrderEnds,
        stop: BatchStop,
        backoff: Backoff,
        call_reserve_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ):
        self.store = store
        self.run_id = run_id
        self._hold = hold
        self._quotas = quotas
        self._uploads = uploads
        self._ends = ends
        self._stop = stop
        self._backoff = backoff
        self._call_reserve_s = call_reserve_s
        self._clock = clock
        self._sleep = sleep
        # When each order was last looked at for a refusal asked since (monotonic time).
        self._refusal_looked: dict[str, float] = {}

    def call(self, stored: StoredOrder, step: str, call: Callable, *, ahead: Sequence[str] = ()):
        """One remote call with the policy applied: retried while the time budget lasts, and
        made only while this try surely holds the order and no daily quota of this call (or
        of the calls `ahead` of the order) is recorded as used up."""
        answers: dict[int | str, int] = {}
        token_answers = 0
        while True:
            self.before_call(stored, step, [step, *ahead], again=bool(answers or token_answers))
            started = self._clock()
            try:
                return call()
            except errors.MediaExpiredError:
                raise
            except errors.WeChatError as exc:
                self._uploads.write(stored.order_id)  # the media id's row before the answer's
                if exc.step == Step.TOKEN:
                    token_answers += 1
                    self._sleep(self._token_retry_delay(stored, step, exc, token_answers))
                    continue
                action = exc.rule.action
                if action is Action.RETRY or action is Action.REFRESH_TOKEN:
                    answers[exc.signal] = answers.get(exc.signal, 0) + 1
                    count = answers[exc.signal]
                    limit = exc.rule.max_retries
                    if limit is not None and count > limit:
                        reason = (exc.rule.exhausted_reason or exc.rule.reason).format(
                            answers=count
                        )
                        raise self._ends.answer(
                            stored, exc, step, status=Status.FAILED, reason=reason
                        ) from None
                    delay = self._backoff.delay(exc.rule, count)
                    self.store.record_transient(
                        stored.order_id, hold=self._hold.of(stored.order_id), run_id=self.run_id,
                        step=step, outcome="retry", errcode=exc.errcode, errmsg=exc.errmsg,
                        duration_ms=int((self._clock() - started) * 1000),
                    )  # fmt: skip
                    if not self._backoff.wait(delay):
                        raise OrderEnded(
                            OrderResult(stored.order_id, Outcome.RETRY_LATER, str(exc))
                        ) from None
                    continue
                raise self._ends.answer(stored, exc, step) from None

    def _token_retry_delay(
        self, stored: StoredOrder, step: str, exc: errors.WeChatError, answers: int
    ) -> float:
        """No access token for the call: how long to wait before trying again when the token
        endpoint's failure may pass (5xx, timeout, -1...) and the task's time budget allows;
        else the batch stops (its orders stay due): for a daily quota of the token endpoint,
        recorded for everyone; for a refused appid or secret, as blocked for a person."""
        order_id = stored.order_id
        action = exc.rule.action
        if action is Action.STOP_QUOTA:
            raise OrderEnded(self._ends.quota_answer(stored, exc, step, api=Step.TOKEN))
        if action is not Action.RETRY:
            self._stop.stop(Outcome.BLOCKED, f"not sent: no access token: {exc}")
            raise OrderEnded(self._stop.result(order_id))
        delay = self._backoff.delay(exc.rule, answers)
        if not self._backoff.fits(delay):
            self._stop.stop(
                Outcome.RETRY_LATER,
                f"not sent: no access token within the task's time budget ({answers} tries): {exc}",
            )
            raise OrderEnded(self._stop.result(order_id))
        log.warning(
            "no access token for order %s (%s, try %d): trying again in %.1f s",
            order_id, exc, answers, delay,
        )  # fmt: skip
        return delay

    def before_call(
        self, stored: StoredOrder, step: str, apis: Sequence[str], *, again: bool = False
    ) -> None:
        """Raise unless the call may be made now: no refusal of the order was asked since the
        batch took it, the try holds the order, and no daily quota of the call (or of the calls
        after it) is recorded as used up, by this batch or any other. The quota record is read
        at most every QUOTA_RECHECK_S by the batch: a stop another worker recorded costs at
        most that long, and no call, to find out."""
        if step in _REFUSABLE_CALLS and not self._stop.is_set():
            self._look_for_refusal(stored.order_id, again=again)
        stop = self._quotas.met(apis)
        if stop is None and not self._stop.is_set():
            stop = self._quotas.recorded(apis)
        if stop is not None:
            raise OrderEnded(self._ends.wait_for_quota(stored, step, stop))
        self.check_hold(stored.order_id)

    def check_hold(self, order_id: str) -> None:
        """Raise unless this try surely holds the order for as long as a call may take."""
        self._hold.check(order_id, reserve_s=self._call_reserve_s)

    def _look_for_refusal(self, order_id: str, *, again: bool) -> None:
        """The batch took its orders when it started: a refusal asked since is looked for before
        the order's first upload or insert, before each retry (`again`: it follows a wait),
        and before a later call once REFUSAL_RECHECK_S have passed (a slow upload); the order
        is then left to the refusal (the requests run refuses it) and this raises."""
        now = time.monotonic()
        last = self._refusal_looked.get(order_id, float("-inf"))
        if not again and now - last < REFUSAL_RECHECK_S:
            return
        self._refusal_looked[order_id] = now  # the order's own thread only
        if self.store.leave_to_refusal(
            order_id, LEFT_TO_REFUSAL, hold=self._hold.of(order_id), run_id=self.run_id
        ):
            raise OrderEnded(OrderResult(order_id, Outcome.NOT_DUE, LEFT_TO_REFUSAL))
