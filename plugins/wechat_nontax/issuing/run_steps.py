"""The run's steps around the batches: claim the due orders, warm the token, report.

Each function is what one task of the DAG does; the DAG file only wires them. They take plain
values (params, the run id) and return small, secret-free values for XCom.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from wechat_nontax.observability import metrics
from wechat_nontax.settings import DEFAULT_LEASE_S, default_hold_s
from wechat_nontax.store.holders import RunClaim
from wechat_nontax.wechat.statuses import Status

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


# A run that has ended (or was deleted): its claims can go at once.
_ENDED_RUN_STATES = frozenset({"success", "failed", "deleted"})


def claim_orders(
    run: str,
    *,
    orders_conn_id: str,
    batch_size: int,
    min_batches: int = 1,
    max_orders: int | None = None,
    order_ids: Sequence[str] | None = None,
    lease_s: int = DEFAULT_LEASE_S,
    dry_run: bool = False,
    run_state: Callable[[str], str | None] = lambda key: None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunClaim:
    """Claim this run's due orders (all of them, at most `max_orders`, or just
    `order_ids`) under its run key `run` (`store.run_key`).

    First, orders claimed by runs that have ended (marked failed or success by a person, or
    killed with the stack) are freed: `run_state` asks Airflow for a run's state (None: not
    known to this Airflow, e.g. another deployment's; its lease is respected). Orders a task
    try of such a run still holds are waited for while the hold runs out. A dry run claims
    nothing and writes nothing: it reports what a run would take."""
    from wechat_nontax.store.connection import connect
    from wechat_nontax.store.orders import OrderStore

    store = OrderStore(connect(orders_conn_id, application_name="nontax-claim"))
    try:
        if dry_run:
            return store.peek_due(limit=max_orders or None, order_ids=order_ids)
        _free_ended_runs(store, run, run_state, sleep)
        return store.claim_run(
            run,
            lease_s=lease_s,
            split=lambda claimed: split_batches(claimed, batch_size, min_batches=min_batches),
            limit=max_orders or None,
            order_ids=order_ids,
        )
    finally:
        store.close()


def _free_ended_runs(store, run: str, run_state, sleep) -> None:
    import logging

    log = logging.getLogger(__name__)
    wait_until = time.monotonic() + default_hold_s() + 5.0
    while True:
        ended, holding = [], 0.0
        for other, held, seconds_left in store.live_claims(run):
            state = run_state(other)
            log.info(
                "run %s (%s) %s orders for %.0f s more",
                other, state or "unknown to this Airflow", "holds" if held else "claims",
                seconds_left,
            )  # fmt: skip
            if state not in _ENDED_RUN_STATES:
                continue
            if held:
                holding = max(holding, seconds_left)
            else:
                ended.append(other)
        if ended:
            log.info("freed %d orders of runs that ended: %s", store.release_runs(ended), ended)
        if not holding or time.monotonic() + 0.5 >= wait_until:
            return
        log.info("waiting up to %.0f s for the holds of tries of ended runs to run out", holding)
        sleep(min(holding + 0.5, max(0.5, wait_until - time.monotonic())))


# How long the token step asks again while the token endpoint's failure may pass (5xx, a
# timeout, -1): within its task's 5-minute timeout, leaving room for the calls themselves.
WARM_TOKEN_BUDGET_S = 120.0


def warm_token(
    *,
    wechat_conn_id: str,
    budget_s: float = WARM_TOKEN_BUDGET_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Make sure the shared token is valid for the run; returns how (never the token). A
    failure of the token endpoint that may pass is asked again with the policy's backoff for
    `budget_s`; anything else (a wrong secret, a daily quota) fails the task at once."""
    from wechat_nontax.wechat import errors
    from wechat_nontax.wechat.hook import WeChatNonTaxHook
    from wechat_nontax.wechat.retry import Backoff
    from wechat_nontax.wechat.statuses import Action

    hook = WeChatNonTaxHook(wechat_conn_id)
    # The budget on a monotonic clock; a rule that waits into the next minute reads wall time.
    backoff = Backoff(
        time.monotonic() + budget_s, clock=time.monotonic, sleep=sleep, wall=time.time
    )
    try:
        tries = 0
        while True:
            tries += 1
            try:
                hook.get_access_token()
                return f"token ready ({hook.token_mode}, {tries} tries)"
            except errors.WeChatError as exc:
                if exc.action is not Action.RETRY:
                    raise
                if not backoff.wait(backoff.delay(exc.rule, tries)):
                    raise
    finally:
        hook.close()


def count_inserted(order_ids: Sequence[str], *, orders_conn_id: str) -> int:
    """How many of the run's orders are inserted (by this run or an earlier one)."""
    from wechat_nontax.store.connection import connect
    from wechat_nontax.store.orders import OrderStore

    if not order_ids:
        return 0
    store = OrderStore(connect(orders_conn_id, application_name="nontax-report"))
    try:
        return store.count_by_status(order_ids).get(Status.INSERTED, 0)
    finally:
        store.close()


def run_order_ids(
    run: str, batches: Sequence[Sequence[str]] | None, *, orders_conn_id: str
) -> list[str]:
    """Every order the run claimed, in any try of its claim step (the order database keeps
    the run's claim; XCom holds only the last try's batches)."""
    from wechat_nontax.store.connection import connect
    from wechat_nontax.store.orders import OrderStore

    store = OrderStore(connect(orders_conn_id, application_name="nontax-report"))
    try:
        claim = store.run_claim(run)
    finally:
        store.close()
    if claim is not None:
        return claim.order_ids
    return [order_id for batch in batches or () for order_id in batch]


