"""Requests to refuse an order or void its bill: what they are, which order each fits, asking.

A request is asked for by `request_action` (the command line, tests, and the Bills view's
actions) or by the unit's own systems inserting a row into `nontax.bill_request` (the contract:
migration 0006).
Asking never calls WeChat; the DAG `nontax_requests` carries requests out (`requests.runner`,
with the statements of `requests.store`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg2.extensions

from wechat_nontax.store.history import append_history, history_row
from wechat_nontax.wechat.statuses import Status
from wechat_nontax.wechat.validation import check_refusal, format_problems


class RequestKind(StrEnum):
    REFUSE = "refuse"  # rejectinsert: the order will never get a bill
    VOID = "void"  # platform/updatestatus INVOICE_REIMBURSE_CANCEL: the bill is red-reversed


class RequestStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    REFUSED = "refused"  # cannot be carried out as asked (no call, or WeChat said it cannot be)
    FAILED = "failed"  # a call was refused for a reason a person must look at
    WITHDRAWN = "withdrawn"  # a person decided not to go on with it (or asked again)


# A refusal in these keeps its order off issuing (migration 0010): while it waits to be carried
# out, and once it could not be (refused, failed) until a person withdraws it or asks again.
BLOCKS_ISSUING = (RequestStatus.PENDING, RequestStatus.REFUSED, RequestStatus.FAILED)
# The requests that need a person, and that a person may withdraw: ended without being carried
# out. A pending one may have a call in flight at WeChat; it ends by itself within a few runs.
NEEDS_PERSON = WITHDRAWABLE = (RequestStatus.REFUSED, RequestStatus.FAILED)


# The order statuses each kind can be carried out from; any other is refused with the reason
# `why_not_carried_out` gives. A refusal is for an order that has no bill; a void needs the
# bill's code, which only an `inserted` (or `mismatched`) order has (a `duplicate` never learnt
# it).
_REFUSABLE = (Status.DUE | Status.NEEDS_ATTENTION) - Status.SETTLED
_VOIDABLE = frozenset({Status.INSERTED, Status.MISMATCHED})
ACTS_ON: dict[str, frozenset[str]] = {
    RequestKind.REFUSE: frozenset(_REFUSABLE),
    RequestKind.VOID: _VOIDABLE,
}
_REFUSE_INSTEAD = "refuse the order instead"
_BACK_OFFICE = "void it in WeChat's back office"
_WHY_NOT = {
    (RequestKind.REFUSE, Status.INSERTED): "its bill is in the payer's card package already: "
    "void the bill instead",
    (RequestKind.REFUSE, Status.MISMATCHED): "its bill is in the payer's card package already "
    "(with the data WeChat was sent): void the bill instead",
    (RequestKind.REFUSE, Status.DUPLICATE): "its bill is in the payer's card package already "
    "(code unknown, WeChat answered 72056): it can be neither refused nor voided from here; "
    "void it in WeChat's back office",
    (RequestKind.REFUSE, Status.REJECTED): "WeChat refuses this order for good already (72035): "
    "there is nothing left to refuse",
    (RequestKind.REFUSE, Status.REFUSED): "it is refused already",
    (RequestKind.REFUSE, Status.CANCELLED): "its bill was issued and voided: it cannot be refused",
    (RequestKind.VOID, Status.CANCELLED): "its bill is voided already",
    (RequestKind.VOID, Status.DUPLICATE): "its bill's code is unknown (WeChat answered 72056 and "
    "has no call to look it up): it cannot be voided from here; void it in WeChat's back office",
    (RequestKind.VOID, Status.REFUSED): "it was refused and never got a bill: nothing to void",
    (RequestKind.VOID, Status.REJECTED): "WeChat refused it and it never got a bill: nothing to "
    "void",
}


# What WeChat's back office needs to find a bill whose code the pipeline never learnt.
ORDER_FACTS_COLUMNS = "order_id, card_id, appid, billing_no, billing_code, fee"


def facts_of(row: Mapping[str, Any]) -> tuple:
    """The `ORDER_FACTS_COLUMNS` of an order's row (None for a column the row lacks)."""
    return tuple(row.get(column) for column in ORDER_FACTS_COLUMNS.split(", "))


