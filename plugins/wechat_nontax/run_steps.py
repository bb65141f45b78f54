"""The run's steps around the batches: claim the due orders, warm the token, report.

Each function is what one task of the DAG does; the DAG file only wires them. They take plain
values (params, the run id) and return small, secret-free values for XCom.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from wechat_nontax.issuing import DEFAULT_LEASE_S
from wechat_nontax.policy import Status

# Airflow refuses to map past max_map_length (1024 by default); batches stay far below it.
MAX_BATCHES = 1000
# Below this a batch is not worth its own task instance (seconds of scheduling and start-up).
MIN_SPREAD_BATCH = 100


def split_batches(
    order_ids: Sequence[str], batch_size: int, *, min_batches: int = 1
) -> list[list[str]]:
    """Consecutive batches in claim order, of at most `batch_size` orders, sizes within one.

    At least `min_batches` of them (one per pool slot) while each still gets MIN_SPREAD_BATCH
    orders: a run that fits in one batch would otherwise leave the other slots idle."""
    if batch_size < 1 or min_batches < 1:
        raise ValueError(
            f"batch_size and min_batches must be at least 1: {batch_size}, {min_batches}"
        )
    if not order_ids:
        return []
    count = max(
        -(-len(order_ids) // batch_size),
        min(min_batches, len(order_ids) // MIN_SPREAD_BATCH),
    )
    if count > MAX_BATCHES:
        raise ValueError(
            f"{len(order_ids)} orders in batches of {batch_size} make {count} batches, "
            f"more than {MAX_BATCHES}: raise batch_size or set max_orders"
        )
    size, longer = divmod(len(order_ids), count)
    batches, start = [], 0
    for index in range(count):
        end = start + size + (index < longer)
        batches.append(list(order_ids[start:end]))
        start = end
    return batches


def claim_orders(
    run_id: str,
    *,
    orders_conn_id: str,
    batch_size: int,
    min_batches: int = 1,
    max_orders: int | None = None,
    order_ids: Sequence[str] | None = None,
    lease_s: int = DEFAULT_LEASE_S,
) -> list[list[str]]:
    """Claim this run's due orders (all of them, at most `max_orders`, or just `order_ids`)."""
    from wechat_nontax.orders_db import connect
    from wechat_nontax.store import OrderStore

    store = OrderStore(connect(orders_conn_id, application_name="nontax-claim"))
    try:
        claimed = store.claim_due(
            run_id, lease_s=lease_s, limit=max_orders or None, order_ids=order_ids or None
        )
    finally:
        store.close()
    return split_batches(claimed, batch_size, min_batches=min_batches)


def warm_token(*, wechat_conn_id: str) -> str:
    """Make sure the shared token is valid for the run; returns how (never the token)."""
    from wechat_nontax.hook import WeChatNonTaxHook

    hook = WeChatNonTaxHook(wechat_conn_id)
    try:
        hook.get_access_token()
        return f"token ready ({hook.token_mode})"
    finally:
        hook.close()


def count_inserted(batches: Sequence[Sequence[str]], *, orders_conn_id: str) -> int:
    """How many of the run's orders are inserted (by this run or an earlier one)."""
    from wechat_nontax.orders_db import connect
    from wechat_nontax.store import OrderStore

    order_ids = [order_id for batch in batches for order_id in batch]
    if not order_ids:
        return 0
    store = OrderStore(connect(orders_conn_id, application_name="nontax-report"))
    try:
        return store.count_by_status(order_ids).get(Status.INSERTED, 0)
    finally:
        store.close()


def build_report(
    run_id: str,
    batches: Sequence[Sequence[str]],
    *,
    orders_conn_id: str,
    started_at: datetime | None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Counts by status of the run's orders, who needs a person and why, duration and pace.

    Also ends the run's claims: what is still due is free for the next run.
    """
    from wechat_nontax.orders_db import connect
    from wechat_nontax.store import OrderStore

    order_ids = [order_id for batch in batches for order_id in batch]
    store = OrderStore(connect(orders_conn_id, application_name="nontax-report"))
    try:
        counts = store.count_by_status(order_ids) if order_ids else {}
        attention = store.attention_of(order_ids) if order_ids else []
        store.release(run_id)
    finally:
        store.close()
    duration_s = (time.time() - started_at.timestamp()) if started_at else None
    done = sum(n for status, n in counts.items() if status in Status.FINISHED)
    # Still due after every batch ended, and not because WeChat is waiting for the payer: the
    # batch gave up on them (a quota, errors past the budget, a crash). They go to the next run.
    left_due = counts.get(Status.AUTHORIZED, 0) + counts.get(Status.UPLOADED, 0)
    return {
        "orders": len(order_ids),
        "batches": len(batches),
        "by_status": dict(sorted(counts.items())),
        "inserted": counts.get(Status.INSERTED, 0),
        "left_due": 0 if dry_run else left_due,  # a dry run leaves every order due
        "dry_run": dry_run,
        "needs_attention": [{"order_id": o, "status": s, "reason": r} for o, s, r in attention],
        "duration_s": round(duration_s, 1) if duration_s is not None else None,
        "finished_per_s": round(done / duration_s, 2) if duration_s else None,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"orders claimed: {report['orders']} in {report['batches']} batches",
        f"duration: {report['duration_s']} s, finished per second: {report['finished_per_s']}",
        "by status:",
        *(f"  {status:<14} {n}" for status, n in report["by_status"].items()),
    ]
    attention = report["needs_attention"]
    if report["left_due"]:
        lines.append(f"left due for the next run: {report['left_due']} (see the batches' logs)")
    lines.append(f"needs a person: {len(attention)}")
    lines += [f"  {a['order_id']}  [{a['status']}]  {a['reason']}" for a in attention]
    return "\n".join(lines)


def finish_report(report: dict[str, Any], ti: Any) -> dict[str, Any]:
    """Log the report; fail the task (after publishing the report) when orders need a person
    or were left unfinished, so that the run shows red until they are dealt with. The verdict
    comes from the orders themselves, so a batch that crashed cannot leave a green run."""
    import logging

    logging.getLogger(__name__).info("Run report:\n%s", format_report(report))
    problems = []
    if report["needs_attention"]:
        problems.append(f"{len(report['needs_attention'])} orders need a person")
    if report["left_due"]:
        problems.append(f"{report['left_due']} orders were left unfinished")
    if problems:
        from airflow.sdk.exceptions import AirflowFailException

        ti.xcom_push(key="return_value", value=report)
        raise AirflowFailException("; ".join(problems) + ": see the report above")
    return report