def build_report(
    run: str,
    order_ids: Sequence[str],
    *,
    orders_conn_id: str,
    started_at: datetime | None,
    batches: int = 0,
    dry_run: bool = False,
    not_taken: Sequence[dict] = (),
    findings: Sequence[dict] = (),
    recovered: int = 0,
    earlier_runs: bool = True,
) -> dict[str, Any]:
    """Counts by status of the run's orders, who needs a person and why (in this run, and with
    `earlier_runs` in the whole order table), the orders asked for but not taken, duration and
    pace.

    Also ends the run's claims: what is still due is free for the next run."""
    from wechat_nontax.store.connection import connect
    from wechat_nontax.store.orders import OrderStore

    store = OrderStore(connect(orders_conn_id, application_name="nontax-report"))
    try:
        counts = store.count_by_status(order_ids) if order_ids else {}
        refusing = store.refusal_pending(order_ids) if order_ids else {}
        attention = store.attention_of(order_ids) if order_ids else []
        mine = set(order_ids)
        elsewhere = (
            [row for row in store.needs_attention() if row[0] not in mine] if earlier_runs else []
        )
        if not dry_run:
            store.release(run)
    finally:
        store.close()
    duration_s = (time.time() - started_at.timestamp()) if started_at else None
    done = sum(n for status, n in counts.items() if status in Status.FINISHED)
    # Still due after every batch ended, and not because WeChat is waiting for the payer: the
    # batch gave up on them (a quota, errors past the budget, a crash). They go to the next run.
    # An order whose refusal was asked for meanwhile is not issued on purpose: not left over.
    left_due = sum(
        n - sum(1 for s in refusing.values() if s == status)
        for status, n in counts.items()
        if status in (Status.AUTHORIZED, Status.UPLOADED)
    )
    return {
        "orders": len(order_ids),
        "batches": batches,
        "by_status": dict(sorted(counts.items())),
        "inserted": counts.get(Status.INSERTED, 0),
        "left_due": 0 if dry_run else left_due,  # a dry run leaves every order due
        "refusal_pending": len(refusing),
        "dry_run": dry_run,
        "needs_attention": [{"order_id": o, "status": s, "reason": r} for o, s, r in attention],
        # Orders of earlier runs that still need a person: the red stays until they are dealt
        # with, even when a person deleted or marked the run that found them.
        "needs_attention_elsewhere": [
            {"order_id": o, "status": s, "reason": r} for o, s, r, _ in elsewhere
        ],
        "not_taken": list(not_taken),
        "dry_run_findings": list(findings),
        "recovered_bills": recovered,
        "duration_s": round(duration_s, 1) if duration_s is not None else None,
        "finished_per_s": round(done / duration_s, 2) if duration_s else None,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"orders claimed: {report['orders']} in {report['batches']} batches"
        + (" (dry run: nothing sent, nothing written)" if report["dry_run"] else ""),
        f"duration: {report['duration_s']} s, finished per second: {report['finished_per_s']}",
        "by status:",
        *(f"  {status:<14} {n}" for status, n in report["by_status"].items()),
    ]
    if report["recovered_bills"]:
        lines.append(f"bills recorded from the journal: {report['recovered_bills']}")
    if report["left_due"]:
        lines.append(f"left due for the next run: {report['left_due']} (see the batches' logs)")
    if report.get("refusal_pending"):
        lines.append(
            f"not issued, their refusal is asked for: {report['refusal_pending']} (the DAG "
            "nontax_requests refuses them; one it could not carry out waits for a person: make "
            "attention)"
        )
    for title, key in (
        ("asked for but not taken", "not_taken"),
        ("a dry run found", "dry_run_findings"),
    ):
        if report[key]:
            lines.append(f"{title}: {len(report[key])}")
            lines += [f"  {a['order_id']}  {a['reason']}" for a in report[key]]
    attention = report["needs_attention"]
    lines.append(f"needs a person: {len(attention)}")
    lines += [f"  {a['order_id']}  [{a['status']}]  {a['reason']}" for a in attention]
    elsewhere = report["needs_attention_elsewhere"]
    if elsewhere:
        lines.append(f"needs a person, from earlier runs: {len(elsewhere)} (make attention)")
        lines += [f"  {a['order_id']}  [{a['status']}]  {a['reason']}" for a in elsewhere[:50]]
    return "\n".join(lines)


def finish_report(report: dict[str, Any], ti: Any) -> dict[str, Any]:
    """Log the report; fail the task (after publishing the report) when any order needs a
    person (of this run or any earlier one), was left unfinished, was asked for and not taken,
    or a dry run found a problem, so that the run shows red until they are dealt with. The
    verdict comes from the orders themselves, so a batch that crashed, a run marked by hand or
    a deleted run cannot leave a green run."""
    import logging

    logging.getLogger(__name__).info("Run report:\n%s", format_report(report))
    problems = []
    if report["needs_attention"]:
        problems.append(f"{len(report['needs_attention'])} orders of this run need a person")
    if report["needs_attention_elsewhere"]:
        problems.append(
            f"{len(report['needs_attention_elsewhere'])} orders of earlier runs need a person"
        )
    if report["left_due"]:
        problems.append(f"{report['left_due']} orders were left unfinished")
    if report["not_taken"]:
        problems.append(f"{len(report['not_taken'])} requested orders were not taken")
    if report["dry_run_findings"]:
        problems.append(f"a dry run found {len(report['dry_run_findings'])} invalid orders")
    metrics.run_reported(ti.dag_id, green=not problems)
    if problems:
        from airflow.sdk.exceptions import AirflowFailException

        ti.xcom_push(key="return_value", value=report)
        raise AirflowFailException("; ".join(problems) + ": see the report above")
    return report