def order_facts(facts: tuple) -> str:
    """An order's facts (`ORDER_FACTS_COLUMNS`) as a person types them into WeChat's back
    office to find its bill."""
    order_id, card_id, appid, billing_no, billing_code, fee = facts
    return (
        f"order_id {order_id}, card_id {card_id}, appid {appid}, billing_no {billing_no}, "
        f"billing_code {billing_code}, fee {fee} fen"
    )


def why_not_carried_out(
    kind: str, order_status: str | None, facts: tuple | None = None
) -> str | None:
    """Why a request of `kind` cannot be carried out on an order in `order_status` (None: no
    such order); None when it can. With the order's `facts` (`ORDER_FACTS_COLUMNS`), advice to
    go to WeChat's back office names them. Pure: the one place that says which kind fits which
    order."""
    if order_status is None:
        return "unknown order: not in the order table"
    if order_status in ACTS_ON[kind]:
        return None
    known = _WHY_NOT.get((kind, order_status))
    if known is not None and facts is not None and known.endswith(_BACK_OFFICE):
        known = f"{known} ({order_facts(facts)})"
    if known is not None:
        return f"order is {order_status}: {known}"
    # A void of an order that has no bill yet (due, or needing a person).
    return f"order is {order_status}: it has no bill in the card package to void; {_REFUSE_INSTEAD}"


def check_request(kind: object, reason: object, requested_by: object) -> str | None:
    """What is wrong with a request as asked, before the order is looked at; None when fine."""
    if kind not in {str(k) for k in RequestKind}:
        return f"kind must be one of {', '.join(RequestKind)}, got {kind!r}"
    problems = [p for p in check_refusal("X", reason) if p.field == "reason"]
    if problems:
        return format_problems(problems)
    if not isinstance(requested_by, str) or not requested_by.strip():
        return "requested_by must name who asks (a person or a system)"
    return None


@dataclass(frozen=True, slots=True)
class RequestAnswer:
    """What asking for a request came to: `accepted` with its id, or why not."""

    accepted: bool
    reason: str
    request_id: int | None = None


def request_action(
    conn: psycopg2.extensions.connection,
    order_id: str,
    kind: str,
    reason: str,
    requested_by: str,
) -> RequestAnswer:
    """Record a request to refuse `order_id` or void its bill, to be carried out by the DAG
    `nontax_requests`; nothing is sent to WeChat here. Refused, with a reason a person can act
    on and nothing recorded as pending, when: the kind, reason or requester is bad, the order
    is unknown, the order's status does not allow the kind (refusing an inserted order, voiding
    one that is not inserted), or the same kind is already pending for it. A refusal of a known
    order is noted in its history (step `request`)."""
    problem = check_request(kind, reason, requested_by)
    if problem is not None:
        return RequestAnswer(False, problem)
    with conn, conn.cursor() as cur:
        # The order's status as of now; a run that changes it later is met by the DAG's own
        # check (the request then ends `refused` with the reason).
        cur.execute(
            f"SELECT status, {ORDER_FACTS_COLUMNS} FROM nontax.bill_order WHERE order_id = %s",
            (order_id,),
        )
        row = cur.fetchone()
        why = why_not_carried_out(kind, row[0] if row else None, row[1:] if row else None)
        if row is None:
            return RequestAnswer(False, why)
        if why is None:
            cur.execute(
                "INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by) "
                "VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (order_id, kind) WHERE status = 'pending' DO NOTHING "
                "RETURNING request_id",
                (order_id, kind, reason, requested_by),
            )
            created = cur.fetchone()
            if created is None:
                cur.execute(
                    "SELECT request_id, requested_by FROM nontax.bill_request "
                    "WHERE order_id = %s AND kind = %s AND status = 'pending'",
                    (order_id, kind),
                )
                open_id, by = cur.fetchone() or (None, "?")
                why = f"a {kind} request for this order is pending already (#{open_id}, by {by})"
                note_request(
                    cur, order_id, "request_refused", f"{kind} asked by {requested_by}: {why}"
                )
                return RequestAnswer(False, why, open_id)
            request_id = created[0]
            asked = f"{kind} #{request_id} asked by {requested_by}: {reason}"
            note_request(cur, order_id, "pending", asked)
            return RequestAnswer(True, f"{kind} request #{request_id} recorded", request_id)
        note_request(cur, order_id, "request_refused", f"{kind} asked by {requested_by}: {why}")
    return RequestAnswer(False, why)


