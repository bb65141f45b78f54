"""Carrying requests out: every SQL statement the DAG `nontax_requests` runs about them.

Who may work on a request: the task try that HOLDS its order, with the very columns and the
lease the issuing batches use (`claimed_by`, `held_by`, `claim_expires_at`), so a refusal and
an insert of the same order never run at once; and while a refusal is pending the issuing claim
skips its order (`store.holds`), so the refusal is never overtaken by an insert it was asked to
prevent. Every write-back names the holder and the order's row version it read (`store.Hold`)
and changes nothing when either is no longer true.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.extensions

from wechat_nontax.requests.contract import (
    ACTS_ON,
    NEEDS_PERSON,
    ORDER_FACTS_COLUMNS,
    RequestKind,
    RequestStatus,
    note_request,
    order_facts,
    what_next,
    why_not_carried_out,
)
from wechat_nontax.store.history import append_history, history_row
from wechat_nontax.store.holders import Hold
from wechat_nontax.store.holds import UNHOLD, held_guard, hold_params, hold_sql
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.sql import sql_list
from wechat_nontax.wechat.statuses import Status
from wechat_nontax.wechat.timing import beijing_time
from wechat_nontax.wechat.validation import check_refusal, check_status_change, format_problems


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int
    order_id: str
    kind: str
    reason: str
    requested_by: str


@dataclass(frozen=True, slots=True)
class Taken:
    """A request whose order this try holds: what the call needs, and the hold to write with."""

    request: Request
    hold: Hold
    card_id: str
    code: str | None
    calls: int  # calls made for the request so far, by every try


@dataclass(frozen=True, slots=True)
class RequestRow:
    """A request as `make attention`, `history` and the report show it."""

    request_id: int
    order_id: str
    kind: str
    status: str
    reason: str
    requested_by: str
    requested_at: datetime
    outcome: str | None
    errcode: int | None
    attempts: int
    updated_at: datetime
    held_by: str | None = None  # the task try that last took it
    order_status: str | None = None  # its order's status now


# A request with its order's status (what a person can do next depends on it).
_ROW_SELECT = (
    "SELECT r.request_id, r.order_id, r.kind, r.status, r.reason, r.requested_by, "
    "r.requested_at, r.outcome, r.errcode, r.attempts, r.updated_at, r.held_by, o.status "
    "FROM nontax.bill_request r JOIN nontax.bill_order o USING (order_id)"
)


class RequestStore:
    """The requests and the holds on their orders, over one autocommitted connection. The holds
    are the order store's (`store.hold_sql`, `renew_hold`, `release`): one protocol for both
    pipelines."""

    def __init__(self, conn: psycopg2.extensions.connection):
        conn.autocommit = True
        self._conn = conn
        self._orders = OrderStore(conn)

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, params: Any = ()) -> list[tuple]:
        with self._conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def pending(self, limit: int | None = None) -> list[Request]:
        """The pending requests whose time has come, in the order they were asked."""
        rows = self._rows(
            "SELECT request_id, order_id, kind, reason, requested_by FROM nontax.bill_request "
            "WHERE status = 'pending' AND (not_before IS NULL OR not_before <= now()) "
            "ORDER BY requested_at, request_id LIMIT %s",
            (limit,),
        )
        return [Request(*row) for row in rows]

    def take(
        self, request: Request, *, run_id: str, holder: str, hold_s: float
    ) -> Taken | RequestRow | str:
        """Hold the request's order for this try: `Taken`; or the request ended `refused` here
        because its order's status does not allow it (a `RequestRow`, no call to make); or
        why it waits (a `str`: the order is claimed or held by a run or another try, or the
        request is no longer pending)."""
        with self._conn, self._conn.cursor() as cur:
            # The order first, then the request, as every write-back locks them: two tries over
            # the same requests then wait for each other instead of deadlocking.
            cur.execute(
                "SELECT status, claimed_by, held_by, card_id, code FROM nontax.bill_order "
                "WHERE order_id = %s FOR UPDATE",
                (request.order_id,),
            )
            status, claimed_by, held_by, card_id, code = cur.fetchone()
            cur.execute(
                "SELECT 1 FROM nontax.bill_request WHERE request_id = %s AND status = 'pending' "
                "FOR UPDATE SKIP LOCKED",
                (request.request_id,),
            )
            if cur.fetchone() is None:
                return "no longer pending, or another try is looking at it"
            why = why_not_carried_out(request.kind, status)
            if why is not None:
                self._end_request(cur, request, RequestStatus.REFUSED, why, run_id=run_id)
                return self._row(cur, request.request_id)
            cur.execute(hold_sql("TRUE"), hold_params(holder, [request.order_id], hold_s))
            taken = cur.fetchone()
            if taken is None:
                wait = (
                    f"waiting: its order is held by {held_by}"
                    if held_by
                    else f"waiting: its order is claimed by run {claimed_by}"
                )
                cur.execute(
                    "UPDATE nontax.bill_request SET outcome = %s, run_id = %s, updated_at = now() "
                    "WHERE request_id = %s",
                    (wait, run_id, request.request_id),
                )
                return wait
            cur.execute(
                "UPDATE nontax.bill_request SET held_by = %s, run_id = %s, updated_at = now() "
                "WHERE request_id = %s RETURNING attempts",
                (holder, run_id, request.request_id),
            )
            calls = cur.fetchone()[0]
        return Taken(request, Hold(holder, taken[1]), card_id, code, calls)

    def renew(self, taken: Taken, *, hold_s: float) -> bool:
        """Extend this try's hold on the order before a call; False when it is no longer held."""
        order_id = taken.request.order_id
        return order_id in self._orders.renew_hold(taken.hold.holder, [order_id], hold_s=hold_s)

    def note_call(self, taken: Taken) -> None:
        """A call is about to be made for the request (counted before it goes out)."""
        self._rows(
            "UPDATE nontax.bill_request SET attempts = attempts + 1, updated_at = now() "
            "WHERE request_id = %s",
            (taken.request.request_id,),
        )

    def record_done(self, taken: Taken, outcome: str, *, run_id: str, errcode: int = 0) -> bool:
        """WeChat did what the request asked (now, or an earlier try's call): the order ends
        `refused` or `cancelled` and the request `done`, in one transaction, only while this try
        holds the order at the version it read. True if written."""
        request = taken.request
        status = Status.REFUSED if request.kind == RequestKind.REFUSE else Status.CANCELLED
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                f"UPDATE nontax.bill_order SET status = %(status)s, reason = %(reason)s, "
                f"last_errcode = %(errcode)s, last_errmsg = %(outcome)s, not_before = NULL, "
                f"{UNHOLD}, updated_at = now() WHERE order_id = %(order_id)s AND "
                + held_guard("holder", "version", status="status = ANY(%(acts_on)s)")
                + " RETURNING 1",
                {
                    "status": status, "reason": f"{request.kind} #{request.request_id} by "
                    f"{request.requested_by}: {request.reason}", "errcode": errcode,
                    "outcome": outcome, "order_id": request.order_id,
                    "holder": taken.hold.holder, "version": taken.hold.version,
                    "acts_on": sorted(ACTS_ON[request.kind]),
                },
            )  # fmt: skip
            if cur.fetchone() is None or not self._end_request(
                cur, request, RequestStatus.DONE, outcome, run_id=run_id, errcode=errcode,
                holder=taken.hold.holder, order_outcome=str(status),
            ):  # fmt: skip
                self._conn.rollback()
                return False
        return True

    def record_end(
        self,
        taken: Taken,
        status: RequestStatus,
        outcome: str,
        *,
        run_id: str,
        errcode: int | None = None,
        order_duplicate: bool = False,
    ) -> bool:
        """The request ends `refused` or `failed` with `outcome`; the order's hold ends and the
        order stays as it is, except `order_duplicate` (a refusal WeChat answered 72056: the
        bill is in the card package), which records the order `duplicate` as an insert would,
        its facts in the reason for WeChat's back office (the one place the bill can be voided:
        its code is unknown)."""
        order_set = (
            "status = 'duplicate', reason = %(outcome)s, last_errcode = %(errcode)s, "
            "last_errmsg = %(outcome)s, "
            if order_duplicate
            else ""
        )
        with self._conn, self._conn.cursor() as cur:
            if order_duplicate:
                cur.execute(
                    f"SELECT {ORDER_FACTS_COLUMNS} FROM nontax.bill_order WHERE order_id = %s",
                    (taken.request.order_id,),
                )
                outcome = f"{outcome} ({order_facts(cur.fetchone())})"
            cur.execute(
                f"UPDATE nontax.bill_order SET {order_set}{UNHOLD}, updated_at = now() "
                "WHERE order_id = %(order_id)s AND "
                + held_guard("holder", "version", status=None)
                + " RETURNING 1",
                {"outcome": outcome, "errcode": errcode, "order_id": taken.request.order_id,
                 "holder": taken.hold.holder, "version": taken.hold.version},
            )  # fmt: skip
            if cur.fetchone() is None or not self._end_request(
                cur, taken.request, status, outcome, run_id=run_id, errcode=errcode,
                holder=taken.hold.holder,
            ):  # fmt: skip
                self._conn.rollback()
                return False
        return True

    def record_waiting(
        self,
        taken: Taken,
        outcome: str,
        *,
        run_id: str,
        errcode: int | None = None,
        not_before_s: float | None = None,
    ) -> bool:
        """The request stays pending (a transient failure, a quota, no token), not tried again
        for `not_before_s`; the order's hold ends (the pending refusal still keeps the issuing
        runs off it)."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                f"UPDATE nontax.bill_order SET {UNHOLD} WHERE order_id = %s AND held_by = %s",
                (taken.request.order_id, taken.hold.holder),
            )
            cur.execute(
                "UPDATE nontax.bill_request SET outcome = %(outcome)s, "
                "errcode = coalesce(%(errcode)s, errcode), run_id = %(run_id)s, "
                "not_before = CASE WHEN %(wait)s::float8 IS NULL THEN NULL "
                "                  ELSE now() + make_interval(secs => %(wait)s) END, "
                "updated_at = now() WHERE request_id = %(id)s AND status = 'pending' RETURNING 1",
                {"outcome": outcome, "errcode": errcode, "run_id": run_id,
                 "wait": not_before_s, "id": taken.request.request_id},
            )  # fmt: skip
            written = cur.fetchone() is not None
            if written:
                note_request(cur, taken.request.order_id, "waiting", outcome, run_id)
        return written

    def _end_request(
        self,
        cur: Any,
        request: Request,
        status: RequestStatus,
        outcome: str,
        *,
        run_id: str,
        errcode: int | None = None,
        holder: str | None = None,
        order_outcome: str | None = None,
    ) -> bool:
        cur.execute(
            "UPDATE nontax.bill_request SET status = %(status)s, outcome = %(outcome)s, "
            "errcode = coalesce(%(errcode)s, errcode), run_id = %(run_id)s, "
            "done_at = CASE WHEN %(status)s = 'done' THEN now() END, updated_at = now() "
            "WHERE request_id = %(id)s AND status = 'pending' "
            "AND (%(holder)s::text IS NULL OR held_by = %(holder)s) RETURNING 1",
            {"status": status, "outcome": outcome, "errcode": errcode, "run_id": run_id,
             "id": request.request_id, "holder": holder},
        )  # fmt: skip
        if cur.fetchone() is None:
            return False
        append_history(cur, [history_row(
            request.order_id, request.kind, order_outcome or f"request_{status}",
            run_id=run_id, errcode=errcode, errmsg=f"#{request.request_id}: {outcome}",
        )])  # fmt: skip
        return True

    def _row(self, cur: Any, request_id: int) -> RequestRow:
        cur.execute(f"{_ROW_SELECT} WHERE r.request_id = %s", (request_id,))
        return RequestRow(*cur.fetchone())

    def release(self, run: str, holder: str | None = None) -> int:
        """End the claims of the run `run` (a run key) and, with `holder`, that try's holds
        (`OrderStore.release`)."""
        return self._orders.release(run, holder)

    # -- reading --------------------------------------------------------------------------

    def of_run(self, run_id: str) -> list[RequestRow]:
        rows = self._rows(f"{_ROW_SELECT} WHERE r.run_id = %s ORDER BY r.request_id", (run_id,))
        return [RequestRow(*row) for row in rows]

    def of_order(self, order_id: str) -> list[RequestRow]:
        rows = self._rows(f"{_ROW_SELECT} WHERE r.order_id = %s ORDER BY r.request_id", (order_id,))
        return [RequestRow(*row) for row in rows]

    def needs_attention(self, limit: int = 1000) -> list[RequestRow]:
        """Requests that ended refused or failed (a person decides what next: withdraw or ask
        again), pending ones that have waited with a reason (a transient failure, a quota, an
        order held long), and pending ones a try took and has not written back (in flight, or
        the try stopped between its call and the write-back: the next run finds out)."""
        rows = self._rows(
            f"{_ROW_SELECT} "
            f"WHERE r.status IN {sql_list(NEEDS_PERSON)} "
            "   OR (r.status = 'pending' AND (r.outcome IS NOT NULL OR r.held_by IS NOT NULL)) "
            "ORDER BY r.updated_at LIMIT %s",
            (limit,),
        )
        return [RequestRow(*row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        return dict(
            self._rows("SELECT kind || ' ' || status, count(*) FROM nontax.bill_request GROUP BY 1")
        )


def call_problems(taken: Taken) -> str | None:
    """What the call's own checks would refuse (`validation`), before it is made: a request a
    unit's system inserted with a reason WeChat would not take, a void of an order without a
    code. None when the call may go out."""
    request = taken.request
    if request.kind == RequestKind.REFUSE:
        problems = check_refusal(request.order_id, request.reason)
    else:
        problems = check_status_change(taken.card_id, taken.code, "CANCEL")
    return format_problems(problems) if problems else None


def format_request(row: RequestRow) -> str:
    """One line for `make attention`, `history` and the report, with what a person can do."""
    code = "" if row.errcode is None else f" errcode {row.errcode}"
    outcome = row.outcome
    if outcome is None and row.status == RequestStatus.PENDING and row.held_by:
        outcome = (
            f"in flight since {beijing_time(row.updated_at)}: taken by {row.held_by}, "
            f"{row.attempts} call(s) made, no answer recorded yet (if that try stopped, the "
            "next run asks WeChat again and records what it finds)"
        )
    outcome = f": {outcome}" if outcome else ""
    step = what_next(row.request_id, row.order_id, row.kind, row.status, row.order_status)
    step = f" -> {step}" if step else ""
    return (
        f"#{row.request_id} {row.kind} {row.order_id} [{row.status}]{code} asked "
        f"{beijing_time(row.requested_at)} by {row.requested_by} ({row.reason!r}){outcome}"
        f"{step}"
    )
