"""Loading orders into the order store: new ones inserted as authorized (or as unauthorized,
waiting for their payer), changed ones updated unless they are finished or a run holds them,
each with its row in the history."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.store.history import append_history, history_row
from wechat_nontax.store.holds import UNHOLD
from wechat_nontax.store.sql import ORDER_COLUMNS, SETTLED_SQL
from wechat_nontax.wechat.bill import BILL_FIELDS, Order
from wechat_nontax.wechat.statuses import Status

# The load's history note for an order that waits for its payer.
_WAITING_NOTE = "loaded before its payer authorised: issued once the payer's authorisation arrives"


@dataclass(frozen=True, slots=True)
class LoadResult:
    inserted: int
    updated: int
    unchanged: int  # identical, or finished and therefore never changed by a reload
    # Changed orders left as they are because a run holds them: (order_id, run_id).
    held: tuple[tuple[str, str], ...] = ()


class OrderLoads:
    """The order store's loads (`nontax load`, the unit's reloads)."""

    def upsert_orders(
        self,
        orders: Iterable[Order],
        *,
        run_id: str | None = None,
        waiting_for_payer: Collection[str] = frozenset(),
    ) -> LoadResult:
        """Insert new orders as authorized, or as unauthorized for those named in
        `waiting_for_payer` (loaded before their payer authorised: not due until the payer's
        authorisation event); update changed ones that are not finished.

        An unauthorized order stays unauthorized when reloaded so, and becomes authorized (due)
        when a reload says its payer authorised; any other order a reload changes starts again
        as authorized (a reload never takes back an authorisation). Its link is kept unless
        the fee changed (the link names the money).

        A reload never touches an order that is inserted, a duplicate or rejected, nor one that
        a run holds right now (it would send the copy it read and record the result on the
        changed row): those are listed in `held`, to be loaded again once the run ended. A
        changed order starts its journey again: a new row version, no media id (it belonged to
        the old data), the authorisation wait from zero; the change goes into its history.
        """
        orders = list(orders)
        waiting = frozenset(waiting_for_payer)
        rows = [
            (o.order_id, o.card_id, o.appid, o.fee, o.title, o.billing_time, o.billing_no,
             o.billing_code, o.pdf_path,
             (Status.UNAUTHORIZED if o.order_id in waiting else Status.AUTHORIZED).value)
            for o in orders
        ]  # fmt: skip
        if not rows:
            return LoadResult(0, 0, 0)
        with self._lock, self._conn, self._conn.cursor() as cur:
            returned = self._upsert(cur, rows)
            append_history(cur, (
                history_row(order_id, "load", "new" if is_new else "changed", run_id=run_id,
                            errmsg=_WAITING_NOTE if status == Status.UNAUTHORIZED else None)
                for order_id, is_new, status in returned
            ))  # fmt: skip
            held = self._held_and_changed(cur, orders, {order_id for order_id, *_ in returned})
        inserted = sum(1 for _, is_new, _ in returned if is_new)
        updated = len(returned) - inserted
        return LoadResult(inserted, updated, len(rows) - len(returned) - len(held), tuple(held))

    @staticmethod
    def _upsert(cur: psycopg2.extensions.cursor, rows: list[tuple]) -> list[tuple[str, bool, str]]:
        return psycopg2.extras.execute_values(
            cur,
            f"""
            INSERT INTO nontax.bill_order AS o ({ORDER_COLUMNS}, status)
            VALUES %s
            ON CONFLICT (order_id) DO UPDATE SET
                card_id = EXCLUDED.card_id, appid = EXCLUDED.appid, fee = EXCLUDED.fee,
                title = EXCLUDED.title, billing_time = EXCLUDED.billing_time,
                billing_no = EXCLUDED.billing_no, billing_code = EXCLUDED.billing_code,
                pdf_path = EXCLUDED.pdf_path,
                status = CASE WHEN o.status = 'unauthorized' THEN EXCLUDED.status
                              ELSE 'authorized' END,
                authorized_at = CASE WHEN o.status = 'unauthorized' THEN now()
                                     ELSE o.authorized_at END,
                auth_url = CASE WHEN o.fee = EXCLUDED.fee THEN o.auth_url END,
                auth_url_expires_at = CASE WHEN o.fee = EXCLUDED.fee
                                           THEN o.auth_url_expires_at END,
                reason = NULL, not_before = NULL,
                s_pdf_media_id = NULL, pdf_uploaded_at = NULL, auth_wait_since = NULL,
                row_version = o.row_version + 1,
                last_errcode = NULL, last_errmsg = NULL, updated_at = now(),
                -- a try whose hold ran out must not renew it on the new version
                {UNHOLD}
            WHERE o.status NOT IN {SETTLED_SQL}
              AND (o.claim_expires_at IS NULL OR o.claim_expires_at < now())
              AND ((o.card_id, o.appid, o.fee, o.title, o.billing_time, o.billing_no,
                    o.billing_code, o.pdf_path)
                   IS DISTINCT FROM
                   (EXCLUDED.card_id, EXCLUDED.appid, EXCLUDED.fee, EXCLUDED.title,
                    EXCLUDED.billing_time, EXCLUDED.billing_no, EXCLUDED.billing_code,
                    EXCLUDED.pdf_path)
                   OR (o.status = 'unauthorized' AND EXCLUDED.status = 'authorized'))
            RETURNING order_id, (xmax = 0) AS is_new, status
            """,
            rows,
            page_size=1000,
            fetch=True,
        )

    @staticmethod
    def _held_and_changed(
        cur: psycopg2.extensions.cursor, orders: list[Order], written: set[str]
    ) -> list[tuple[str, str]]:
        """Of the orders the upsert left alone, those that differ and are held by a run."""
        rest = [o for o in orders if o.order_id not in written]
        if not rest:
            return []
        cur.execute(
            f"SELECT {ORDER_COLUMNS}, claimed_by FROM nontax.bill_order "
            f"WHERE order_id = ANY(%s) AND status NOT IN {SETTLED_SQL} "
            "AND claim_expires_at >= now()",
            ([o.order_id for o in rest],),
        )
        n = len(BILL_FIELDS) + 1
        stored = {row[0]: (Order(*row[:n]), row[n]) for row in cur.fetchall()}
        return [
            (o.order_id, stored[o.order_id][1])
            for o in rest
            if o.order_id in stored and stored[o.order_id][0] != o
        ]