def note_request(
    cur: Any, order_id: str, outcome: str, text: str, run_id: str | None = None
) -> None:
    """A request's step in the order's history (step `request`), in the caller's transaction."""
    append_history(cur, [history_row(order_id, "request", outcome, run_id=run_id, errmsg=text)])


def withdraw_request(
    conn: psycopg2.extensions.connection, request_id: int, withdrawn_by: str, note: str = ""
) -> RequestAnswer:
    """A person decides not to go on with a request that ended without being carried out
    (`refused` or `failed`): it ends `withdrawn`, and a refusal no longer keeps its order off
    issuing (the next issuing run sends it). A pending request cannot be withdrawn: a call for
    it may be in flight at WeChat; it ends by itself. Noted in the order's history."""
    if not isinstance(withdrawn_by, str) or not withdrawn_by.strip():
        return RequestAnswer(False, "withdrawn_by must name who withdraws it")
    said = f"withdrawn by {withdrawn_by}" + (f": {note}" if note else "")
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE nontax.bill_request SET status = 'withdrawn', updated_at = now(), "
            "outcome = %s || '; was: ' || outcome "
            "WHERE request_id = %s AND status = ANY(%s) RETURNING order_id, kind",
            (said, request_id, [str(s) for s in WITHDRAWABLE]),
        )
        row = cur.fetchone()
        if row is not None:
            order_id, kind = row
            after = " (its order is issued again)" if kind == RequestKind.REFUSE else ""
            note_request(cur, order_id, "withdrawn", f"{kind} #{request_id} {said}")
            return RequestAnswer(True, f"{kind} request #{request_id} {said}{after}", request_id)
        cur.execute("SELECT status FROM nontax.bill_request WHERE request_id = %s", (request_id,))
        found = cur.fetchone()
    if found is None:
        return RequestAnswer(False, f"no request #{request_id}")
    if found[0] == RequestStatus.PENDING:
        why = "it is pending: a call for it may be on its way to WeChat; it ends by itself"
    else:
        why = f"it is {found[0]} already"
    return RequestAnswer(False, f"request #{request_id} cannot be withdrawn: {why}", request_id)


def what_next(
    request_id: int, order_id: str, kind: str, status: str, order_status: str | None
) -> str | None:
    """What a person can do about a request that ended without being carried out (None for
    the others). Pure: the advice `make attention`, `history` and the report give."""
    if status not in WITHDRAWABLE:
        return None
    withdraw = f"make withdraw REQUEST={request_id}"
    if kind == RequestKind.REFUSE and order_status in ACTS_ON[kind]:
        return (
            f"its order is kept off issuing until you decide: ask again (make refuse "
            f"ORDER={order_id} REASON=...), or {withdraw} to let the order be issued"
        )
    if kind == RequestKind.VOID and order_status in ACTS_ON[kind]:
        return (
            f"ask again once the cause is fixed (make void ORDER={order_id} REASON=...), or "
            f"{withdraw} to close this"
        )
    if order_status == Status.DUPLICATE:
        return f"{_BACK_OFFICE} (its facts are in the order's reason), then {withdraw}"
    return f"{withdraw} to close this once acted on"
