"""How each order left a batch (`Outcome`, `OrderResult`), which outcomes need a person or
pass by waiting, and the table of them a task logs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


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
    NOT_DUE = "not_due"  # not this try's to send: waiting for its time, or for a person
    NOT_HELD = "not_held"  # another run or try holds the order
    HOLD_LOST = "hold_lost"  # held by this try, then no longer: not sent, or not recorded
    EARLIER_TRY = "earlier_try"  # an earlier try of this batch still holds it: retried later
    BLOCKED = "blocked"  # not sent: the batch stopped (no access token): left due
    UNRECORDED = "unrecorded"  # inserted on WeChat, the order database unreachable: journalled
    INVALID = "invalid"  # bad data: needs a person
    FAILED = "failed"  # permanent refusal: needs a person
    MISMATCHED = "mismatched"  # inserted from a row version the row no longer has: a person


NEEDS_PERSON = frozenset({Outcome.INVALID, Outcome.FAILED, Outcome.BLOCKED, Outcome.MISMATCHED})
PASSES_BY_WAITING = frozenset({Outcome.RETRY_LATER, Outcome.EARLIER_TRY, Outcome.UNRECORDED})


@dataclass(frozen=True, slots=True)
class OrderResult:
    order_id: str
    outcome: Outcome
    reason: str = ""
    # An insert that WeChat answered but the order database could not record: (code, openid).
    bill: tuple[str, str] | None = None


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
