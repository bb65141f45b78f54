"""What the Bills pages show and what their input means, free of I/O: money, links into the
Airflow UI, the actions each status offers, the query's filters and page marks, and what a
person's action recorded. Times, languages and their texts: `wechat_nontax.ui.i18n`."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, status

from wechat_nontax.requests.contract import (
    RequestKind,
    RequestStatus,
    facts_of,
    why_not_carried_out,
)
from wechat_nontax.settings import (
    INSERTBILL_DAG_ID,
    REQUESTS_DAG_ID,
    REQUESTS_TASK_ID,
    WAITING_DAG_ID,
)
from wechat_nontax.store.reads import PageMark
from wechat_nontax.ui.i18n import N_, Reader
from wechat_nontax.wechat.statuses import Status

PAGE_SIZE = 50


ATTENTION = "attention"


# The status filter's choices, in the order of an order's journey's groups.
STATUS_CHOICES = [ATTENTION, *sorted(Status.NEEDS_ATTENTION), *sorted(Status.WAITING_FOR_PAYER),
                  *sorted(Status.DUE), *sorted(Status.FINISHED), "all"]  # fmt: skip

# The statuses a search looks in: every one (an order's id finds it wherever it stands).
EVERY_STATUS = sorted(str(s) for s in Status)

# At most this many orders in one action on many (its confirmation page lists them all).
BULK_MAX = 1000

# How the orders of an action on many were picked, as the action keeps it: by hand, or every
# order that needed a person for one reason (the reason follows the prefix).
PICKED_BY_HAND = "by hand"
PICKED_BY_REASON = "reason: "


def picked_reason(picked: str) -> str | None:
    """The reason the orders of an action were picked by; None when picked by hand."""
    return picked.removeprefix(PICKED_BY_REASON) if picked.startswith(PICKED_BY_REASON) else None


def yuan(fee_fen: int | None) -> str:
    """1234 fen -> '12.34' (yuan); exact, no float."""
    if fee_fen is None:
        return ""
    sign = "-" if fee_fen < 0 else ""
    fen = abs(fee_fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


def run_url(run_id: str, dag_id: str = INSERTBILL_DAG_ID) -> str:
    return f"/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def task_instance_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    base = f"{run_url(run_id, dag_id)}/tasks/{quote(task_id, safe='')}"
    return f"{base}/mapped/{map_index}" if map_index >= 0 else base


@dataclass(frozen=True, slots=True)
class Holder:
    """The task try a hold names: `{dag_id}|{run_id}|{task_id}|{map_index}|{try}`, or, written
    before holds named their DAG, `{run_id}|{task_id}|{map_index}|{try}` (dag_id None)."""

    dag_id: str | None
    run_id: str
    task_id: str
    map_index: int


def parse_holder(holder: str | None) -> Holder | None:
    """The holder's parts; None when it is neither format (Airflow's ids never hold `|`)."""
    parts = (holder or "").split("|")
    if len(parts) == 4:
        parts.insert(0, "")
    if len(parts) != 5 or not all(parts[1:3]):
        return None
    dag_id, run_id, task_id, map_index, try_number = parts
    if not map_index.lstrip("-").isdigit() or not try_number.isdigit():
        return None
    return Holder(dag_id or None, run_id, task_id, int(map_index))


def task_url(holder: str | None) -> str | None:
    """The page of the task instance a hold names (its DAG, mapped instance and all); None
    when the holder does not say. An old holder's DAG is told by its task: the requests DAG's
    task, or else the issuing DAG's (the only two that held orders before holders named their
    DAG)."""
    held = parse_holder(holder)
    if held is None:
        return None
    dag_id = held.dag_id or (
        REQUESTS_DAG_ID if held.task_id == REQUESTS_TASK_ID else INSERTBILL_DAG_ID
    )
    return task_instance_url(dag_id, held.run_id, held.task_id, held.map_index)


# Which DAG wrote a history row, from its step: the requests DAG writes `request` (a request's
# own notes, made by the view or the command line without a run), `refuse` and `void`; a
# person's issue-now names a run of the issuing DAG; every other step is an issuing step,
# written by the issuing DAG or by a DAG reusing its operators (`nontax_waiting`), which the
# step cannot tell apart: Airflow is asked which of them has the run.
REQUESTS_STEPS = frozenset({"request", "refuse", "void"})


ISSUING_DAGS = (INSERTBILL_DAG_ID, WAITING_DAG_ID)


def dags_of_step(step: str | None) -> tuple[str, ...]:
    """The DAGs that may have made the run a history row of `step` names, likeliest first."""
    if step in REQUESTS_STEPS:
        return (REQUESTS_DAG_ID,)
    if step == "operator":
        return (INSERTBILL_DAG_ID,)
    return ISSUING_DAGS


def bad_input(problem: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, problem)


def printable(value: str | None, name: str) -> str | None:
    """`value` when it holds no control character (a NUL cannot even reach Postgres in text);
    a 400 naming the field otherwise."""
    if value is not None and any(unicodedata.category(c) == "Cc" for c in value):
        raise bad_input(f"{name}: no control characters (such as NUL, tab or a line break)")
    return value


def day_start(
    value: str | None, name: str, reader: Reader, *, days_after: int = 0
) -> datetime | None:
    """The start of the day `value` names (plus `days_after` days) in the reader's zone."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value) + timedelta(days=days_after)
    except (ValueError, OverflowError) as exc:
        raise bad_input(f"{name}: a date as YYYY-MM-DD, at most 9999-12-30") from exc
    return reader.day_start(day)


