"""Who holds an order, as names and values: the keys a run claims and a task try holds under,
what a write-back expects (`Hold`), why an order is not held (`NotHeld`) and what a task try
that lost its hold says. Pure: the statements that take, renew and end holds are `holds`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wechat_nontax.wechat.statuses import Status


def run_key(dag_id: str, run_id: str) -> str:
    """What a run's claims are made under (`claimed_by`, `nontax.run_claim`): Airflow's run ids
    are unique per DAG only (two DAGs scheduled at one instant share one), so it names the
    DAG. Neither a dag_id nor a run_id may hold `|`."""
    return f"{dag_id}|{run_id}"


def task_holder(ti: Any) -> str:
    """The holder one task try writes as (`held_by`):
    `{dag_id}|{run_id}|{task_id}|{map_index}|{try_number}`, from the task instance itself, so
    that every DAG's tries, whatever operator they run, are told apart."""
    return f"{run_key(ti.dag_id, ti.run_id)}|{ti.task_id}|{ti.map_index}|{ti.try_number}"


def claim_key(holder: str) -> str:
    """The run key a holder's try claims under: all but its task, map index and try number
    (a holder of the older four-part form, `{run_id}|...`, gives its bare run id)."""
    return holder.rsplit("|", 3)[0]


def split_run_key(key: str, default_dag_id: str) -> tuple[str, str]:
    """(dag_id, run_id) of a run key; a bare run id (an older claim) is `default_dag_id`'s."""
    dag_id, sep, run_id = key.partition("|")
    return (dag_id, run_id) if sep else (default_dag_id, key)


@dataclass(frozen=True, slots=True)
class Hold:
    """What a write-back expects: the task try holding the order and the row version it read."""

    holder: str
    version: int


@dataclass(frozen=True, slots=True)
class HoldResult:
    """A batch try's hold: the orders it holds (with the row version read) and, for the others,
    why not (`NotHeld`)."""

    held: dict[str, int]
    not_held: dict[str, NotHeld]


@dataclass(frozen=True, slots=True)
class NotHeld:
    kind: str  # unknown | finished | refusing | needs_person | not_yet | held | claimed
    reason: str
    holder: str | None = None
    seconds_left: float = 0.0


def lost_hold_reason(why: NotHeld) -> str:
    """Why a try's hold on an order is gone, from where the order stands now (pure)."""
    if why.kind == "held":
        return f"{why.holder} holds it now"
    if why.kind == "claimed" and why.holder:
        return f"run {why.holder} claims it now"
    if why.kind in ("finished", "refusing", "needs_person", "unknown"):
        return why.reason
    return "it ran out (not renewed in time) and no one holds it now"


def lost_holds_message(lost: Sequence[tuple[str, str]], *, not_done: str) -> str:
    """A task try's failure when it lost its hold on orders (both pipelines' operators): how
    many, what it did not do with them (`not_done`), and for the first 20 a (label, reason)
    each, the reason naming who holds the order now (`lost_hold_reason`)."""
    reasons = "; ".join(f"{label}: {reason}" for label, reason in lost[:20])
    return (
        f"this try lost its hold on {len(lost)} orders and {not_done} "
        f"(or could not record their result): {reasons}"
    )


@dataclass(frozen=True, slots=True)
class RunClaim:
    batches: list[list[str]]
    not_taken: list[dict[str, str]] = field(default_factory=list)
    reclaimed: bool = False

    @property
    def order_ids(self) -> list[str]:
        return [order_id for batch in self.batches for order_id in batch]


def why_not_taken(
    status: str | None,
    *,
    due_in_s: float | None,
    claimed_by: str | None,
    held_by: str | None,
    lease_left_s: float | None,
    refusal_pending: bool = False,
) -> NotHeld:
    """Why an order a run asked for was not taken (pure: the caller read the row)."""
    if status is None:
        return NotHeld("unknown", "unknown order: not in the order table")
    if status in Status.SETTLED:
        return NotHeld("finished", f"already {status}: never sent again")
    if refusal_pending:
        return NotHeld(
            "refusing",
            "a refusal of it is pending, or was not carried out and waits for a person to "
            "withdraw it or ask again: it is not issued",
        )
    if status in Status.WAITING_FOR_PAYER:
        return NotHeld(
            "not_yet",
            f"{status}: its payer has not authorised it yet; issued once the payer's "
            "authorisation arrives (its link: `nontax link`)",
        )
    if status in Status.NEEDS_ATTENTION:
        return NotHeld(
            "needs_person",
            f"{status}: needs a person; fix the cause, then reset it (make it due again) or "
            "clear the batch that holds it",
        )
    if lease_left_s is not None and lease_left_s > 0:
        if held_by:
            return NotHeld("held", f"held by {held_by} right now", held_by, lease_left_s)
        return NotHeld("claimed", f"claimed by run {claimed_by}", claimed_by, lease_left_s)
    if due_in_s is not None and due_in_s > 0:
        return NotHeld("not_yet", f"{status}: not due for another {due_in_s / 60:.0f} min")
    return NotHeld("claimed", "being claimed by another run at this moment")
