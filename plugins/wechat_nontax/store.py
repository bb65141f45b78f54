"""The order store: every SQL statement the pipeline runs against the order database.

Operators, tools and tests go through this module; nowhere else holds SQL about orders. Each
write is one short autocommitted statement (plus its history row, in the same transaction), made
the moment a result is known, so a crash loses nothing and a re-run repeats nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.bill import BILL_FIELDS, Order
from wechat_nontax.policy import Status


def _sql_list(statuses: Iterable[str]) -> str:
    # Status names are the enum's own constants, never input: safe to spell into SQL.
    return "(" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


_DUE = _sql_list(Status.DUE)
_FINISHED = _sql_list(Status.FINISHED)
# A batch's unfinished orders: due ones, and those a person may have fixed before a re-run.
_NEEDS_ATTENTION = _sql_list(Status.NEEDS_ATTENTION)
_WORKABLE = _sql_list(Status.DUE | Status.NEEDS_ATTENTION)


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as the store holds it: the bill's data and where its journey stands."""

    order: Order
    status: str
    s_pdf_media_id: str | None
    pdf_uploaded_at: datetime | None
    attempts: int
    authorized_at: datetime

    @property
    def order_id(self) -> str:
        return self.order.order_id


@dataclass(frozen=True, slots=True)
class Attempt:
    at: datetime
    run_id: str | None
    step: str
    outcome: str
    errcode: int | None
    errmsg: str | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class LoadResult:
    inserted: int
    updated: int
    unchanged: int  # identical, or finished and therefore never changed by a reload


_ORDER_COLUMNS = ", ".join(BILL_FIELDS) + ", pdf_path"
# Claiming: the due rows in claim order, locked without waiting (rows another claim holds are
# skipped), stamped with the run and its lease in the same statement. The partial index
# bill_order_due_idx serves the scan; the rows are joined back by their physical address (ctid:
# the rows are locked, so it cannot move) instead of a second index lookup per row. Public so
# that the benchmark can EXPLAIN it.
CLAIM_SQL = f"""
    WITH due AS (
        SELECT ctid FROM nontax.bill_order
        WHERE status IN {_DUE}
          AND (not_before IS NULL OR not_before <= now())
          AND (claim_expires_at IS NULL OR claim_expires_at < now() OR claimed_by = %(run_id)s)
          AND (NOT %(targeted)s OR order_id = ANY(%(order_ids)s))
        ORDER BY authorized_at, order_id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    UPDATE nontax.bill_order o
       SET claimed_by = %(run_id)s,
           claim_expires_at = now() + make_interval(secs => %(lease_s)s)
      FROM due WHERE o.ctid = due.ctid
    RETURNING o.order_id, o.authorized_at
"""

_SELECT_ORDER = (
    f"SELECT {_ORDER_COLUMNS}, status, s_pdf_media_id, pdf_uploaded_at, attempts, authorized_at "
    "FROM nontax.bill_order"
)


class OrderStoreError(RuntimeError):
    """The connection to the order database is gone: nothing more can be recorded over it."""


def _stored(row: Sequence[Any]) -> StoredOrder:
    n = len(BILL_FIELDS) + 1
    return StoredOrder(Order(*row[:n]), *row[n:])


