"""The promise, checked: every broken promise in a snapshot of a run's orders, one line each.

Pure: `Snapshot` holds what the order database and the sandbox said (nontax_dev.chaos.snapshot
reads it), `check_invariants` says what of the promise does not hold (see nontax_dev.chaos for
the list).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nontax_dev.chaos.plan import QUOTA_ENDPOINTS
from wechat_nontax.wechat.statuses import Status

# A call that passed its quota check just before another worker recorded the stop may arrive
# this long after the record (a thread descheduled between its check and its send on 2 cores).
IN_FLIGHT_S = 2.0
# What a daily quota answer is, per endpoint (45009 everywhere; 72057, the insert limit).
QUOTA_ANSWERS = {"insertbill": (45009, 72057)}
NOT_AUTHORISED = frozenset({"never auth", "reject insert"})
# The order states a run's orders may take: loaded authorised, none waits for its payer's first
# authorisation (Status.WAITING_FOR_PAYER).
KNOWN = Status.DUE | Status.FINISHED | Status.NEEDS_ATTENTION
# Ended with a reason: every state past due but inserted.
NEEDS_REASON = (Status.SETTLED | Status.NEEDS_ATTENTION) - {Status.INSERTED}
# Orders that must never have a bill in the card package, whatever the sandbox shows (mismatched
# needs a person, but its bill is in the card package: inserted from an older row version).
NO_BILL = (Status.NEEDS_ATTENTION - {Status.MISMATCHED}) | {
    Status.REJECTED,
    Status.REFUSED,
    Status.DECLINED,
}


@dataclass
class Snapshot:
    """What the order database and the sandbox say about one run's orders."""

    order_ids: Sequence[str]
    rows: dict[str, dict[str, Any]]  # order_id -> status, reason, code, openid, waiting, held,
    #                                  inserted_records
    bills: list[dict[str, Any]]  # the sandbox's bills (every order of this sandbox reset)
    sandbox_orders: dict[str, dict[str, Any]]  # insertbill stats per order id
    uploaded_names: set[str]  # file names of the PDFs the sandbox received
    tokens_issued: int
    token_fetches: int
    token_expiries: int
    bad_orders: set[str] = field(default_factory=set)
    secret_hits: int = 0
    final: bool = False
    # The requests to refuse or void (order_id -> [(kind, status)]), the sandbox's refusals
    # (order_id -> repeats) and its bills' reimburse statuses (order_id -> (status, changes
    # to CANCEL)).
    requests: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    reimburse: dict[str, tuple[str, int]] = field(default_factory=dict)

    # The sandbox's calls in arrival order ({at, endpoint, order_id, errcode, invoice_status}).
    call_log: list[dict[str, Any]] = field(default_factory=list)
    # The recorded daily quota stops: (api, since when, Unix time).
    quota_stops: list[tuple[str, float]] = field(default_factory=list)
    # When each order's refusal was asked (Unix time), of those not withdrawn.
    refusals_asked: dict[str, float] = field(default_factory=dict)


def _request_problems(s: Snapshot, oid: str, status: str, has_bill: bool) -> list[str]:
    """The promises about refusals and voids: a refused order was never inserted and WeChat
    has its refusal; a voided bill was inserted first and is cancelled on WeChat; each request
    was carried out at most once (a done request per order and kind, one change to CANCEL)."""
    problems = []
    if status == Status.REFUSED:
        if has_bill:
            problems.append(f"{oid}: refused, yet WeChat has its bill")
        if oid not in s.rejections:
            problems.append(f"{oid}: refused in the database, no refusal on WeChat")
    if oid in s.rejections and has_bill:
        problems.append(f"{oid}: both refused and inserted on WeChat")
    reimburse, cancels = s.reimburse.get(oid, (None, 0))
    if status == Status.CANCELLED:
        if not has_bill:
            problems.append(f"{oid}: cancelled, but WeChat never had its bill")
        if reimburse != "INVOICE_REIMBURSE_CANCEL":
            problems.append(f"{oid}: cancelled in the database, {reimburse} on WeChat")
    if cancels > 1:
        problems.append(f"{oid}: voided {cancels} times on WeChat")
    done = Counter(kind for kind, state in s.requests.get(oid, []) if state == "done")
    problems += [f"{oid}: {n} {kind} requests done" for kind, n in done.items() if n > 1]
    if done["refuse"] and status != Status.REFUSED:
        problems.append(f"{oid}: its refusal is done, yet it is {status}")
    if done["void"] and status != Status.CANCELLED:
        problems.append(f"{oid}: its void is done, yet it is {status}")
    return problems