# A page mark in a link: the ISO time of the change, "|", the order_id (which may hold anything).
MARK_MAX = 40 + 64


def mark_of(row: dict[str, Any]) -> str:
    return f"{row['updated_at'].isoformat()}|{row['order_id']}"


def page_mark(value: str | None) -> PageMark | None:
    if not value:
        return None
    at, sep, order_id = printable(value, "page mark").partition("|")
    try:
        updated_at = datetime.fromisoformat(at)
    except ValueError:
        updated_at = None
    if not sep or not order_id or updated_at is None or updated_at.tzinfo is None:
        raise bad_input("a page mark is TIME|ORDER_ID")
    return PageMark(updated_at, order_id)


def statuses_of(choice: str, search: str | None = None) -> list[str]:
    """The statuses a page lists: the filter's, or every one for a search."""
    if search:
        return EVERY_STATUS
    if choice == ATTENTION:
        return sorted(Status.NEEDS_ATTENTION)
    if choice == "all":
        return EVERY_STATUS
    if choice in {str(s) for s in Status}:
        return [choice]
    raise bad_input("unknown status")


_ACTION_NOTE = re.compile(r"action #(\d+)$")


def action_of(note: str | None) -> int | None:
    """The action on many orders a history row's note names (`... action #12`), if any."""
    found = _ACTION_NOTE.search(note or "")
    return int(found[1]) if found else None


def _needs_person(row: dict[str, Any]) -> bool:
    return row["status"] in Status.NEEDS_ATTENTION


def _not_finished(row: dict[str, Any]) -> str | None:
    """Why reset and issue-now do not fit the order: a finished one is never sent again, one
    waiting for its payer's authorisation is not sent before it, and one a refusal stands
    against is never issued (the refusal is carried out, or withdrawn, first)."""
    if row["status"] in Status.WAITING_FOR_PAYER:
        return N_(
            "The order waits for its payer's authorisation in WeChat: it becomes due by "
            "itself when the payer authorises it."
        )
    if row.get("refusal_pending"):
        return N_(
            "A refusal of this order is asked for: it is never issued while the refusal "
            "stands (withdraw the refusal first if it was a mistake)."
        )
    if row["status"] == Status.MISMATCHED:
        return (
            "The order's bill is in the card package, issued from an older version of the "
            "order: it is never sent again (void the bill if it is wrong)."
        )
    if row["status"] in Status.FINISHED:
        return f"The order is finished ({row['status']}): it is never sent again."
    if row["status"] in Status.WAITING_FOR_PAYER:
        return (
            "The order waits for its payer's authorisation: it is sent once the payer "
            "authorises, never before."
        )
    return None


def _issue_helps(row: dict[str, Any]) -> str | None:
    """Why issue-now would not help: a run takes due orders only, so one that needs a person
    would end the run red and stay as it is."""
    if (why := _not_finished(row)) is not None:
        return why
    if row["status"] not in Status.DUE:
        return N_(
            "A run issues due orders only: this one needs a person. Fix its cause, make it due "
            "again, then issue it now (or let the next run issue it)."
        )
    return None


@dataclass(frozen=True)
class Action:
    """A person's action on one order: a confirmation page (GET `/<name>?id=`), then a POST to
    the same path, with a form field `reason` when the action asks for one (`reason_for`).
    `why_not(row)`: why the action does not fit the order as it stands (None: it fits); the
    POST checks again, in the store, against the row as it is then."""

    title: str
    explain: str
    why_not: Callable[[dict[str, Any]], str | None]
    # Asked for a reason: who reads it (empty: no reason asked).
    reason_for: str = ""
    # What the person needs beyond editing the DAG ("trigger": a run of it).
    needs: str = "edit"


