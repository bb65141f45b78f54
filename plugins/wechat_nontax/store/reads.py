"""Reads: the orders of a batch, an order's row and history, what needs a person, counts, and
the Bills view's pages (each answers from indexes at a million orders: bench/bills_view.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.store.holders import run_key
from wechat_nontax.store.sql import DUE_SQL, NEEDS_ATTENTION_SQL, ORDER_COLUMNS, REFUSAL_BLOCKS
from wechat_nontax.wechat.bill import BILL_FIELDS, Order


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as the store holds it: the bill's data and where its journey stands."""

    order: Order
    status: str
    s_pdf_media_id: str | None
    pdf_uploaded_at: datetime | None
    attempts: int
    authorized_at: datetime
    row_version: int = 1
    auth_wait_since: datetime | None = None

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


_SELECT_ORDER = (
    f"SELECT {ORDER_COLUMNS}, status, s_pdf_media_id, pdf_uploaded_at, attempts, authorized_at, "
    "row_version, auth_wait_since FROM nontax.bill_order"
)

# Orders by status from the kept counts (migration 0008): a handful of rows, whatever the size.
COUNTS_SQL = (
    "SELECT status, sum(orders) FROM nontax.bill_status_count GROUP BY status "
    "HAVING sum(orders) <> 0"
)

# One order and its whole history: the primary key, and (order_id, attempt_id).
ORDER_ROW_SQL = "SELECT * FROM nontax.bill_order WHERE order_id = %s"

HISTORY_SQL = (
    "SELECT attempt_id, at, run_id, step, outcome, errcode, errmsg, duration_ms "
    "FROM nontax.bill_attempt WHERE order_id = %s ORDER BY attempt_id"
)


@dataclass(frozen=True, slots=True)
class PageMark:
    """Where a page of the Bills view starts or ends: an order's last change and its id (the
    listing's order, newest first). Pages go on from it (keyset pagination), so the 1,000th page
    reads as few index entries as the first."""

    updated_at: datetime
    order_id: str


@dataclass(frozen=True, slots=True)
class BillsPage:
    """One page of the Bills view: the orders in `statuses` changed in [since, until), or of
    those the ones whose order_id, billing_no or billing_code is `search`; newest change first;
    the `limit` older than `after`, or the `limit` newer than `before`.

    A listing reads, per status, the newest entries of bill_order_status_updated_idx (status,
    updated_at, order_id) below the mark and within the days (an index-only scan that stops
    after `limit`), and merges them; a search probes the primary key, the (billing_no,
    billing_code) key and the billing_code index. Then the page's rows, and the last history
    row of each through (order_id, attempt_id)."""

    statuses: Sequence[str]
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None
    after: PageMark | None = None
    before: PageMark | None = None
    limit: int = 50

    def sql(self) -> tuple[str, dict[str, Any]] | None:
        """The statement and its parameters; None when no status is asked for."""
        statuses, since, until, search = self.statuses, self.since, self.until, self.search
        after, before, limit = self.after, self.before, self.limit
        if not statuses:
            return None
        params: dict[str, Any] = {"since": since, "until": until, "search": search, "limit": limit}
        where = []
        if since is not None:
            where.append("updated_at >= %(since)s")
        if until is not None:
            where.append("updated_at < %(until)s")
        newer = before is not None
        mark = before if newer else after
        if mark is not None:
            params.update(mark_at=mark.updated_at, mark_id=mark.order_id)
            side = ">" if newer else "<"
            where.append(f"(updated_at, order_id) {side} (%(mark_at)s, %(mark_id)s)")
        # Newer pages read upwards from their mark, then are turned round.
        direction = "ASC" if newer else "DESC"
        order = f"ORDER BY updated_at {direction}, order_id {direction} LIMIT %(limit)s"
        if search:
            params["statuses"] = sorted(set(statuses))
            found = " AND ".join([
                "(order_id = %(search)s OR billing_no = %(search)s OR billing_code = %(search)s)",
                "status = ANY(%(statuses)s)", *where,
            ])  # fmt: skip
            picked = f"SELECT order_id, updated_at FROM nontax.bill_order WHERE {found} {order}"
        else:
            branches = []
            for i, status in enumerate(sorted(set(statuses))):
                params[f"s{i}"] = status
                found = " AND ".join([f"status = %(s{i})s", *where])
                branches.append(
                    f"(SELECT order_id, updated_at FROM nontax.bill_order WHERE {found} {order})"
                )
            picked = f"SELECT * FROM ({' UNION ALL '.join(branches)}) branch {order}"
        sql = f"""
            WITH page AS ({picked})
            SELECT o.order_id, o.status, o.reason, o.last_errcode, o.last_errmsg, o.attempts,
                   o.fee, o.title, o.billing_no, o.billing_code, o.updated_at,
                   last.step AS last_step, last.at AS last_at, last.run_id AS last_run_id
              FROM page JOIN nontax.bill_order o USING (order_id)
              LEFT JOIN LATERAL (
                    SELECT a.step, a.at, a.run_id FROM nontax.bill_attempt a
                     WHERE a.order_id = o.order_id ORDER BY a.attempt_id DESC LIMIT 1
                   ) last ON true
             ORDER BY page.updated_at DESC, page.order_id DESC
        """
        return sql, params