def check_invariants(s: Snapshot) -> list[str]:
    """Every broken promise in `s`, one line each; [] when all hold."""
    problems: list[str] = []
    bills_by_order: dict[str, list[dict[str, Any]]] = {}
    for bill in s.bills:
        bills_by_order.setdefault(bill["order_id"], []).append(bill)
    for oid, bills in bills_by_order.items():
        if len(bills) > 1:
            problems.append(f"{oid}: {len(bills)} bills in the sandbox")
        if oid not in s.order_ids:
            problems.append(f"{oid}: a bill in the sandbox for an order of no run")
    for oid, stats in s.sandbox_orders.items():
        if stats.get("successes", 0) > 1:
            problems.append(f"{oid}: inserted {stats['successes']} times")
    for oid in s.order_ids:
        row = s.rows.get(oid)
        if row is None:
            problems.append(f"{oid}: missing from the order database")
            continue
        status, bills = row["status"], bills_by_order.get(oid, [])
        if status not in KNOWN:
            problems.append(f"{oid}: unknown status {status!r}")
        if status in NEEDS_REASON and not (row.get("reason") or "").strip():
            problems.append(f"{oid}: {status} without a reason")
        if row.get("inserted_records", 0) > 1:
            problems.append(f"{oid}: {row['inserted_records']} 'inserted' history rows")
        if status in (Status.INSERTED, Status.MISMATCHED):
            if not bills:
                problems.append(f"{oid}: inserted in the database, no bill in the sandbox")
            elif (row.get("code"), row.get("openid")) != (bills[0]["code"], bills[0]["openid"]):
                problems.append(f"{oid}: code/openid differ from the sandbox's bill")
        elif status == Status.DUPLICATE and not bills:
            problems.append(f"{oid}: duplicate in the database, no bill in the sandbox")
        elif bills and status in NO_BILL and s.final:
            problems.append(f"{oid}: {status} in the database, but WeChat has its bill")
        problems += _request_problems(s, oid, status, bool(bills))
        if status == Status.INVALID or oid in s.bad_orders:
            if status != Status.INVALID:
                problems.append(f"{oid}: bad data, but {status} instead of invalid")
            if s.sandbox_orders.get(oid, {}).get("attempts", 0):
                problems.append(f"{oid}: invalid, yet insertbill was called for it")
            if f"{oid}.pdf" in s.uploaded_names:
                problems.append(f"{oid}: invalid, yet its PDF was uploaded")
        if row.get("quota_api") == "authorization" and status != Status.AWAITING_AUTH:
            problems.append(f"{oid}: {status}, yet waits for getauthdata's daily quota")
        if s.final and status in Status.DUE and not row.get("waiting"):
            problems.append(f"{oid}: still {status} with nothing to wait for (stuck)")
        if s.final and row.get("held"):
            problems.append(f"{oid}: a lease is still held after the runs ended")
    allowed = s.token_expiries + 1
    if s.token_fetches > allowed:
        problems.append(
            f"{s.token_fetches} token fetches for {s.token_expiries} expiries (at most {allowed})"
        )
    if s.tokens_issued > allowed:
        problems.append(
            f"the sandbox issued {s.tokens_issued} tokens for {s.token_expiries} expiries"
        )
    if s.secret_hits:
        problems.append(f"{s.secret_hits} secret occurrences in the open")
    problems += _calls_after_a_no(s)
    return problems


def _calls_after_a_no(s: Snapshot) -> list[str]:
    """Calls the pipeline had been told not to make: an insert after getauthdata said the
    order is not authorised (until it says it is), a call after its quota stop was recorded."""
    problems = []
    not_authorised: dict[str, str] = {}
    for call in s.call_log:
        oid, endpoint = call.get("order_id"), call["endpoint"]
        if endpoint == "getauthdata" and oid and call.get("errcode") == 0:
            status = call.get("invoice_status")
            if status in NOT_AUTHORISED:
                not_authorised[oid] = status
            else:
                not_authorised.pop(oid, None)
        elif endpoint == "insertbill" and oid in not_authorised:
            problems.append(f"{oid}: insertbill after getauthdata said {not_authorised[oid]!r}")
    recorded = {api for api, _ in s.quota_stops}
    for api, endpoints in QUOTA_ENDPOINTS.items():
        answers = {c for e in endpoints for c in QUOTA_ANSWERS.get(e, (45009,))}
        answered = [
            c for c in s.call_log if c["endpoint"] in endpoints and c.get("errcode") in answers
        ]
        if answered and api not in recorded:
            problems.append(f"{len(answered)} daily quota answers of {api}, none recorded")
    for oid, asked in s.refusals_asked.items():
        late = [
            c for c in s.call_log
            if c["endpoint"] == "insertbill" and c.get("order_id") == oid
            and c["at"] > asked + IN_FLIGHT_S
        ]  # fmt: skip
        if late:
            problems.append(f"{oid}: {len(late)} insertbill calls after its refusal was asked")
    for api, since in s.quota_stops:
        endpoints = QUOTA_ENDPOINTS.get(api, (api,))
        late = [
            c for c in s.call_log if c["endpoint"] in endpoints and c["at"] > since + IN_FLIGHT_S
        ]
        if late:
            problems.append(f"{len(late)} {'/'.join(endpoints)} calls after the {api} quota stop")
    return problems