def offered(row: dict[str, Any], may: frozenset[str]) -> dict[str, Action]:
    """The actions a page offers on the order: those that fit it and the person may do."""
    return {
        name: action
        for name, action in ACTIONS.items()
        if "edit" in may and action.needs in may and action.why_not(row) is None
    }


# Every action, in the order the order page offers them. An action is this entry, its two
# routes in `create_app` (the confirmation through `_confirm`) and its write in the store.
ACTIONS = {
    "reset": Action(
        N_("Make due again"),
        N_(
            "The order becomes due again (authorized, media id dropped, authorisation wait from "
            "zero): the next run of the DAG issues it. Do this after fixing the cause shown as "
            "its reason."
        ),
        _not_finished,
    ),
    "issue": Action(
        N_("Issue now"),
        N_(
            "Starts a run of the issuing DAG for this order alone, now rather than at the next "
            "scheduled run. The run's colour is the whole run's: it is red while other orders "
            "of earlier runs still need a person, even when this one is issued; this order's "
            "own outcome shows on its page."
        ),
        _issue_helps,
        needs="trigger",
    ),
    RequestKind.REFUSE: Action(
        N_("Refuse"),
        N_(
            "The order will never get a bill (refunded before issue, data that cannot be "
            "fixed): WeChat is told (rejectinsert) and shows the payer the reason instead of a "
            "pending bill. It cannot be undone: WeChat refuses this order_id for good. The "
            "requests DAG carries it out; a run of it is started now."
        ),
        lambda row: why_not_carried_out(RequestKind.REFUSE, row["status"], facts_of(row)),
        reason_for=N_("the payer's reason: WeChat shows it to the payer; kept with the request"),
    ),
    RequestKind.VOID: Action(
        N_("Void the bill"),
        N_(
            "The fiscal platform red-reversed this bill (冲红): it is set to "
            "INVOICE_REIMBURSE_CANCEL in the payer's card package (platform/updatestatus). It "
            "cannot be undone. The requests DAG carries it out; a run of it is started now."
        ),
        lambda row: why_not_carried_out(RequestKind.VOID, row["status"], facts_of(row)),
        reason_for=N_(
            "the reason of the void: kept with the request and in the order's history; "
            "WeChat is not told it"
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the order's history or requests say a person just did (the page's message comes
    from it, never from the link that led there): its `text`, and the run it asked for."""

    kind: str
    text: str
    dag_id: str = INSERTBILL_DAG_ID
    run_id: str | None = None
    pending: bool = False


def what_was_done(
    done: str | None,
    history: list[dict[str, Any]],
    requests_: list[Any],
    request_id: int | None,
    run: str | None,
    reader: Reader,
) -> Recorded | None:
    """The recorded action a link's `done` names (None when nothing of the kind is recorded):
    the order's last reset; the issue-now of the run `run`; the request `request_id` of the
    kind. Pure."""
    if done == "reset":
        reset = next((h for h in reversed(history) if h["step"] == "reset"), None)
        if reset is None:
            return None
        text = reader.gettext("Made due again %(at)s (%(note)s): the next run issues it.") % {
            "at": reader.when(reset["at"]), "note": reset["errmsg"],
        }  # fmt: skip
        return Recorded("reset", text)
    if done == "issue":
        issued = next(
            (h for h in reversed(history)
             if (h["step"], h["outcome"], h["run_id"]) == ("operator", "issue_now", run)),
            None,
        )  # fmt: skip
        if issued is None or run is None:
            return None
        text = reader.gettext("Run started %(at)s:") % {"at": reader.when(issued["at"])}
        return Recorded("issue", text, run_id=run)
    if done in set(RequestKind) and request_id is not None:
        asked = next((r for r in requests_ if r.request_id == request_id and r.kind == done), None)
        if asked is None:
            return None
        said = (
            N_("Refusal #%(id)s asked for by %(by)s %(at)s: %(status)s.")
            if done == RequestKind.REFUSE
            else N_("Void #%(id)s asked for by %(by)s %(at)s: %(status)s.")
        )
        text = reader.gettext(said) % {
            "id": asked.request_id, "by": asked.requested_by,
            "at": reader.when(asked.requested_at), "status": reader.status(asked.status),
        }  # fmt: skip
        pending = asked.status == RequestStatus.PENDING
        return Recorded(done, text, REQUESTS_DAG_ID, run if pending else None, pending)
    return None
