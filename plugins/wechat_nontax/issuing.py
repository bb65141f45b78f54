"""Issuing one batch of orders: validate, upload the PDF, insert the bill, write back each result.

This is the "how" behind the operators, free of Airflow so that it can be read and tested on its
own. It composes the hook (HTTP), the store (SQL) and the PDF reader; what to do after each answer
comes from the policy table. Every result is written to the store the moment it is known.

Concurrency: the batch's orders run in a thread pool; each thread handles one order from start to
end, so an order's calls are never concurrent with each other. A daily-quota answer or a broken
configuration stops the whole batch: no further calls, the remaining orders stay due.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from wechat_nontax import errors
from wechat_nontax.bill import Order, bill_fields
from wechat_nontax.policy import (
    AUTHORIZATION_DEADLINE_S,
    AUTHORIZATION_RECHECK_S,
    Action,
    Status,
    seconds_until_quota_reset,
)
from wechat_nontax.store import OrderStore, StoredOrder
from wechat_nontax.validation import (
    Limits,
    check_card_allowed,
    check_order_fields,
    check_pdf,
    format_problems,
)

# WeChat deletes a media id that is not attached to a card within 3 days; upload again well
# before that.
MEDIA_LIFETIME_S = 3 * 24 * 3600
DEFAULT_MEDIA_MARGIN_S = 6 * 3600
# How long a claim holds an order: longer than any run, short enough that a crashed run's
# orders are due again the same day.
DEFAULT_LEASE_S = 3600


class Outcome(StrEnum):
    """How one order left this task."""

    INSERTED = "inserted"
    VALIDATED = "validated"  # dry run: valid, nothing sent
    ALREADY_DONE = "already_done"  # finished before this task started
    ALREADY_INSERTED = "already_inserted"  # 72056: in the card package, code/openid unknown
    REJECTED = "rejected"  # 72035: can never be inserted
    AWAITING_AUTH = "awaiting_auth"  # 72038: asked again later
    QUOTA = "quota"  # daily quota reached: left due for the next run
    RETRY_LATER = "retry_later"  # transient errors outlasted the time budget: left due
    NOT_HELD = "not_held"  # another live run holds the order
    BLOCKED = "blocked"  # not sent: the batch stopped (no access token): left due
    INVALID = "invalid"  # bad data: needs a person
    FAILED = "failed"  # permanent refusal: needs a person


NEEDS_PERSON = frozenset({Outcome.INVALID, Outcome.FAILED, Outcome.BLOCKED})
PASSES_BY_WAITING = frozenset({Outcome.RETRY_LATER})


@dataclass(frozen=True, slots=True)
class OrderResult:
    order_id: str
    outcome: Outcome
    reason: str = ""


@dataclass(frozen=True)
class Settings:
    pdf_root: str
    limits: Limits = field(default_factory=Limits)
    max_workers: int = 16
    time_budget_s: float = 300.0  # how long transient errors may be retried inside the task
    media_margin_s: float = DEFAULT_MEDIA_MARGIN_S
    lease_s: int = DEFAULT_LEASE_S
    dry_run: bool = False
    # The account's card ids (the WeChat Connection's extra `card_ids`); None: not configured.
    card_ids: frozenset[str] | None = None


class WeChatApi(Protocol):
    def upload_pdf(self, pdf: bytes, filename: str = ...) -> str: ...
    def insert_bill(self, order: Order, s_pdf_media_id: str): ...


PdfReader = Callable[[str, str | None, int], bytes | None]


class BatchIssuer:
    def __init__(
        self,
        api: WeChatApi,
        store: OrderStore,
        settings: Settings,
        *,
        run_id: str,
        read_pdf: PdfReader,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.api = api
        self.store = store
        self.settings = settings
        self.run_id = run_id
        self._read_pdf = read_pdf
        self._clock = clock
        self._sleep = sleep
        self._deadline = clock() + settings.time_budget_s
        # Set on a daily quota or a broken configuration: the batch's other orders are not sent.
        self._stop = threading.Event()
        self._stopped = OrderResult("", Outcome.QUOTA)
        self._random = random.Random()  # noqa: S311 (jitter, not security)

    def run(self, order_ids: Sequence[str]) -> list[OrderResult]:
        """Work on the batch's unfinished orders; returns one result per order id."""
        held = set(self.store.hold_batch(self.run_id, order_ids, lease_s=self.settings.lease_s))
        stored = {o.order_id: o for o in self.store.get_orders(order_ids)}
        work = [stored[i] for i in order_ids if i in held]
        results: dict[str, OrderResult] = {}
        for order_id in order_ids:
            if order_id in held:
                continue
            current = stored.get(order_id)
            if current is None:
                results[order_id] = OrderResult(order_id, Outcome.FAILED, "no such order")
            elif current.status in Status.FINISHED:
                results[order_id] = OrderResult(order_id, Outcome.ALREADY_DONE, current.status)
            else:
                results[order_id] = OrderResult(
                    order_id, Outcome.NOT_HELD, "another run holds this order right now"
                )
        workers = max(1, min(self.settings.max_workers, len(work)))
        with ThreadPoolExecutor(workers, thread_name_prefix="order") as pool:
            for result in pool.map(self._guarded, work):
                results[result.order_id] = result
        return [results[order_id] for order_id in order_ids]

    def _guarded(self, stored: StoredOrder) -> OrderResult:
        try:
            return self._one(stored)
        except Exception:
            # Not WeChat: the order store (a lost connection) or a bug. No other order of the
            # batch is sent from now on, so that no bill is issued that cannot be recorded;
            # the task fails with this error.
            self._stop_batch(Outcome.BLOCKED, "not sent: the batch stopped after an error")
            raise

    # -- one order ----------------------------------------------------------------------------

    def _one(self, stored: StoredOrder) -> OrderResult:
        order = stored.order
        if self._stop.is_set():
            return self._stopped_result(order.order_id)
        problems = check_order_fields(
            bill_fields(order), now=int(self._clock()), limits=self.settings.limits
        )
        if not any(p.field == "card_id" for p in problems):
            card = check_card_allowed(order.card_id, self.settings.card_ids)
            problems += [card] if card is not None else []
        pdf = None
        if not problems:
            try:
                pdf = self._read_pdf(
                    self.settings.pdf_root, order.pdf_path, self.settings.limits.max_pdf_bytes
                )
            except errors.InvalidOrderError as exc:
                problems = list(exc.problems)
            else:
                if (problem := check_pdf(pdf, limits=self.settings.limits)) is not None:
                    problems = [problem]
        if problems:
            reason = format_problems(problems)
            self.store.record_end(
                order.order_id, Status.INVALID, reason, run_id=self.run_id, step="validate",
                counts_attempt=False,
            )  # fmt: skip
            return OrderResult(order.order_id, Outcome.INVALID, reason)
        if self.settings.dry_run:
            return OrderResult(order.order_id, Outcome.VALIDATED)
        try:
            # Upload then insert, one order after the other in the same thread: an order's bill
            # goes in as soon as its PDF is up, never waiting for the rest of the batch.
            return self._insert(stored, self._media_id(stored, pdf), pdf)
        except _OrderEnded as ended:
            return ended.result

    def _media_id(self, stored: StoredOrder, pdf: bytes, *, force: bool = False) -> str:
        """The order's media id: the stored one while fresh, else a new upload."""
        fresh_until = None
        if stored.pdf_uploaded_at is not None:
            fresh_until = stored.pdf_uploaded_at + timedelta(
                seconds=MEDIA_LIFETIME_S - self.settings.media_margin_s
            )
        now = datetime.fromtimestamp(self._clock(), UTC)
        if not force and stored.s_pdf_media_id and fresh_until and fresh_until > now:
            return stored.s_pdf_media_id
        started = self._clock()
        media_id = self._call(
            stored, "upload", lambda: self.api.upload_pdf(pdf, f"{stored.order_id}.pdf")
        )
        self.store.record_uploaded(
            stored.order_id, media_id, run_id=self.run_id, duration_ms=self._ms(started)
        )
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
                if reuploaded:
                    raise self._end(stored, exc, "insert") from None
                reuploaded = True
                self.store.forget_media(order.order_id, run_id=self.run_id, reason=exc.errmsg)
                media_id = self._media_id(stored, pdf, force=True)
                continue
            self.store.record_inserted(
                order.order_id, bill.code, bill.openid, run_id=self.run_id,
                duration_ms=self._ms(started),
            )  # fmt: skip
            return OrderResult(order.order_id, Outcome.INSERTED)

    def _call(self, stored: StoredOrder, step: str, call: Callable):
        """One remote call with the policy applied: retried while the time budget lasts."""
        answers: dict[int | str, int] = {}
        while True:
            if self._stop.is_set():
                raise _OrderEnded(self._stopped_result(stored.order_id))
            started = self._clock()
            try:
                return call()
            except errors.MediaExpiredError:
                raise
            except errors.WeChatError as exc:
                if exc.step == "token":
                    self._stop_batch(Outcome.BLOCKED, f"not sent: no access token: {exc}")
                    raise _OrderEnded(self._stopped_result(stored.order_id)) from None
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
                    delay = exc.rule.delay_s(count, now=self._clock(), jitter=self._random.random())
                    self.store.record_transient(
                        stored.order_id, run_id=self.run_id, step=step, outcome="retry",
                        errcode=exc.errcode, errmsg=exc.errmsg, duration_ms=self._ms(started),
                    )  # fmt: skip
                    if self._clock() + delay > self._deadline:
                        raise _OrderEnded(
                            OrderResult(stored.order_id, Outcome.RETRY_LATER, str(exc))
                        ) from None
                    self._sleep(delay)
                    continue
                raise self._end(stored, exc, step) from None

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
        reason = reason or f"{exc.rule.reason} ({_answer(exc)})"
        if action is Action.STOP_QUOTA:
            wait = seconds_until_quota_reset(self._clock())
            self._stop_batch(
                Outcome.QUOTA, f"daily quota reached ({_answer(exc)}): left due for tomorrow"
            )
            self.store.record_transient(
                order_id, run_id=self.run_id, step=step, outcome="quota",
                errcode=exc.errcode, errmsg=exc.errmsg, not_before_s=wait,
            )  # fmt: skip
            return _OrderEnded(self._stopped_result(order_id))
        if action is Action.ALREADY_INSERTED:
            self.store.record_end(
                order_id, Status.DUPLICATE, reason, run_id=self.run_id, step=step,
                errcode=exc.errcode, errmsg=exc.errmsg,
            )  # fmt: skip
            return _OrderEnded(OrderResult(order_id, Outcome.ALREADY_INSERTED, reason))
        if action is Action.WAIT_AUTHORIZATION:
            waited = self._clock() - stored.authorized_at.timestamp()
            if waited < AUTHORIZATION_DEADLINE_S:
                self.store.record_end(
                    order_id, Status.AWAITING_AUTH, reason, run_id=self.run_id, step=step,
                    errcode=exc.errcode, errmsg=exc.errmsg, not_before_s=AUTHORIZATION_RECHECK_S,
                )  # fmt: skip
                return _OrderEnded(OrderResult(order_id, Outcome.AWAITING_AUTH, reason))
            status = Status.FAILED
            reason = f"not authorised {waited / 3600:.0f} h after it was loaded ({_answer(exc)})"
        if action is Action.REJECT:
            status = Status.REJECTED
        status = status or Status.FAILED
        self.store.record_end(
            order_id, status, reason, run_id=self.run_id, step=step,
            errcode=exc.errcode, errmsg=exc.errmsg,
        )  # fmt: skip
        outcome = Outcome.REJECTED if status == Status.REJECTED else Outcome.FAILED
        return _OrderEnded(OrderResult(order_id, outcome, reason))

    def _stop_batch(self, outcome: Outcome, reason: str) -> None:
        with _STOP_LOCK:
            if not self._stop.is_set():
                self._stopped = OrderResult("", outcome, reason)
                self._stop.set()

    def _stopped_result(self, order_id: str) -> OrderResult:
        return OrderResult(order_id, self._stopped.outcome, self._stopped.reason)

    def _ms(self, started: float) -> int:
        return int((self._clock() - started) * 1000)


