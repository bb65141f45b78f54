"""Issuing one batch of orders: validate, upload the PDF, insert the bill, write back each result.

This is the "how" behind the operators, free of Airflow so that it can be read and tested on its
own. It composes the hook (HTTP), the store (SQL) and the PDF reader; what to do after each answer
comes from the policy table. Every result is written to the store the moment it is known, but
an upload's media id: it goes in with the insert's result (`pending_uploads`).

Concurrency: the batch's orders run in a thread pool; each thread handles one order from start to
end, so an order's calls are never concurrent with each other. A broken configuration stops the
whole batch (`batch_stop`): no further calls, the remaining orders stay due. A daily-quota answer
stops only the call (API) that got it (`batch_quotas`): the orders that need that call stay due,
the others go on (but for the token endpoint's quota, which every call needs: it stops the
batch). The batch's parts, each in its own module:
- `batch_hold`: this try's hold on the orders, renewed while it works;
- `order_calls`: one remote call for an order, with the policy, the hold and the quotas;
- `order_ends`: each order's end written back, and the bills that could not be (the journal's);
- `pending_uploads`: media ids written with the insert's result, or alone when it lags.
An order waiting for its payer's authorisation asks getauthdata first and is inserted only once
it says "auth success".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from wechat_nontax.issuing.batch_hold import BatchHold
from wechat_nontax.issuing.batch_quotas import BatchQuotas
from wechat_nontax.issuing.batch_settings import PdfReader, Settings, WeChatApi
from wechat_nontax.issuing.batch_stop import BatchStop, OrderEnded
from wechat_nontax.issuing.order_calls import OrderCalls
from wechat_nontax.issuing.order_ends import OrderEnds
from wechat_nontax.issuing.outcomes import OrderResult, Outcome
from wechat_nontax.issuing.pending_uploads import PendingUploads
from wechat_nontax.settings import MEDIA_ID_LIFETIME_S
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.reads import StoredOrder
from wechat_nontax.store.sql import OrderStoreError
from wechat_nontax.store.writes import Upload
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.bill import bill_fields
from wechat_nontax.wechat.policy import authorization_status_rule
from wechat_nontax.wechat.retry import Backoff
from wechat_nontax.wechat.statuses import Action, Status, Step
from wechat_nontax.wechat.validation import (
    check_card_allowed,
    check_order_fields,
    check_pdf,
    format_problems,
)

log = logging.getLogger(__name__)

# An unreadable PDF whose error may pass (an I/O or object-storage error) is tried again after
# this, not at once by every retry of the task.
PDF_RETRY_S = 10 * 60.0


class BatchIssuer:
    """Issues one batch as one task try: holds its orders, works on them, ends the hold."""

    def __init__(
        self,
        api: WeChatApi,
        store: OrderStore,
        settings: Settings,
        *,
        run_id: str,
        read_pdf: PdfReader,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.api = api
        self.store = store
        self.settings = settings
        self.run_id = run_id
        # One task try: run, task, map index, try number. An earlier try of the same batch
        # shares everything before the try number.
        self.holder = holder or f"{run_id}|issue_bills|-1|1"
        self._read_pdf = read_pdf
        self._clock = clock
        # Set on a daily quota, a broken configuration, a lost hold or a person stopping the
        # task: the batch's other orders are not sent.
        self._stop = BatchStop()
        # At least twice what a call may take: a call starts only with that much hold left.
        self._hold = BatchHold(
            store, self.holder, hold_s=max(settings.hold_s, 2 * settings.call_reserve_s),
            stop=self._stop, sleep=sleep,
        )  # fmt: skip
        self._uploads = PendingUploads(store, self._hold, run_id=run_id, stop=self._stop)
        # Quota records are per appid, the account whose quota WeChat counts.
        self._quotas = BatchQuotas(store, str(getattr(api, "appid", "") or ""), run_id=run_id)
        self._ends = OrderEnds(
            store, run_id=run_id, hold=self._hold, uploads=self._uploads, quotas=self._quotas,
            stop=self._stop, clock=clock,
        )  # fmt: skip
        backoff = Backoff(
            clock() + settings.time_budget_s, clock=clock, sleep=sleep,
            jitter=random.Random().random,  # noqa: S311 (jitter, not security)
        )  # fmt: skip
        self._calls = OrderCalls(
            store, run_id=run_id, hold=self._hold, quotas=self._quotas, uploads=self._uploads,
            ends=self._ends, stop=self._stop, backoff=backoff,
            call_reserve_s=settings.call_reserve_s, clock=clock, sleep=sleep,
        )  # fmt: skip

    @property
    def unrecorded(self) -> list[OrderResult]:
        """Bills WeChat issued that the order database could not record (for the journal)."""
        return self._ends.unrecorded

    def stop(self, reason: str) -> None:
        """Send nothing more (the task is being killed): the calls in flight are recorded if
        they end before Airflow's SIGKILL (5 s after its SIGTERM); the orders not reached stay
        due. Called from a signal handler: no lock is taken here."""
        self._stop.stop_unlocked(reason)

    def version_of(self, order_id: str) -> int:
        """The row version this try read of the order (what it sent)."""
        return self._hold.version_of(order_id)

    def run(self, order_ids: Sequence[str]) -> list[OrderResult]:
        """Work on the batch's unfinished orders; returns one result per order id."""
        if self.settings.dry_run:
            return self._dry_run(order_ids)
        pool = None
        try:
            results = self._hold.take(
                order_ids, include_needs_person=self.settings.include_needs_person
            )
            self._uploads.start()
            work = self.store.get_orders(self._hold.held(order_ids))
            pool = ThreadPoolExecutor(
                max(1, min(self.settings.max_workers, len(work))), thread_name_prefix="order"
            )
            for result in pool.map(self._guarded, work):
                results[result.order_id] = result
            self._hold.explain_lost(results)
        finally:
            # Also on an exception (a timeout, a kill): nothing more is sent, the calls in
            # flight finish and are recorded, the renewal ends, the hold goes back to the run.
            self._stop.stop(Outcome.RETRY_LATER, "not sent: the task stopped")
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._hold.end(lease_s=self.settings.lease_s)
        return [results[order_id] for order_id in order_ids]

    def _dry_run(self, order_ids: Sequence[str]) -> list[OrderResult]:
        """Validate what a run would send; write nothing (the findings go to the report)."""
        stored = {o.order_id: o for o in self.store.get_orders(order_ids)}
        results = []
        for order_id in order_ids:
            current = stored.get(order_id)
            if current is None:
                results.append(OrderResult(order_id, Outcome.NOT_HELD, "unknown order"))
            elif current.status not in Status.DUE:
                results.append(OrderResult(order_id, Outcome.ALREADY_DONE, current.status))
            else:
                problems = self._problems(current)[0]
                results.append(
                    OrderResult(order_id, Outcome.INVALID, format_problems(problems))
                    if problems
                    else OrderResult(order_id, Outcome.VALIDATED)
                )
        return results

    def _guarded(self, stored: StoredOrder) -> OrderResult:
        try:
            return self._one(stored)
        except OrderEnded as ended:
            return ended.result
        except OrderStoreError as exc:
            # The order database stays away: nothing more is sent (it could not be recorded).
            self._stop.stop(Outcome.RETRY_LATER, f"not sent: {exc}")
            return OrderResult(stored.order_id, Outcome.RETRY_LATER, str(exc))
        except Exception:
            # A bug: no other order of the batch is sent from now on; the task fails with it.
            self._stop.stop(Outcome.BLOCKED, "not sent: the batch stopped after an error")
            raise
        finally:
            try:
                self._uploads.write(stored.order_id)  # the order ended without its insert's write
            except Exception as exc:  # noqa: BLE001 (a lost media id only costs an upload)
                log.warning("could not record the upload of order %s: %s", stored.order_id, exc)
            self._hold.finished(stored.order_id)

    # -- one order ----------------------------------------------------------------------------

    def _problems(self, stored: StoredOrder) -> tuple[list, bytes | None, OrderResult | None]:
        """The order's data problems, its PDF, or a result when the PDF cannot be read now."""
        order = stored.order
        problems = check_order_fields(
            bill_fields(order), now=int(self._clock()), limits=self.settings.limits
        )
        if not any(p.field == "card_id" for p in problems):
            card = check_card_allowed(order.card_id, self.settings.card_ids)
            problems += [card] if card is not None else []
        if problems:
            return problems, None, None
        try:
            pdf = self._read_pdf(
                self.settings.pdf_root, order.pdf_path, self.settings.limits.max_pdf_bytes
            )
        except errors.InvalidOrderError as exc:
            return list(exc.problems), None, None
        except errors.PdfUnavailableError as exc:
            reason = f"the PDF could not be read now ({exc.reason}): tried again later"
            return [], None, OrderResult(order.order_id, Outcome.RETRY_LATER, reason)
        except Exception as exc:  # noqa: BLE001 (any other read error ends this order alone)
            reason = f"the PDF could not be read now ({_read_error(exc)}): tried again later"
            return [], None, OrderResult(order.order_id, Outcome.RETRY_LATER, reason)
        problem = check_pdf(pdf, limits=self.settings.limits)
        return ([problem] if problem is not None else []), pdf, None

    def _one(self, stored: StoredOrder) -> OrderResult:
        order = stored.order
        # After the token endpoint's daily quota stopped the batch, the orders not reached are
        # still validated (no call is made for that: bad data ends `invalid` now, not after
        # midnight); their first call then leaves them waiting for the quota (`before_call`).
        if not self._quotas.token_met():
            self._calls.check_hold(order.order_id)
        problems, pdf, unreadable = self._problems(stored)
        if unreadable is not None:
            self.store.record_transient(
                order.order_id, hold=self._hold.of(order.order_id), run_id=self.run_id,
                step="pdf", outcome="unreadable", errcode=None, errmsg=unreadable.reason,
                not_before_s=PDF_RETRY_S,
            )  # fmt: skip
            return unreadable
        if problems:
            reason = format_problems(problems)
            written = self.store.record_end(
                order.order_id, Status.INVALID, reason, hold=self._hold.of(order.order_id),
                run_id=self.run_id, step="validate", counts_attempt=False,
            )  # fmt: skip
            return OrderResult(order.order_id, Outcome.INVALID, reason) if written else (
                self._hold.lost(order.order_id)
            )  # fmt: skip
        if stored.status == Status.AWAITING_AUTH:
            # WeChat said 72038 before: ask where the authorisation stands instead of spending
            # an insert to find out.
            ended = self._ask_authorization(stored)
            if ended is not None:
                return ended
        # Upload then insert, one order after the other in the same thread: an order's bill
        # goes in as soon as its PDF is up, never waiting for the rest of the batch.
        return self._insert(stored, self._media_id(stored, pdf), pdf)

    def _media_fresh(self, stored: StoredOrder) -> bool:
        """Whether the stored media id is young enough to be attached without a new upload."""
        if not stored.s_pdf_media_id or stored.pdf_uploaded_at is None:
            return False
        fresh_until = stored.pdf_uploaded_at + timedelta(
            seconds=MEDIA_ID_LIFETIME_S - self.settings.media_margin_s
        )
        return fresh_until > datetime.fromtimestamp(self._clock(), UTC)

    def _steps_ahead(self, stored: StoredOrder) -> list[str]:
        """The calls the order still needs, in order (the quota of each is checked up front:
        no upload for an order whose insert cannot be made today)."""
        steps = [Step.AUTHORIZATION] if stored.status == Status.AWAITING_AUTH else []
        if not self._media_fresh(stored):
            steps.append(Step.UPLOAD)
        return [*steps, Step.INSERT]

    def _ask_authorization(self, stored: StoredOrder) -> OrderResult | None:
        """getauthdata for a waiting order: None when authorised (go on to insert), else the
        order's result (still waiting, failed past the deadline, or refused by the payer)."""
        order_id = stored.order_id
        started = self._clock()
        auth = self._calls.call(
            stored, Step.AUTHORIZATION, lambda: self.api.get_auth_data(order_id),
            ahead=self._steps_ahead(stored)[1:],
        )  # fmt: skip
        rule = authorization_status_rule(auth.invoice_status)
        hold = self._hold.of(order_id)
        if rule.action is Action.SUCCESS:
            if not self.store.record_authorized(
                order_id, auth.invoice_status, hold=hold, run_id=self.run_id,
                duration_ms=self._ms(started),
            ):  # fmt: skip
                return self._hold.lost(order_id)
            return None
        if rule.action is Action.REJECT:
            written = self.store.record_end(
                order_id, Status.REJECTED, rule.reason, hold=hold, run_id=self.run_id,
                step=Step.AUTHORIZATION, errmsg=auth.invoice_status,
                duration_ms=self._ms(started),
            )  # fmt: skip
            if not written:
                return self._hold.lost(order_id)
            return OrderResult(order_id, Outcome.REJECTED, rule.reason)
        return self._ends.wait_authorization(
            stored, rule.reason, step=Step.AUTHORIZATION, errcode=None,
            errmsg=auth.invoice_status, answer=f"getauthdata: {auth.invoice_status}",
        )  # fmt: skip

    def _media_id(self, stored: StoredOrder, pdf: bytes, *, force: bool = False) -> str:
        """The order's media id: the stored one while fresh, else a new upload."""
        if not force and self._media_fresh(stored):
            return stored.s_pdf_media_id
        started = self._clock()
        media_id = self._calls.call(
            stored,
            Step.UPLOAD,
            lambda: self.api.upload_pdf(pdf, f"{stored.order_id}.pdf"),
            ahead=[Step.INSERT],
        )
        # Written with the insert's result, or on its own if that does not come at once.
        upload = Upload(media_id, self._hold.of(stored.order_id), self._ms(started))
        self._uploads.add(stored.order_id, upload)
        return media_id

    def _insert(self, stored: StoredOrder, media_id: str, pdf: bytes) -> OrderResult:
        order = stored.order
        reuploaded = False
        while True:
            started = self._clock()
            try:
                bill = self._calls.call(
                    stored, "insert", lambda m=media_id: self.api.insert_bill(order, m)
                )
            except errors.MediaExpiredError as exc:
                self._uploads.write(order.order_id)
                if reuploaded:
                    reason = (exc.rule.exhausted_reason or exc.rule.reason).format(answers=2)
                    raise self._ends.answer(
                        stored, exc, "insert", status=Status.FAILED, reason=reason
                    ) from None
                reuploaded = True
                if not self.store.forget_media(
                    order.order_id, hold=self._hold.of(order.order_id), run_id=self.run_id,
                    reason=exc.errmsg,
                ):  # fmt: skip
                    raise OrderEnded(self._hold.lost(order.order_id)) from None
                media_id = self._media_id(stored, pdf, force=True)
                continue
            return self._ends.bill(stored, bill, self._ms(started))

    def _ms(self, started: float) -> int:
        return int((self._clock() - started) * 1000)


def _read_error(exc: BaseException) -> str:
    """A read error for a reason: its kind and the system's message, never file content."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__