def _stored(row: Sequence[Any]) -> StoredOrder:
    n = len(BILL_FIELDS) + 1
    return StoredOrder(Order(*row[:n]), *row[n:])


class Reads:
    """The order store's reads: orders, history, counts for the pipeline, the UI, the commands."""

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
            cur.execute(ORDER_ROW_SQL, (order_id,))
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
            f"WHERE status IN {NEEDS_ATTENTION_SQL} ORDER BY updated_at LIMIT %s",
            (limit,),
        )

    def attention_of(self, order_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(order_id, status, reason) of those of `order_ids` that need a person."""
        return self._run(
            f"SELECT order_id, status, reason FROM nontax.bill_order "
            f"WHERE order_id = ANY(%s) AND status IN {NEEDS_ATTENTION_SQL} ORDER BY order_id",
            (list(order_ids),),
        )

    def refusal_pending(self, order_ids: Sequence[str]) -> dict[str, str]:
        """Those of `order_ids` that are due and whose refusal keeps them off issuing, with
        their status: not issued, and not left unfinished either (the requests DAG ends them,
        or a person decides)."""
        rows = self._run(
            f"SELECT order_id, status FROM nontax.bill_order WHERE order_id = ANY(%s) "
            f"AND status IN {DUE_SQL} AND {REFUSAL_BLOCKS.format(table='bill_order')}",
            (list(order_ids),),
        )
        return dict(rows)

    def count_by_status(self, order_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Orders by status (statuses with none left out): of `order_ids`, or of the whole
        table from the kept counts (migration 0008), exact and as cheap at a million orders as
        at ten."""
        if order_ids is None:
            rows = self._run(COUNTS_SQL)
        else:
            rows = self._run(
                "SELECT status, count(*) FROM nontax.bill_order "
                "WHERE order_id = ANY(%s) GROUP BY status",
                (list(order_ids),),
            )
        return {status: int(n) for status, n in rows}

    def bills_page(self, page: BillsPage) -> list[dict[str, Any]]:
        """The orders of one page of the Bills view, each with its last history row (step,
        when, run)."""
        query = page.sql()
        if query is None:
            return []
        with (
            self._lock,
            self._conn,
            self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            cur.execute(*query)
            return [dict(row) for row in cur.fetchall()]

    def history_rows(self, order_id: str) -> list[dict[str, Any]]:
        """The order's whole history, oldest first, every column (the Bills view)."""
        with (
            self._lock,
            self._conn,
            self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            cur.execute(HISTORY_SQL, (order_id,))
            return [dict(row) for row in cur.fetchall()]

    def batch_of(self, dag_id: str, run_id: str, order_id: str) -> int | None:
        """The map index of the issuing batch of the run that had `order_id` (its position in
        the run's claim, which the batches are mapped over); None when no claim of that run
        names it, or more than one does. A claim made before claims named their DAG is keyed
        by the bare run id."""
        rows = self._run(
            "SELECT DISTINCT b.i - 1 FROM nontax.run_claim c, "
            "jsonb_array_elements(c.batches) WITH ORDINALITY AS b (batch, i) "
            "WHERE c.run_id IN (%s, %s) AND b.batch ? %s",
            (run_key(dag_id, run_id), run_id, order_id),
        )
        return rows[0][0] if len(rows) == 1 else None