_STOP_LOCK = threading.Lock()


class _OrderEnded(Exception):
    def __init__(self, result: OrderResult):
        super().__init__(result.reason)
        self.result = result


def _answer(exc: errors.WeChatError) -> str:
    return f"errcode {exc.errcode}: {exc.errmsg}" if exc.errcode is not None else exc.errmsg


def outcome_table(results: Sequence[OrderResult], *, reason_width: int = 90) -> str:
    """A plain-text table of a batch's outcomes for the task log: counts first, then every
    order, the ones that did not go through at the top."""
    counts = Counter(r.outcome for r in results)
    ordered = sorted(results, key=lambda r: r.outcome in _ROUTINE)
    width = max([len("order_id"), *(len(r.order_id) for r in results)])
    lines = [
        ", ".join(f"{outcome}: {n}" for outcome, n in counts.most_common()),
        f"{'order_id':<{width}}  {'outcome':<16}  reason",
        f"{'-' * width}  {'-' * 16}  ------",
    ]
    for r in ordered:
        reason = r.reason if len(r.reason) <= reason_width else r.reason[: reason_width - 1] + "…"
        lines.append(f"{r.order_id:<{width}}  {r.outcome:<16}  {reason}")
    return "\n".join(lines)


_ROUTINE = frozenset({Outcome.INSERTED, Outcome.VALIDATED, Outcome.ALREADY_DONE})
