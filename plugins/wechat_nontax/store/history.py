"""The append-only history of an order (`nontax.bill_attempt`): its one writer. Every step of
both pipelines, a load, a reset, a person's action and a request's step append through here,
either as rows (`append_history`) or as a statement's tail (`insert_history`, for a write-back
that updates its order and appends its row in one statement). The one other: the payer's
authorisation event, applied inside the database (`nontax.apply_authorization_events`,
migrations 0012-0013) in the receiver's or the load's one transaction, appends its `payer` row
there."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg2.extras

# The order of the values every caller gives: (order_id, run_id, step, outcome, errcode,
# errmsg, duration_ms).
HISTORY_COLUMNS = "order_id, run_id, step, outcome, errcode, errmsg, duration_ms"


def insert_history(source: str) -> str:
    """The INSERT of history rows taken from `source` (a SELECT or VALUES giving the columns in
    `HISTORY_COLUMNS` order), to end a statement with, e.g. after a CTE that updates the order."""
    return f"INSERT INTO nontax.bill_attempt ({HISTORY_COLUMNS}) {source}"


def history_row(
    order_id: str,
    step: str,
    outcome: str,
    *,
    run_id: str | None = None,
    errcode: int | None = None,
    errmsg: str | None = None,
    duration_ms: int | None = None,
) -> tuple[Any, ...]:
    return (order_id, run_id, step, outcome, errcode, errmsg, duration_ms)


def append_history(cur: Any, rows: Iterable[tuple[Any, ...]]) -> None:
    """Append `history_row`s in the caller's transaction (one statement however many)."""
    rows = list(rows)
    if rows:
        psycopg2.extras.execute_values(cur, insert_history("VALUES %s"), rows, page_size=1000)