class OrderStore:
    """The order table and its history over one connection, shared safely by a task's threads."""

    def __init__(self, conn: psycopg2.extensions.connection):
        conn.autocommit = True
        self._conn = conn
        # psycopg2 connections serialise statements anyway; the lock keeps a statement and the
        # reading of its results together when several threads of a batch report at once.
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _connected(self) -> Iterator[None]:
        """Name a lost connection for what it is (psycopg2 says "connection already closed")."""
        try:
            yield
        except psycopg2.Error as exc:
            if not self._conn.closed:
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OrderStoreError(
                f"lost the connection to the order database ({first_line}): nothing after this "
                "was recorded; once the database answers, clear the task (or run the tool again)"
            ) from exc

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple]:
        with self._connected(), self._lock, self._conn, self._conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    # -- loading ----------------------------------------------------------------------------

    def upsert_orders(self, orders: Iterable[Order], *, run_id: str | None = None) -> LoadResult:
        """Insert new orders as authorized; update changed ones that are not finished.

        A reload never touches an order that is inserted, a duplicate or rejected. A changed
        order that was not finished starts its journey again (its old media id belonged to the
        old data) and the change is written to its history.
        """
        rows = [
            (o.order_id, o.card_id, o.appid, o.fee, o.title, o.billing_time, o.billing_no,
             o.billing_code, o.pdf_path)
            for o in orders
        ]  # fmt: skip
        if not rows:
            return LoadResult(0, 0, 0)
        with self._lock, self._conn, self._conn.cursor() as cur:
            returned = self._upsert(cur, rows)
            history = [(order_id, run_id, "load", "new" if is_new else "changed")
                       for order_id, is_new in returned]  # fmt: skip
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO nontax.bill_attempt (order_id, run_id, step, outcome) VALUES %s",
                history,
            )
        inserted = sum(1 for _, is_new in returned if is_new)
        updated = len(returned) - inserted
        return LoadResult(inserted, updated, len(rows) - len(returned))

    @staticmethod
    def _upsert(cur: psycopg2.extensions.cursor, rows: list[tuple]) -> list[tuple[str, bool]]:
        return psycopg2.extras.execute_values(
            cur,
            f"""
            INSERT INTO nontax.bill_order AS o ({_ORDER_COLUMNS})
            VALUES %s
            ON CONFLICT (order_id) DO UPDATE SET
                card_id = EXCLUDED.card_id, appid = EXCLUDED.appid, fee = EXCLUDED.fee,
                title = EXCLUDED.title, billing_time = EXCLUDED.billing_time,
                billing_no = EXCLUDED.billing_no, billing_code = EXCLUDED.billing_code,
                pdf_path = EXCLUDED.pdf_path,
                status = 'authorized', reason = NULL, not_before = NULL,
                s_pdf_media_id = NULL, pdf_uploaded_at = NULL,
                last_errcode = NULL, last_errmsg = NULL, updated_at = now()
            WHERE o.status NOT IN {_FINISHED}
              AND (o.card_id, o.appid, o.fee, o.title, o.billing_time, o.billing_no,
                   o.billing_code, o.pdf_path)
                  IS DISTINCT FROM
                  (EXCLUDED.card_id, EXCLUDED.appid, EXCLUDED.fee, EXCLUDED.title,
                   EXCLUDED.billing_time, EXCLUDED.billing_no, EXCLUDED.billing_code,
                   EXCLUDED.pdf_path)
            RETURNING order_id, (xmax = 0) AS is_new
            """,
            rows,
            page_size=1000,
            fetch=True,
        )

    # -- claiming ---------------------------------------------------------------------------

    def claim_due(
        self,
        run_id: str,
        *,
        lease_s: int,
        limit: int | None = None,
        order_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Claim the due orders for `run_id` and return their ids in claim order.

        Due: a due status, past `not_before`, and not held by a live claim of another run.
        Rows locked by a concurrent claim are skipped, never waited for, so two runs that claim
        at once split the orders between them. A claim is a lease: a crashed run's orders
        become due again when it expires.
        """
        rows = self._run(
            CLAIM_SQL,
            {
                "run_id": run_id,
                "lease_s": lease_s,
                "limit": limit,
                "targeted": order_ids is not None,
                "order_ids": list(order_ids or []),
            },
        )
        return [order_id for order_id, _ in sorted(rows, key=lambda r: (r[1], r[0]))]

    def hold_batch(self, run_id: str, order_ids: Sequence[str], *, lease_s: int) -> list[str]:
        """Renew this run's claim on a batch's unfinished orders; returns the ids now held.

        A re-run of a batch (cleared in the UI, hours later) takes back its orders whose lease
        has run out, but never one that another run holds right now.
        """
        rows = self._run(
            f"""
            UPDATE nontax.bill_order
               SET claimed_by = %(run_id)s,
                   claim_expires_at = now() + make_interval(secs => %(lease_s)s)
             WHERE order_id = ANY(%(order_ids)s)
               AND status IN {_WORKABLE}
               AND (claimed_by IS NULL OR claimed_by = %(run_id)s OR claim_expires_at < now())
            RETURNING order_id
            """,
            {"run_id": run_id, "order_ids": list(order_ids), "lease_s": lease_s},
        )
        held = {r[0] for r in rows}
        return [order_id for order_id in order_ids if order_id in held]

    def release(self, run_id: str) -> int:
        """End this run's claims (its orders that are still due are free for the next run)."""
        rows = self._run(
            "UPDATE nontax.bill_order SET claimed_by = NULL, claim_expires_at = NULL "
            "WHERE claimed_by = %s RETURNING 1",
            (run_id,),
        )
        return len(rows)

    # -- reading ----------------------------------------------------------------------------

    def get_orders(self, order_ids: Sequence[str]) -> list[StoredOrder]:
        rows = self._run(f"{_SELECT_ORDER} WHERE order_id = ANY(%s)", (list(order_ids),))
        by_id = {row[0]: _stored(row) for row in rows}
        return [by_id[order_id] for order_id in order_ids if order_id in by_id]

    def get_row(self, order_id: str) -> dict[str, Any] | None:
        """Every column of one order (tools and tests)."""
        with (
            self._lock,
            self._conn,
            self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            cur.execute("SELECT * FROM nontax.bill_order WHERE order_id = %s", (order_id,))
            row = cur.fetchone()
        return dict(row) if row else None

    def history(self, order_id: str) -> list[Attempt]:
        rows = self._run(
            "SELECT at, run_id, step, outcome, errcode, errmsg, duration_ms "
            "FROM nontax.bill_attempt WHERE order_id = %s ORDER BY attempt_id",
            (order_id,),
        )
        return [Attempt(*row) for row in rows]

    def needs_attention(self, limit: int = 1000) -> list[tuple[str, str, str, datetime]]:
        """(order_id, status, reason, updated_at) of the orders a person must look at."""
        return self._run(
            f"SELECT order_id, status, reason, updated_at FROM nontax.bill_order "
            f"WHERE status IN {_NEEDS_ATTENTION} ORDER BY updated_at LIMIT %s",
            (limit,),
        )

    def attention_of(self, order_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(order_id, status, reason) of those of `order_ids` that need a person."""
        return self._run(
            f"SELECT order_id, status, reason FROM nontax.bill_order "
            f"WHERE order_id = ANY(%s) AND status IN {_NEEDS_ATTENTION} ORDER BY order_id",
            (list(order_ids),),
        )

    def count_by_status(self, order_ids: Sequence[str] | None = None) -> dict[str, int]:
        if order_ids is None:
            rows = self._run("SELECT status, count(*) FROM nontax.bill_order GROUP BY status")
        else:
            rows = self._run(
                "SELECT status, count(*) FROM nontax.bill_order "
                "WHERE order_id = ANY(%s) GROUP BY status",
                (list(order_ids),),
            )
        return dict(rows)

    # -- writing results --------------------------------------------------------------------

    def _record(
        self,
        order_id: str,
        assignments: str,
        params: dict[str, Any],
        *,
        run_id: str | None,
        step: str,
        outcome: str,
        errcode: int | None = None,
        errmsg: str | None = None,
        duration_ms: int | None = None,
        counts_attempt: bool = True,
    ) -> None:
        """Update one order and append its history row: one statement, so one round trip and
        one transaction (a batch's threads share the connection: each write must be short)."""
        attempt = ", attempts = attempts + 1" if counts_attempt else ""
        history = {
            "order_id": order_id, "run_id": run_id, "step": step, "outcome": outcome,
            "errcode": errcode, "errmsg": errmsg, "duration_ms": duration_ms,
        }  # fmt: skip
        with self._connected(), self._lock, self._conn.cursor() as cur:
            cur.execute(
                f"WITH changed AS (UPDATE nontax.bill_order SET {assignments}{attempt}, "
                "updated_at = now() WHERE order_id = %(order_id)s RETURNING order_id) "
                "INSERT INTO nontax.bill_attempt "
                "(order_id, run_id, step, outcome, errcode, errmsg, duration_ms) "
                "SELECT order_id, %(run_id)s, %(step)s, %(outcome)s, %(errcode)s::integer, "
                "%(errmsg)s, %(duration_ms)s::integer FROM changed",
                {**params, **history},
            )
            if cur.rowcount != 1:
                # Nothing recorded: stop the batch rather than issue what cannot be recorded.
                raise LookupError(f"order {order_id} is not in the order table: not recorded")

    def record_uploaded(
        self, order_id: str, media_id: str, *, run_id: str | None, duration_ms: int | None = None
    ) -> None:
        self._record(
            order_id,
            "status = 'uploaded', s_pdf_media_id = %(media_id)s, pdf_uploaded_at = now(), "
            "reason = NULL, last_errcode = NULL, last_errmsg = NULL",
            {"media_id": media_id},
            run_id=run_id, step="upload", outcome="uploaded", duration_ms=duration_ms,
        )  # fmt: skip

    def record_inserted(
        self,
        order_id: str,
        code: str,
        openid: str,
        *,
        run_id: str | None,
        duration_ms: int | None = None,
    ) -> None:
        self._record(
            order_id,
            "status = 'inserted', code = %(code)s, openid = %(openid)s, inserted_at = now(), "
            "reason = NULL, not_before = NULL, last_errcode = 0, last_errmsg = 'ok', "
            "claimed_by = NULL, claim_expires_at = NULL",
            {"code": code, "openid": openid},
            run_id=run_id, step="insert", outcome="inserted", duration_ms=duration_ms,
        )  # fmt: skip

    def record_end(
        self,
        order_id: str,
        status: str,
        reason: str,
        *,
        run_id: str | None,
        step: str,
        errcode: int | None = None,
        errmsg: str | None = None,
        not_before_s: float | None = None,
        duration_ms: int | None = None,
        counts_attempt: bool = True,
    ) -> None:
        """The order ends this step in `status` (invalid, failed, rejected, duplicate, or back
        to waiting) with a reason a person can act on."""
        self._record(
            order_id,
            "status = %(status)s, reason = %(reason)s, "
            "last_errcode = coalesce(%(errcode)s, last_errcode), "
            "last_errmsg = coalesce(%(errmsg)s, last_errmsg), "
            "not_before = CASE WHEN %(not_before_s)s::float8 IS NULL THEN NULL "
            "             ELSE now() + make_interval(secs => %(not_before_s)s) END",
            {
                "status": status,
                "reason": reason,
                "errcode": errcode,
                "errmsg": errmsg,
                "not_before_s": not_before_s,
            },
            run_id=run_id, step=step, outcome=status, errcode=errcode, errmsg=errmsg,
            duration_ms=duration_ms, counts_attempt=counts_attempt,
        )  # fmt: skip

    def record_transient(
        self,
        order_id: str,
        *,
        run_id: str | None,
        step: str,
        outcome: str,
        errcode: int | None,
        errmsg: str | None,
        not_before_s: float | None = None,
        duration_ms: int | None = None,
    ) -> None:
        """A call failed in a way that may pass: the order stays due; the history says why."""
        self._record(
            order_id,
            "last_errcode = %(errcode)s, last_errmsg = %(errmsg)s, "
            "not_before = CASE WHEN %(not_before_s)s::float8 IS NULL THEN not_before "
            "             ELSE now() + make_interval(secs => %(not_before_s)s) END",
            {"errcode": errcode, "errmsg": errmsg, "not_before_s": not_before_s},
            run_id=run_id, step=step, outcome=outcome, errcode=errcode, errmsg=errmsg,
            duration_ms=duration_ms,
        )  # fmt: skip

    def forget_media(self, order_id: str, *, run_id: str | None, reason: str) -> None:
        """WeChat no longer knows the media id: the PDF must be uploaded again."""
        self._record(
            order_id,
            "status = 'authorized', s_pdf_media_id = NULL, pdf_uploaded_at = NULL",
            {},
            run_id=run_id, step="upload", outcome="media_expired", errmsg=reason,
            counts_attempt=False,
        )  # fmt: skip

    def reset(self, order_id: str, *, note: str = "reset by operator") -> bool:
        """Make an order due again after a person fixed its data (never a finished one)."""
        with self._lock, self._conn, self._conn.cursor() as cur:
            cur.execute(
                f"""
                UPDATE nontax.bill_order
                   SET status = 'authorized', reason = NULL, not_before = NULL,
                       s_pdf_media_id = NULL, pdf_uploaded_at = NULL,
                       claimed_by = NULL, claim_expires_at = NULL, updated_at = now()
                 WHERE order_id = %s AND status NOT IN {_FINISHED}
                RETURNING 1
                """,
                (order_id,),
            )
            if not cur.fetchone():
                return False
            cur.execute(
                "INSERT INTO nontax.bill_attempt (order_id, step, outcome, errmsg) "
                "VALUES (%s, 'reset', 'authorized', %s)",
                (order_id, note),
            )
        return True
