"""Issuing one batch of orders: validate, upload the PDF, insert the bill, write back each result.

This is the "how" behind the operators, free of Airflow so that it can be read and tested on its
own. It composes the hook (HTTP), the store (SQL) and the PDF reader; what to do after each answer
comes from the policy table. Every result is written to the store the moment it is known, but
an upload's media id: it goes in with the insert's result (see UPLOAD_WRITE_AFTER_S).

Concurrency: the batch's orders run in a thread pool; each thread handles one order from start to
end, so an order's calls are never concurrent with each other. A broken configuration stops the
whole batch: no further calls, the remaining orders stay due. A daily-quota answer stops only
the call (API) that got it: the orders that need that call stay due, the others go on (but
for the token endpoint's quota, which every call needs: it stops the batch).

Daily quotas are shared: a quota answer is recorded in the order database (`nontax.api_quota`)
for the appid and the call, and every batch reads that record before its calls (again at
most every QUOTA_RECHECK_S), so no batch, run or worker calls that API again before Beijing
midnight. An order waiting for its payer's
authorisation asks getauthdata first and is inserted only once it says "auth success".
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from wechat_nontax.issuing.bill import Order, bill_fields
from wechat_nontax.issuing.outcomes import OrderResult, Outcome
from wechat_nontax.issuing.validation import (
    Limits,
    check_card_allowed,
    check_order_fields,
    check_pdf,
    format_problems,
)
from wechat_nontax.observability import metrics
from wechat_nontax.settings import (
    DEFAULT_LEASE_S,
    DEFAULT_MEDIA_MARGIN_S,
    MEDIA_ID_LIFETIME_S,
    default_hold_s,
)
from wechat_nontax.store.holds import Hold, NotHeld
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.quotas import QuotaStop
from wechat_nontax.store.reads import StoredOrder
from wechat_nontax.store.sql import OrderStoreError
from wechat_nontax.store.writes import Upload
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.policy import (
    AUTHORIZATION_DEADLINE_S,
    AUTHORIZATION_RECHECK_S,
    Action,
    Status,
    Step,
    authorization_status_rule,
    seconds_until_quota_reset,
)
from wechat_nontax.wechat.retry import Backoff

log = logging.getLogger(__name__)


# An upload's media id is written with the insert's result (one write-back per order instead of
# two); when the insert has not answered this long after the upload (a slow or timed-out call,
# when a crash is likeliest to fall between the two), it is written on its own, so that the
# order's row shows its PDF is up. Checked every UPLOAD_WRITE_CHECK_S.
UPLOAD_WRITE_AFTER_S = 1.0


UPLOAD_WRITE_CHECK_S = 0.25


# The daily quota record is read at most this often by a batch (and at once when this batch
# meets a quota): well inside the 2 s a call may follow a stop recorded elsewhere (chaos.py's
# IN_FLIGHT_S), at one read per batch and half-second instead of one per call.
QUOTA_RECHECK_S = 0.5


# The calls whose quota a batch checks before each call.
ISSUING_APIS = (Step.AUTHORIZATION, Step.UPLOAD, Step.INSERT)


# A refusal asked this long before an order's upload or insert always keeps it from being sent
# (a batch looks before the order's first such call and each retry, and before its next call
# once this has passed: once per order when its calls go through at once). Within chaos.py's
# IN_FLIGHT_S with a call's time.
REFUSAL_RECHECK_S = 1.0


@dataclass(frozen=True)
class Settings:
    pdf_root: str
    limits: Limits = field(default_factory=Limits)
    max_workers: int = 16
    time_budget_s: float = 300.0  # how long transient errors may be retried inside the task
    media_margin_s: float = DEFAULT_MEDIA_MARGIN_S
    lease_s: int = DEFAULT_LEASE_S  # the run's claim on orders a finished try leaves due
    # How long a hold lasts unrenewed; raised to twice `call_reserve_s` when shorter.
    hold_s: float = field(default_factory=default_hold_s)
    call_timeout_s: float = 15.0  # the hook's timeout: a call starts only if it fits the hold
    dry_run: bool = False
    # A person cleared the task: orders that need a person are worked on again too.
    include_needs_person: bool = False
    # The account's card ids (the WeChat Connection's extra `card_ids`); None: not configured.
    card_ids: frozenset[str] | None = None

    @property
    def call_reserve_s(self) -> float:
        """Hold left that a call needs to start: a token fetch, the call, a retry after a
        refreshed token, each up to the timeout. Renewing every quarter of the hold keeps at
        least three quarters of it while the order database answers. The timeout is requests'
        per-read one, not a total: an answer that trickles in byte by byte could outlast it;
        the hold is at least twice this reserve for that margin."""
        return 3 * self.call_timeout_s + 2.0


class WeChatApi(Protocol):
    def upload_pdf(self, pdf: bytes, filename: str = ...) -> str: ...
    def insert_bill(self, order: Order, s_pdf_media_id: str): ...
    def get_auth_data(self, order_id: str): ...


PdfReader = Callable[[str, str | None, int], bytes | None]


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
        # At least twice what a call may take: a call starts only with that much hold left.
        self._hold_s = max(settings.hold_s, 2 * settings.call_reserve_s)
        self.settings = settings
        self.run_id = run_id
        # One task try: run, task, map index, try number. An earlier try of the same batch
        # shares everything before the try number.
        self.holder = holder or f"{run_id}|issue_bills|-1|1"
        self._read_pdf = read_pdf
        self._clock = clock
        self._sleep = sleep
        # Set on a daily quota, a broken configuration, a lost hold or a person stopping the
        # task: the batch's other orders are not sent.
        self._stop = threading.Event()
        self._stopped = OrderResult("", Outcome.QUOTA)
        self._stop_lock = threading.Lock()
        # The daily quotas this batch met, by api: the orders whose calls need one wait for it.
        self._met_quotas: dict[str, QuotaStop] = {}
        # Quota records are per appid, the account whose quota WeChat counts.
        self._appid = str(getattr(api, "appid", "") or "")
        self._backoff = Backoff(
            clock() + settings.time_budget_s, clock=clock, sleep=sleep,
            jitter=random.Random().random,  # noqa: S311 (jitter, not security)
        )  # fmt: skip
        self._versions: dict[str, int] = {}
        self._active: set[str] = set()  # held and not finished by this try
        self._lost: set[str] = set()  # no longer held: another holder may have it
        self._hold_valid_until = 0.0  # monotonic time until which the hold surely holds
        self._state_lock = threading.Lock()
        # Uploads whose media id is not written yet, with when they were made (monotonic): see
        # UPLOAD_WRITE_AFTER_S. The lock is held while one is written, so that the order's
        # insert result is written after its upload's row, never before.
        self._uploads: dict[str, tuple[Upload, float]] = {}
        self._upload_lock = threading.Lock()
        # The quota stops in force for the appid, as last read (monotonic time of the read).
        self._quota_lock = threading.Lock()
        self._quota_read_at = float("-inf")
        self._quota_stops: dict[str, QuotaStop] = {}
        # When each order was last looked at for a refusal asked since (monotonic time).
        self._refusal_looked: dict[str, float] = {}
        # Bills WeChat issued that the order database could not record (for the journal).
        self.unrecorded: list[OrderResult] = []

    def stop(self, reason: str) -> None:
        """Send nothing more (the task is being killed): the calls in flight are recorded if
        they end before Airflow's SIGKILL (5 s after its SIGTERM); the orders not reached stay
        due. Called from a signal handler: no lock is taken here."""
        if not self._stop.is_set():
            self._stopped = OrderResult("", Outcome.RETRY_LATER, reason)
            self._stop.set()

    def run(self, order_ids: Sequence[str]) -> list[OrderResult]:
        """Work on the batch's unfinished orders; returns one result per order id."""
        if self.settings.dry_run:
            return self._dry_run(order_ids)
        pool = None
        try:
            results = self._hold(order_ids)
            work = self.store.get_orders([i for i in order_ids if i in self._active])
            pool = ThreadPoolExecutor(
                max(1, min(self.settings.max_workers, len(work))), thread_name_prefix="order"
            )
            for result in pool.map(self._guarded, work):
                results[result.order_id] = result
            self._explain_lost(results)
        finally:
            # Also on an exception (a timeout, a kill): nothing more is sent, the calls in
            # flight finish and are recorded, the renewal ends, the hold goes back to the run.
            self._stop_batch(Outcome.RETRY_LATER, "not sent: the task stopped")
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._end_hold()
        return [results[order_id] for order_id in order_ids]

    # -- holding ------------------------------------------------------------------------------

    def _hold(self, order_ids: Sequence[str]) -> dict[str, OrderResult]:
        """Hold the batch's orders for this try. Orders an earlier try of the same batch still
        holds (a try marked failed and cleared while it runs, a zombie) are waited for, at most
        one hold's length: that try stops renewing once Airflow has stopped it."""
        instance = self.holder.rsplit("|", 1)[0] + "|"
        wait_until = time.monotonic() + self._hold_s + 5.0
        pending = list(order_ids)
        results: dict[str, OrderResult] = {}
        while True:
            started = time.monotonic()
            first = not self._versions and not results
            # A person's clear re-sends what needed a person as it stood then; an order that an
            # earlier try ends `failed` while this one waits for it is not sent again.
            hold = self.store.hold_batch(
                self.holder, pending, hold_s=self._hold_s,
                include_needs_person=self.settings.include_needs_person and first,
            )  # fmt: skip
            with self._state_lock:
                if first:
                    self._hold_valid_until = started + self._hold_s
                self._versions.update(hold.held)
                self._active.update(hold.held)
            if first:
                threading.Thread(target=self._renew_loop, name="hold-renewal", daemon=True).start()
                threading.Thread(
                    target=self._upload_loop, name="upload-writer", daemon=True
                ).start()
            earlier = [
                order_id for order_id, why in hold.not_held.items()
                if why.kind == "held" and (why.holder or "").startswith(instance)
            ]  # fmt: skip
            for order_id, why in hold.not_held.items():
                results[order_id] = OrderResult(order_id, _NOT_HELD_OUTCOME[why.kind], why.reason)
            if not earlier or time.monotonic() >= wait_until:
                for order_id in earlier:
                    results[order_id] = OrderResult(
                        order_id, Outcome.EARLIER_TRY,
                        "an earlier try of this batch still holds it: retried later",
                    )  # fmt: skip
                return results
            self._sleep(min(2.0, max(0.1, wait_until - time.monotonic())))
            pending = earlier

    def _renew_loop(self) -> None:
        interval = self._hold_s / 4
        while not self._stop.wait(interval):
            with self._state_lock:
                active = list(self._active)
            started = time.monotonic()
            try:
                still = self.store.renew_hold(self.holder, active, hold_s=self._hold_s)
            except Exception as exc:  # noqa: BLE001 (the calls stop by themselves when it lapses)
                log.warning("could not renew the hold on the batch's orders: %s", exc)
                continue
            with self._state_lock:
                self._hold_valid_until = started + self._hold_s
                self._lost.update(set(active) - still)

    # -- media ids not written yet ------------------------------------------------------------

    def _upload_loop(self) -> None:
        while not self._stop.wait(UPLOAD_WRITE_CHECK_S):
            due = time.monotonic() - UPLOAD_WRITE_AFTER_S
            with self._upload_lock:
                overdue = [o for o, (_, at) in self._uploads.items() if at <= due]
            for order_id in overdue:
                try:
                    self._write_upload(order_id)
                except Exception as exc:  # noqa: BLE001 (it is written with the insert's result)
                    log.warning("could not record the upload of order %s: %s", order_id, exc)

    def _write_upload(self, order_id: str) -> None:
        """Write the order's media id on its own if it is still waiting: before any write-back
        of the order but the insert's result, so that the history keeps the upload first."""
        with self._upload_lock:
            pending = self._uploads.pop(order_id, None)
            if pending is None:
                return
            upload = pending[0]
            if not self.store.record_uploaded(
                order_id, upload.media_id, hold=upload.hold, run_id=self.run_id,
                duration_ms=upload.duration_ms,
            ):  # fmt: skip
                with self._state_lock:
                    self._lost.add(order_id)  # no further call for it

    def _take_upload(self, order_id: str) -> Upload | None:
        """The order's media id not written yet, to write with the insert's result."""
        with self._upload_lock:
            pending = self._uploads.pop(order_id, None)
        return pending[0] if pending is not None else None

    def _check_hold(self, order_id: str) -> None:
        """Raise unless this try surely holds the order for as long as a call may take."""
        if self._stop.is_set():
            raise _OrderEnded(self._stopped_result(order_id))
        with self._state_lock:
            lost = order_id in self._lost
            left = self._hold_valid_until - time.monotonic()
        if lost:
            raise _OrderEnded(OrderResult(order_id, Outcome.HOLD_LOST, "not sent"))
        if left < self.settings.call_reserve_s:
            self._stop_batch(
                Outcome.RETRY_LATER,
                "not sent: the hold on the batch's orders could not be renewed in time (is the "
                "order database reachable?)",
            )
            raise _OrderEnded(self._stopped_result(order_id))

    def _finished(self, order_id: str) -> None:
        with self._state_lock:
            self._active.discard(order_id)

    def _end_hold(self) -> None:
        with self._state_lock:
            held = list(self._versions)  # a final write-back already ended its order's hold
        try:
            self.store.end_hold(self.holder, held, lease_s=self.settings.lease_s)
        except Exception as exc:  # noqa: BLE001 (the hold runs out by itself)
            log.warning("could not end the hold on the batch's orders (it runs out): %s", exc)

    def version_of(self, order_id: str) -> int:
        """The row version this try read of the order (what it sent)."""
        return self._versions[order_id]

    def _hold_of(self, order_id: str) -> Hold:
        return Hold(self.holder, self._versions[order_id])

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
        except _OrderEnded as ended:
            return ended.result
        except OrderStoreError as exc:
            # The order database stays away: nothing more is sent (it could not be recorded).
            self._stop_batch(Outcome.RETRY_LATER, f"not sent: {exc}")
            return OrderResult(stored.order_id, Outcome.RETRY_LATER, str(exc))
        except Exception:
            # A bug: no other order of the batch is sent from now on; the task fails with it.
            self._stop_batch(Outcome.BLOCKED, "not sent: the batch stopped after an error")
            raise
        finally:
            try:
                self._write_upload(stored.order_id)  # the order ended without its insert's write
            except Exception as exc:  # noqa: BLE001 (a lost media id only costs an upload)
                log.warning("could not record the upload of order %s: %s", stored.order_id, exc)
            self._finished(stored.order_id)

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
        # midnight); their first call then leaves them waiting for the quota (`_before_call`).
        if Step.TOKEN not in self._met_quotas:
            self._check_hold(order.order_id)
        problems, pdf, unreadable = self._problems(stored)
        if unreadable is not None:
            self.store.record_transient(
                order.order_id, hold=self._hold_of(order.order_id), run_id=self.run_id,
                step="pdf", outcome="unreadable", errcode=None, errmsg=unreadable.reason,
                not_before_s=PDF_RETRY_S,
            )  # fmt: skip
            return unreadable
        if problems:
            reason = format_problems(problems)
            written = self.store.record_end(
                order.order_id, Status.INVALID, reason, hold=self._hold_of(order.order_id),
                run_id=self.run_id, step="validate", counts_attempt=False,
            )  # fmt: skip
            return OrderResult(order.order_id, Outcome.INVALID, reason) if written else (
                self._lost_hold(order.order_id)
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
        auth = self._call(
            stored, Step.AUTHORIZATION, lambda: self.api.get_auth_data(order_id),
            ahead=self._steps_ahead(stored)[1:],
        )  # fmt: skip
        rule = authorization_status_rule(auth.invoice_status)
        hold = self._hold_of(order_id)
        if rule.action is Action.SUCCESS:
            if not self.store.record_authorized(
                order_id, auth.invoice_status, hold=hold, run_id=self.run_id,
                duration_ms=self._ms(started),
            ):  # fmt: skip
                return self._lost_hold(order_id)
            return None
        if rule.action is Action.REJECT:
            written = self.store.record_end(
                order_id, Status.REJECTED, rule.reason, hold=hold, run_id=self.run_id,
                step=Step.AUTHORIZATION, errmsg=auth.invoice_status,
                duration_ms=self._ms(started),
            )  # fmt: skip
            if not written:
                return self._lost_hold(order_id)
            return OrderResult(order_id, Outcome.REJECTED, rule.reason)
        return self._wait_authorization(
            stored, rule.reason, step=Step.AUTHORIZATION, errcode=None,
            errmsg=auth.invoice_status, answer=f"getauthdata: {auth.invoice_status}",
        )  # fmt: skip

    def _wait_authorization(
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
        hold = self._hold_of(order_id)
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
            return self._lost_hold(order_id)
        return OrderResult(order_id, outcome, reason)

    def _lost_hold(self, order_id: str) -> OrderResult:
        with self._state_lock:
            self._lost.add(order_id)
        metrics.hold_lost("order")
        return OrderResult(order_id, Outcome.HOLD_LOST, "this try's result was not recorded")

    def _explain_lost(self, results: dict[str, OrderResult]) -> None:
        """Say why each order whose hold this try lost is no longer its own: who holds it now,
        or that the hold ran out (read once, after the batch's calls)."""
        lost = [order_id for order_id, r in results.items() if r.outcome is Outcome.HOLD_LOST]
        if not lost:
            return
        try:
            why = self.store.why_not_held(lost)
        except Exception as exc:  # noqa: BLE001 (the outcome stands without its why)
            log.warning("could not read who holds the orders this try lost: %s", exc)
            return
        for order_id in lost:
            r = results[order_id]
            results[order_id] = OrderResult(
                order_id, r.outcome, f"{r.reason}: lost its hold, {lost_hold_reason(why[order_id])}"
            )

    def _media_id(self, stored: StoredOrder, pdf: bytes, *, force: bool = False) -> str:
        """The order's media id: the stored one while fresh, else a new upload."""
        if not force and self._media_fresh(stored):
            return stored.s_pdf_media_id
        started = self._clock()
        media_id = self._call(
            stored,
            Step.UPLOAD,
            lambda: self.api.upload_pdf(pdf, f"{stored.order_id}.pdf"),
            ahead=[Step.INSERT],
        )
        # Written with the insert's result, or on its own if that does not come at once.
        upload = Upload(media_id, self._hold_of(stored.order_id), self._ms(started))
        with self._upload_lock:
            self._uploads[stored.order_id] = (upload, time.monotonic())
        return media_id

    def _insert(self, stored: StoredOrder, media_id: str, pdf: bytes) -> OrderResult:
        order = stored.order
        reuploaded = False
        while True:
            started = self._clock()
            try:
                bill = self._call(
                    stored, "insert", lambda m=media_id: self.api.insert_bill(order, m)
                )
            except errors.MediaExpiredError as exc:
                self._write_upload(order.order_id)
                if reuploaded:
                    reason = (exc.rule.exhausted_reason or exc.rule.reason).format(answers=2)
                    raise self._end(
                        stored, exc, "insert", status=Status.FAILED, reason=reason
                    ) from None
                reuploaded = True
                if not self.store.forget_media(
                    order.order_id, hold=self._hold_of(order.order_id), run_id=self.run_id,
                    reason=exc.errmsg,
                ):  # fmt: skip
                    raise _OrderEnded(self._lost_hold(order.order_id)) from None
                media_id = self._media_id(stored, pdf, force=True)
                continue
            return self._record_bill(stored, bill, self._ms(started))

    def _record_bill(self, stored: StoredOrder, bill, duration_ms: int) -> OrderResult:
        """Write the bill's code at once; if the order database stays away, log it (codes are
        not secrets) and hand it to the operator's journal: it cannot be had from WeChat again."""
        order_id = stored.order_id
        try:
            status = self.store.record_inserted(
                order_id, bill.code, bill.openid, version=self._versions[order_id],
                run_id=self.run_id, duration_ms=duration_ms, upload=self._take_upload(order_id),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (whatever the database says, the code is kept)
            log.error(
                "UNRECORDED BILL: order %s is in the card package with code %s, openid %s; "
                "the order database could not record it (%s)",
                order_id, bill.code, bill.openid, exc,
            )  # fmt: skip
            self._stop_batch(Outcome.RETRY_LATER, f"not sent: the order database failed: {exc}")
            result = OrderResult(
                order_id, Outcome.UNRECORDED, f"inserted, code {bill.code}: not recorded yet",
                bill=(bill.code, bill.openid),
            )  # fmt: skip
            with self._state_lock:
                self.unrecorded.append(result)
            return result
        if status == Status.MISMATCHED:
            return OrderResult(
                order_id, Outcome.MISMATCHED,
                f"inserted, code {bill.code}, from row version {self._versions[order_id]}; the "
                "row changed while it was sent (a reload after this try's hold ran out): "
                "compare the bill with the order, void it if wrong",
            )  # fmt: skip
        return OrderResult(order_id, Outcome.INSERTED)

    def _call(self, stored: StoredOrder, step: str, call: Callable, *, ahead: Sequence[str] = ()):
        """One remote call with the policy applied: retried while the time budget lasts, and
        made only while this try surely holds the order and no daily quota of this call (or
        of the calls `ahead` of the order) is recorded as used up."""
        answers: dict[int | str, int] = {}
        token_answers = 0
        while True:
            self._before_call(stored, step, [step, *ahead], again=bool(answers or token_answers))
            started = self._clock()
            try:
                return call()
            except errors.MediaExpiredError:
                raise
            except errors.WeChatError as exc:
                self._write_upload(stored.order_id)  # the media id's row before the answer's
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
                        raise self._end(
                            stored, exc, step, status=Status.FAILED, reason=reason
                        ) from None
                    delay = self._backoff.delay(exc.rule, count)
                    self.store.record_transient(
                        stored.order_id, hold=self._hold_of(stored.order_id), run_id=self.run_id,
                        step=step, outcome="retry", errcode=exc.errcode, errmsg=exc.errmsg,
                        duration_ms=self._ms(started),
                    )  # fmt: skip
                    if not self._backoff.wait(delay):
                        raise _OrderEnded(
                            OrderResult(stored.order_id, Outcome.RETRY_LATER, str(exc))
                        ) from None
                    continue
                raise self._end(stored, exc, step) from None

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
            raise _OrderEnded(self._quota_answer(stored, exc, step, api=Step.TOKEN))
        if action is not Action.RETRY:
            self._stop_batch(Outcome.BLOCKED, f"not sent: no access token: {exc}")
            raise _OrderEnded(self._stopped_result(order_id))
        delay = self._backoff.delay(exc.rule, answers)
        if not self._backoff.fits(delay):
            self._stop_batch(
                Outcome.RETRY_LATER,
                f"not sent: no access token within the task's time budget ({answers} tries): {exc}",
            )
            raise _OrderEnded(self._stopped_result(order_id))
        log.warning(
            "no access token for order %s (%s, try %d): trying again in %.1f s",
            order_id, exc, answers, delay,
        )  # fmt: skip
        return delay

    # -- daily quotas -------------------------------------------------------------------------

    def _before_call(
        self, stored: StoredOrder, step: str, apis: Sequence[str], *, again: bool = False
    ) -> None:
        """Raise unless the call may be made now: no refusal of the order was asked since the
        batch took it, the try holds the order, and no daily quota of the call (or of the calls
        after it) is recorded as used up, by this batch or any other. The quota record is read
        at most every QUOTA_RECHECK_S by the batch: a stop another worker recorded costs at
        most that long, and no call, to find out."""
        if step in _REFUSABLE_CALLS and not self._stop.is_set():
            self._look_for_refusal(stored.order_id, again=again)
        with self._stop_lock:
            met = dict(self._met_quotas)
        stop = met.get(Step.TOKEN) or next((met[api] for api in apis if api in met), None)
        if stop is None and not self._stop.is_set():
            stops = self._recorded_quota_stops()
            stop = next((stops[api] for api in apis if api in stops), None)
        if stop is not None:
            raise _OrderEnded(self._wait_for_quota(stored, step, stop))
        self._check_hold(stored.order_id)

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
            order_id, LEFT_TO_REFUSAL, hold=self._hold_of(order_id), run_id=self.run_id
        ):
            raise _OrderEnded(OrderResult(order_id, Outcome.NOT_DUE, LEFT_TO_REFUSAL))

    def _recorded_quota_stops(self) -> dict[str, QuotaStop]:
        """The appid's quota stops in force, read again when the last read is QUOTA_RECHECK_S
        old (one thread reads, the others wait for its answer)."""
        with self._quota_lock:
            now = time.monotonic()
            if now - self._quota_read_at >= QUOTA_RECHECK_S:
                self._quota_stops = self.store.quota_stops(self._appid, ISSUING_APIS)
                self._quota_read_at = now
            return self._quota_stops

    def _quota_answer(
        self, stored: StoredOrder, exc: errors.WeChatError, step: str, *, api: str
    ) -> OrderResult:
        """WeChat answered a daily quota for `api`: record it for every batch until the quota
        resets, then leave this order waiting for it."""
        stop = self.store.record_quota_stop(
            self._appid, api, seconds=seconds_until_quota_reset(self._clock()),
            errcode=exc.errcode, errmsg=exc.errmsg, run_id=self.run_id,
        )  # fmt: skip
        return self._wait_for_quota(stored, step, stop)

    def _wait_for_quota(self, stored: StoredOrder, step: str, stop: QuotaStop) -> OrderResult:
        """Not sent for a used-up daily quota: the order stays due and is not claimed again
        before the quota resets; the batch's other orders that need that call wait for it too
        (for the token endpoint's, every call: the batch stops)."""
        reason = stop.reason()
        with self._stop_lock:
            self._met_quotas.setdefault(stop.api, stop)
        if stop.api == Step.TOKEN:
            self._stop_batch(Outcome.QUOTA, f"{reason}; left due")
        order_id = stored.order_id
        self._write_upload(order_id)
        written = self.store.record_quota_wait(
            order_id, hold=self._hold_of(order_id), run_id=self.run_id, step=step,
            errcode=stop.errcode, errmsg=reason, not_before_s=max(stop.seconds_left, 1.0),
        )  # fmt: skip
        if not written:
            return self._lost_hold(order_id)
        return OrderResult(order_id, Outcome.QUOTA, reason)

    def _end(
        self,
        stored: StoredOrder,
        exc: errors.WeChatError,
        step: str,
        *,
        status: str | None = None,
        reason: str | None = None,
    ) -> _OrderEnded:
        """Write the order's end for this task and return the exception that carries it."""
        action = exc.rule.action
        order_id = stored.order_id
        self._write_upload(order_id)
        hold = self._hold_of(order_id)
        reason = reason or f"{exc.rule.reason} ({_answer(exc)})"
        if action is Action.STOP_QUOTA:
            return _OrderEnded(self._quota_answer(stored, exc, step, api=step))
        outcome = Outcome.FAILED
        if action is Action.ALREADY_INSERTED:
            status, outcome = Status.DUPLICATE, Outcome.ALREADY_INSERTED
        elif action is Action.WAIT_AUTHORIZATION and status is None:
            return _OrderEnded(
                self._wait_authorization(
                    stored,
                    reason,
                    step=step,
                    errcode=exc.errcode,
                    errmsg=exc.errmsg,
                    answer=_answer(exc),
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
            return _OrderEnded(self._lost_hold(order_id))
        return _OrderEnded(OrderResult(order_id, outcome, reason))

    def _stop_batch(self, outcome: Outcome, reason: str) -> None:
        with self._stop_lock:
            if not self._stop.is_set():
                self._stopped = OrderResult("", outcome, reason)
                self._stop.set()

    def _stopped_result(self, order_id: str) -> OrderResult:
        return OrderResult(order_id, self._stopped.outcome, self._stopped.reason)

    def _ms(self, started: float) -> int:
        return int((self._clock() - started) * 1000)


def lost_hold_reason(why: NotHeld) -> str:
    """Why a try's hold on an order is gone, from where the order stands now (pure)."""
    if why.kind == "held":
        return f"{why.holder} holds it now"
    if why.kind == "claimed" and why.holder:
        return f"run {why.holder} claims it now"
    if why.kind in ("finished", "refusing", "needs_person", "unknown"):
        return why.reason
    return "it ran out (not renewed in time) and no one holds it now"


_NOT_HELD_OUTCOME = {
    "unknown": Outcome.FAILED,
    "finished": Outcome.ALREADY_DONE,
    "needs_person": Outcome.NOT_DUE,
    "not_yet": Outcome.NOT_DUE,
    "refusing": Outcome.NOT_DUE,
    "held": Outcome.NOT_HELD,
    "claimed": Outcome.NOT_HELD,
}


# The calls a refusal asked meanwhile keeps an order from: its upload and its insert.
_REFUSABLE_CALLS = frozenset({Step.UPLOAD, Step.INSERT})


LEFT_TO_REFUSAL = (
    "not sent: a refusal of it was asked while its batch ran; the DAG nontax_requests carries "
    "it out"
)


# An unreadable PDF whose error may pass (an I/O or object-storage error) is tried again after
# this, not at once by every retry of the task.
PDF_RETRY_S = 10 * 60.0


def _read_error(exc: BaseException) -> str:
    """A read error for a reason: its kind and the system's message, never file content."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


class _OrderEnded(Exception):
    def __init__(self, result: OrderResult):
        super().__init__(result.reason)
        self.result = result


def _answer(exc: errors.WeChatError) -> str:
    return f"errcode {exc.errcode}: {exc.errmsg}" if exc.errcode is not None else exc.errmsg
