"""The states an order's row can be in, the remote calls, the actions and the transport signals.

`Status` names the states of an order's row; `status_for` says which state an action leaves the
order in. Plain strings: each member compares and hashes equal to its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum, nonmember
from types import MappingProxyType


class Action(StrEnum):
    """What the caller does next with the call and its order."""

    SUCCESS = "success"
    RETRY = "retry"  # the same call again after a delay
    # Invalidate the token if it is still the cached one, refresh, retry once.
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 (an action's name, not a password)
    STOP_QUOTA = "stop_quota"  # daily quota used up: no more calls today, orders stay due
    WAIT_AUTHORIZATION = "wait_authorization"  # not authorised yet: wait, fail after a deadline
    ALREADY_INSERTED = "already_inserted"  # the bill is in the card package already
    REUPLOAD = "reupload"  # the media id is unknown or expired: upload again, retry once
    FAIL = "fail"  # permanent for this order: a person must fix data or configuration
    REJECT = "reject"  # final: this order can never be inserted
    # What the call asks for is so already on WeChat's side (a refusal or a void that an earlier
    # try made before its answer was lost): record it as done, call nothing again.
    ALREADY_DONE = "already_done"


class Step(StrEnum):
    """The remote calls, as errors and attempt rows name them (plain strings compare equal)."""

    TOKEN = "token"  # noqa: S105 (a step's name, not a password)
    UPLOAD = "upload"
    INSERT = "insert"
    AUTHORIZATION = "authorization"  # getauthdata
    REFUSE = "refuse"  # rejectinsert
    VOID = "void"  # platform/updatestatus to INVOICE_REIMBURSE_CANCEL
    STATUS = "status"  # platform/updatestatus to any other reimburse status
    TICKET = "ticket"  # cgi-bin/ticket/getticket?type=wx_card
    AUTH_LINK = "auth_link"  # nontax/getbillauthurl


class Status(StrEnum):
    """The states of an order's row (`nontax.bill_order.status`)."""

    # Loaded before its payer authorised in WeChat: not due until the authorisation event.
    UNAUTHORIZED = "unauthorized"
    AUTHORIZED = "authorized"
    UPLOADED = "uploaded"
    AWAITING_AUTH = "awaiting_auth"
    INSERTED = "inserted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    REFUSED = "refused"  # refused on the unit's request (rejectinsert): never inserted
    CANCELLED = "cancelled"  # inserted, then voided (INVOICE_REIMBURSE_CANCEL)
    DECLINED = "declined"  # the payer refused the authorisation in WeChat: never sent
    INVALID = "invalid"
    FAILED = "failed"
    # Inserted, but from a row version the row no longer has (a reload landed after the try's
    # hold ran out, its insert already at WeChat): the card package holds the older data.
    MISMATCHED = "mismatched"

    # The four groups partition the states; in the class body the names are still the plain
    # strings, which compare and hash equal to the members.
    WAITING_FOR_PAYER = nonmember(frozenset({UNAUTHORIZED}))
    DUE = nonmember(frozenset({AUTHORIZED, UPLOADED, AWAITING_AUTH}))
    FINISHED = nonmember(frozenset({INSERTED, DUPLICATE, REJECTED, REFUSED, CANCELLED, DECLINED}))
    NEEDS_ATTENTION = nonmember(frozenset({INVALID, FAILED, MISMATCHED}))
    # Never sent again nor changed by a reload or a late answer: the finished states, and the
    # one that needs a person although its bill is in the card package.
    SETTLED = nonmember(
        frozenset({INSERTED, DUPLICATE, REJECTED, REFUSED, CANCELLED, DECLINED, MISMATCHED})
    )


class Signal(StrEnum):
    """What went wrong when there is no errcode to read."""

    HTTP_5XX = "http_5xx"
    HTTP_4XX = "http_4xx"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    MALFORMED_ANSWER = "malformed_answer"  # not JSON, or JSON without a usable errcode


_STATUS_FOR_ACTION: Mapping[Action, Status] = MappingProxyType(
    {
        Action.FAIL: Status.FAILED,
        Action.REJECT: Status.REJECTED,
        Action.ALREADY_INSERTED: Status.DUPLICATE,
        Action.WAIT_AUTHORIZATION: Status.AWAITING_AUTH,
    }
)
_STATUS_FOR_SUCCESS: Mapping[str, Status] = MappingProxyType(
    {
        Step.AUTHORIZATION: Status.AUTHORIZED,
        Step.UPLOAD: Status.UPLOADED,
        Step.INSERT: Status.INSERTED,
        Step.REFUSE: Status.REFUSED,  # refused on purpose: never inserted
        Step.VOID: Status.CANCELLED,
    }
)


def status_for(action: Action, step: str | None = None) -> Status | None:
    """The status an action leaves the order in; None keeps the current one.

    RETRY, REFRESH_TOKEN, STOP_QUOTA and REUPLOAD leave the order as it is (still due). SUCCESS
    depends on the step that succeeded: `upload` -> uploaded, `insert` -> inserted, `refuse`
    -> refused, `void` -> cancelled; ALREADY_DONE is the step's success, found out later.
    """
    action = Action(action)
    if action is Action.SUCCESS or action is Action.ALREADY_DONE:
        return _STATUS_FOR_SUCCESS.get(step) if step is not None else None
    return _STATUS_FOR_ACTION.get(action)
