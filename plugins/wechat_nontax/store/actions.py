"""A person's action on many orders at once (migration 0014): make them due again, and issue
them now, as one action with one id that names who did it and, per order, what happened.

The same rules as the action on one order hold per order: the caller's `why_not(row)` (the
Bills page's), and no order a task try holds right now. The orders are locked, checked and
changed in one transaction, each write naming the row version it read; an order refused is
recorded with its reason and left as it was. Nothing is sent to WeChat here: issue-now's run
is asked of Airflow by the caller, after the commit, and recorded with `record_run`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.store.history import append_history, history_row
from wechat_nontax.store.holds import UNHOLD
from wechat_nontax.store.sql import REFUSAL_BLOCKS, SETTLED_SQL, sql_list
from wechat_nontax.wechat.statuses import Status

HELD = "a task try holds it right now (it may be sending it): try again when its run is over"

# The orders that need a person for one reason (bill_order_attention_reason_idx, 0014).
RED_OF_REASON_SQL = (
    "SELECT order_id FROM nontax.bill_order "
    f"WHERE reason = %s AND status IN {sql_list(Status.NEEDS_ATTENTION)} "
    "ORDER BY reason, order_id LIMIT %s"
)

# What the rules read of each order: the same for the confirmation page and the action.
_FACTS_SQL = f"""
    SELECT order_id, status, reason, title, fee, row_version,
           (held_by IS NOT NULL AND claim_expires_at >= now()) AS held,
           {REFUSAL_BLOCKS.format(table="bill_order")} AS refusal_pending
      FROM nontax.bill_order WHERE order_id = ANY(%(ids)s)
     ORDER BY order_id
"""

# Each order at the version it was read at, never a finished one nor one held now.
_RESET_SQL = f"""
    UPDATE nontax.bill_order o
       SET status = 'authorized', reason = NULL, not_before = NULL, s_pdf_media_id = NULL,
           pdf_uploaded_at = NULL, auth_wait_since = NULL, row_version = o.row_version + 1,
           {UNHOLD}, updated_at = now()
      FROM (VALUES %s) AS seen (order_id, row_version)
     WHERE o.order_id = seen.order_id AND o.row_version = seen.row_version
       AND o.status NOT IN {SETTLED_SQL}
       AND (o.held_by IS NULL OR o.claim_expires_at < now())
    RETURNING o.order_id
"""


@dataclass(frozen=True, slots=True)
class ActionResult:
    action_id: int
    done: list[str]
    refused: dict[str, str]  # order_id -> why


@dataclass(frozen=True, slots=True)
class ActionRecord:
    action_id: int
    kind: str
    requested_by: str
    requested_at: datetime
    picked: str
    run_id: str | None
    orders: list[tuple[str, str, str | None]]  # (order_id, outcome, why)


class BillActions:
    """The actions on many orders, over the caller's connection (one request's)."""

    def __init__(self, conn: psycopg2.extensions.connection):
        self._conn = conn

    def red_orders_of_reason(self, reason: str, limit: int) -> list[str]:
        """The orders that need a person for exactly `reason` (the partial index of 0014)."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(RED_OF_REASON_SQL, (reason, limit))
            return [order_id for (order_id,) in cur.fetchall()]

    def facts(self, order_ids: Sequence[str]) -> list[dict[str, Any]]:
        """What the rules read of each order (and what the confirmation page shows)."""
        with self._conn, self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(_FACTS_SQL, {"ids": sorted(set(order_ids))})
            return [dict(row) for row in cur.fetchall()]

    def make_due(
        self,
        order_ids: Sequence[str],
        *,
        kind: str,
        by: str,
        picked: str,
        why_not: Callable[[dict[str, Any]], str | None],
        note: str,
    ) -> ActionResult:
        """Make the orders due again as one action of `kind` ("reset", or "issue": due again,
        then the caller asks for the run). `note` is the history's text for each order done,
        with `{action}` where the action's id goes."""
        wanted = sorted(set(order_ids))
        with self._conn, self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                "INSERT INTO nontax.bill_action (kind, requested_by, picked) VALUES (%s, %s, %s) "
                "RETURNING action_id",
                (kind, by, picked),
            )
            action_id = cur.fetchone()["action_id"]
            cur.execute(f"{_FACTS_SQL} FOR UPDATE", {"ids": wanted})
            rows = {row["order_id"]: dict(row) for row in cur.fetchall()}
            refused: dict[str, str] = {}
            fit: list[tuple[str, int]] = []
            for order_id in wanted:
                row = rows.get(order_id)
                why = "no such order" if row is None else why_not(row)
                if why is None and row["held"]:
                    why = HELD
                if why is None:
                    fit.append((order_id, row["row_version"]))
                else:
                    refused[order_id] = why
            changed = psycopg2.extras.execute_values(
                cur, _RESET_SQL, fit, page_size=max(1, len(fit)), fetch=True
            ) if fit else []  # fmt: skip
            done = sorted(row["order_id"] for row in changed)
            # Read and locked above: a row that changed all the same is refused, not guessed.
            for order_id, _ in fit:
                if order_id not in set(done):
                    refused[order_id] = "changed while the action ran: nothing done, try again"
            text = note.format(action=action_id)
            append_history(cur, [history_row(i, "reset", "authorized", errmsg=text) for i in done])
            outcomes = [(action_id, i, "done", None) for i in done]
            outcomes += [(action_id, i, "refused", why) for i, why in sorted(refused.items())]
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO nontax.bill_action_order (action_id, order_id, outcome, why) "
                "VALUES %s",
                outcomes,
                page_size=1000,
            )
        return ActionResult(action_id, done, refused)

    def record_run(self, action_id: int, run_id: str, order_ids: Sequence[str], note: str) -> None:
        """Issue-now's run, on the action and in each order's history (as the single action
        records it: step operator, outcome issue_now, the run's id)."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "UPDATE nontax.bill_action SET run_id = %s WHERE action_id = %s AND run_id IS NULL",
                (run_id, action_id),
            )
            append_history(
                cur,
                [
                    history_row(i, "operator", "issue_now", run_id=run_id, errmsg=note)
                    for i in order_ids
                ],
            )

    def get(self, action_id: int) -> ActionRecord | None:
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "SELECT kind, requested_by, requested_at, picked, run_id FROM nontax.bill_action "
                "WHERE action_id = %s",
                (action_id,),
            )
            head = cur.fetchone()
            if head is None:
                return None
            cur.execute(
                "SELECT order_id, outcome, why FROM nontax.bill_action_order WHERE action_id = %s "
                "ORDER BY outcome, order_id",
                (action_id,),
            )
            return ActionRecord(action_id, *head, orders=cur.fetchall())
