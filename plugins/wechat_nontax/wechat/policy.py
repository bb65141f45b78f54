"""What to do after each answer from WeChat: the errcode policy, in one table.

Every call the pipeline makes (token, PDF upload, insertbill, authorization status, refusing an
order, setting a bill's status) ends in a signal: an `errcode` from the answer, or one of the
transport `Signal`s when no usable answer came back. `POLICY` maps each signal to a `Rule`: the
`Action` to take and a reason written for the person on duty. A few answers mean something
else after one kind of call (72035 after a refusal: it was refused already; 72060 after a void:
it was voided already): `STEP_POLICY` holds those, per `Step`, and `classify(signal, step)`
looks there first. Of the steps of the insert path only getauthdata has an entry there (what
a repeated -1 hints at), so what the others do is the table's. The table follows
`spec/wechat-api-facts.md`; codes outside it are looked up in WeChat's global error codes.
Anything not in the table is a permanent failure with a reason that says so, so an unknown code
is seen by a person instead of being retried forever.

`Status` names the states an order's row can be in; `status_for` says which state an action
leaves the order in. The module is pure: the caller supplies the clock and the random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
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


@dataclass(frozen=True)
class Rule:
    """One row of the policy: what a signal means and what to do about it.

    `retry_delay_s` is a fixed wait before the next call (0 for "right away"); None with a
    retrying action means exponential backoff. `until_next_minute` waits into the next calendar
    minute instead. `max_retries` bounds how often the action may be repeated for one order
    before the order fails with `exhausted_reason` (a template with `{answers}`); None leaves
    the bound to the caller.
    """

    action: Action
    meaning: str
    reason: str
    retry_delay_s: float | None = None
    until_next_minute: bool = False
    max_retries: int | None = None
    exhausted_reason: str | None = None

    @property
    def waits(self) -> bool:
        """Whether the order is tried again later (so `delay_s` applies)."""
        return self.action in _WAITING_ACTIONS

    def delay_s(self, answers: int, *, now: float, jitter: float) -> float:
        """Seconds to wait before trying again after the `answers`-th such answer (1-based)."""
        if not self.waits:
            raise ValueError(f"a {self.action} rule does not try again")
        if self.until_next_minute:
            return delay_until_next_minute(now)
        if self.retry_delay_s is not None:
            return self.retry_delay_s
        return backoff_delay(answers, jitter=jitter)


_WAITING_ACTIONS = frozenset(
    {Action.RETRY, Action.REFRESH_TOKEN, Action.REUPLOAD, Action.WAIT_AUTHORIZATION}
)

# -1 has also been seen for a bad billing_no/billing_code on insert (spec/wechat-api-facts.md):
# retrying it forever would hide a data problem, so it gets a few retries and then fails.
BUSY_RETRY_LIMIT = 3

# 72038: how often to ask again while the user's authorisation is not visible to WeChat, and
# how long to wait in total before the order needs a person. Our choice, not WeChat's.
AUTHORIZATION_RECHECK_S = 15 * 60.0
AUTHORIZATION_DEADLINE_S = 24 * 3600.0

# 72054 "inserting, wait": an insert of this order is still in progress on WeChat's side (in
# practice an earlier call of ours whose answer was lost: two holders never insert one order).
# Ask again after this wait, one call at a time, this many times; then the order needs a person.
# Our choice: the facts give the meaning only as reported, not how long an insert may take.
INSERT_IN_PROGRESS_WAIT_S = 10.0
INSERT_IN_PROGRESS_LIMIT = 6


def _token_rule(meaning: str) -> Rule:
    # 40001/40014/41001/42001 share one remedy (spec: invalidate-if-same, refresh, retry once).
    return Rule(
        Action.REFRESH_TOKEN,
        meaning,
        "the access token is no longer valid: invalidate it if it is still the cached one, "
        "refresh, and retry the call once",
        retry_delay_s=0.0,
        max_retries=1,
        exhausted_reason="the access token was refused again right after a refresh "
        "({answers} times): another process may be refreshing this appid's token outside the "
        "shared cache, or the app secret changed",
    )


_CONFIGURATION = "fix the account configuration (appid, app secret, card, interface permission)"
_DATA = "fix the order's data, then make it due again"

POLICY: Mapping[int | str, Rule] = MappingProxyType(
    {
        0: Rule(Action.SUCCESS, "ok", "the call succeeded"),
        -1: Rule(
            Action.RETRY,
            "system busy",
            "WeChat is busy: retry with backoff",
            max_retries=BUSY_RETRY_LIMIT,
            exhausted_reason="WeChat answered -1 (system busy) {answers} times in a row for this "
            "order: if it persists, check billing_no/billing_code",
        ),
        40001: _token_rule("access_token invalid or not latest"),
        40014: _token_rule("invalid access_token"),
        41001: _token_rule("access_token missing"),
        42001: _token_rule("access_token expired"),
        40007: Rule(
            Action.REUPLOAD,
            "invalid media_id",
            "the PDF's media id is unknown or expired: upload the PDF again, then retry once",
            retry_delay_s=0.0,
            max_retries=1,
            exhausted_reason="WeChat refused the PDF's media id again right after a fresh upload "
            "({answers} times): check the upload step and that it uses the same appid",
        ),
        40013: Rule(
            Action.FAIL, "invalid appid", f"configuration: the appid is wrong: {_CONFIGURATION}"
        ),
        40125: Rule(
            Action.FAIL,
            "invalid appsecret",
            f"configuration: the app secret is wrong: {_CONFIGURATION}",
        ),
        45009: Rule(
            Action.STOP_QUOTA,
            "daily API quota reached",
            "the account's daily call quota is used up: no more calls today; the orders stay due "
            "for the next run",
        ),
        45011: Rule(
            Action.RETRY,
            "API minute quota reached",
            "the per-minute call quota is used up: wait into the next minute and retry",
            until_next_minute=True,
        ),
        47001: Rule(
            Action.FAIL,
            "data format error",
            "WeChat could not parse the request: a malformed field or a bug in the pipeline; "
            "check the order's fields",
        ),
        40078: Rule(
            Action.FAIL,
            "card_id not authorised or card too new",
            "card_id not authorised for this account or too new: fix the card configuration",
        ),
        72015: Rule(
            Action.FAIL,
            "no permission",
            f"the account has no permission for this interface: {_CONFIGURATION}",
        ),
        72017: Rule(
            Action.FAIL,
            "title mismatch",
            f"the bill's title does not match the card's registered title: {_DATA}",
        ),
        72023: Rule(
            Action.FAIL,
            "locked by another account",
            "the order is locked by another account: find out which appid holds it",
        ),
        72024: Rule(
            Action.FAIL,
            "status error",
            "the order or card is in a state that does not accept this bill: check it in the "
            "WeChat back office",
        ),
        72031: Rule(Action.FAIL, "invalid params", f"WeChat rejected the bill's fields: {_DATA}"),
        72035: Rule(
            Action.REJECT,
            "business rejected insert",
            "WeChat refuses this order_id for good: its bill can never be inserted",
        ),
        72036: Rule(Action.RETRY, "invoice busy", "the bill is busy on WeChat's side: retry"),
        72038: Rule(
            Action.WAIT_AUTHORIZATION,
            "order not authorised (appid / order_id mismatch)",
            "WeChat does not see the user's authorisation for this order yet: check again later; "
            "if it persists, check that appid and order_id match the authorisation",
            retry_delay_s=AUTHORIZATION_RECHECK_S,
        ),
        72040: Rule(
            Action.FAIL, "invalid PDF", "WeChat rejected the bill's PDF: regenerate the PDF"
        ),
        72042: Rule(
            Action.FAIL,
            "billing_code + billing_no already used",
            f"another bill already uses this billing_code + billing_no: {_DATA}",
        ),
        72043: Rule(
            Action.FAIL,
            "code/number size error",
            f"billing_code or billing_no has the wrong size: {_DATA}",
        ),
        # The rows 72048-72082 follow meanings "as reported, not confirmed for fiscal bills"
        # (spec/wechat-api-facts.md, "After the insert"): each takes the safe action, and the
        # "Assumptions about WeChat" in docs/reliability.md names them.
        # 72048: the payer's authorisation no longer covers an insert. Not waited for like
        # 72038 (an authorisation WeChat has not seen yet, which arrives by itself): nothing
        # the pipeline does brings a new one, and blind re-inserts would only be refused.
        72048: Rule(
            Action.FAIL,
            "insert too many, need auth again",
            "WeChat wants the payer to authorise this order again: have the payer authorise it "
            "again (a new authorisation link from the unit's payment service), then make the "
            "order due again; until then every insert is refused, so it is not retried",
        ),
        # 72054: an insert of this order is in progress; never a second one alongside it: the
        # same holder asks again after a fixed wait, and a finished insert then answers 72056.
        72054: Rule(
            Action.RETRY,
            "inserting, wait",
            "WeChat is still inserting this order (an earlier call whose answer was lost): "
            "wait, then ask again",
            retry_delay_s=INSERT_IN_PROGRESS_WAIT_S,
            max_retries=INSERT_IN_PROGRESS_LIMIT,
            exhausted_reason="WeChat said {answers} times in a row that an insert of this order "
            "is in progress: make it due again later (if that insert went through, the next try "
            "records it as duplicate)",
        ),
        # 72057: a daily limit on inserts, handled like the daily API quota 45009.
        72057: Rule(
            Action.STOP_QUOTA,
            "today insert limit",
            "the account's daily insert limit is used up: no more inserts today; the orders "
            "stay due for the next run after midnight Beijing time",
        ),
        # 72060/72061 answer platform/updatestatus. After a void, 72060 means it is done
        # already (STEP_POLICY); after anything else, the bill can no longer change.
        72060: Rule(
            Action.FAIL,
            "cancelled: the bill was red-reversed",
            "the bill is red-reversed (INVOICE_REIMBURSE_CANCEL) on WeChat: its status can no "
            "longer change",
        ),
        72061: Rule(
            Action.FAIL,
            "closed: the bill was written off",
            "the bill was written off (INVOICE_REIMBURSE_CLOSURE, reimbursed): it has left the "
            "payer's card package and can no longer be voided or changed; settle the refund "
            "outside WeChat",
        ),
        # 72082: like 72040, the PDF itself is at fault.
        72082: Rule(
            Action.FAIL,
            "PDF check error",
            "WeChat's check of the bill's PDF failed: regenerate the PDF",
        ),
        # 40056 (WeChat's global "invalid serial code"): updatestatus names no bill of ours.
        40056: Rule(
            Action.FAIL,
            "invalid serial code",
            "WeChat knows no bill of this account with this card_id and code: check the "
            "order's recorded code and card_id",
        ),
        # Assumed from card/invoice/insert (not confirmed for nontax): a second insert of the
        # same order_id answers 72056. The order is in the card package: never insert it again.
        72056: Rule(
            Action.ALREADY_INSERTED,
            "order_id repeated",
            "the bill is already in the user's card package: it is never inserted again, and its "
            "code and openid stay unknown",
        ),
        Signal.HTTP_5XX: Rule(
            Action.RETRY, "WeChat answered HTTP 5xx", "WeChat's server failed: retry with backoff"
        ),
        Signal.HTTP_4XX: Rule(
            Action.FAIL,
            "WeChat answered HTTP 4xx",
            "the request was refused at the HTTP level: check the Connection's host and path",
        ),
        # Retrying a call whose answer was lost is safe, also for insertbill: had the first
        # insert gone through, the repeat answers 72056 and the order ends as a duplicate.
        Signal.TIMEOUT: Rule(
            Action.RETRY, "no answer in time", "WeChat did not answer in time: retry with backoff"
        ),
        Signal.CONNECTION_ERROR: Rule(
            Action.RETRY,
            "connection failed",
            "could not reach WeChat: retry with backoff",
        ),
        Signal.MALFORMED_ANSWER: Rule(
            Action.RETRY,
            "malformed answer",
            "WeChat's answer was not JSON with an errcode: retry with backoff",
        ),
    }
)


# Where an answer means something else after one kind of call. Each row is looked up before
# POLICY's for its step only; every other step gets POLICY's row.
STEP_POLICY: Mapping[str, Mapping[int | str, Rule]] = MappingProxyType(
    {
        Step.REFUSE: MappingProxyType(
            {
                # A refused order_id answers 72035 to every later refusal: a retry after a
                # lost answer finds its own refusal done.
                72035: Rule(
                    Action.ALREADY_DONE,
                    "business rejected insert: the order is refused already",
                    "WeChat has refused this order already (an earlier call went through): "
                    "the refusal is done",
                ),
                # Assumed (the sandbox answers it; WeChat documents nothing): the order's bill
                # is in the card package, so it cannot be refused any more.
                72056: Rule(
                    Action.ALREADY_INSERTED,
                    "order_id repeated: the order has a bill",
                    "the order's bill is already in the payer's card package, its code "
                    "unknown (WeChat has no call to look it up): it can be neither refused nor "
                    "voided from here; void it in WeChat's back office",
                ),
            }
        ),
        # getauthdata names only the order (and the platform's s_pappid): a -1 that persists
        # cannot be the insert's bad billing_no.
        Step.AUTHORIZATION: MappingProxyType(
            {
                -1: replace(
                    POLICY[-1],
                    exhausted_reason="WeChat answered -1 (system busy) {answers} times in a row "
                    "to getauthdata for this order: if it persists, check the WeChat "
                    "Connection's s_pappid and that this order_id is the one the payer "
                    "authorised, then make the order due again",
                ),
            }
        ),
        Step.VOID: MappingProxyType(
            {
                72060: Rule(
                    Action.ALREADY_DONE,
                    "cancelled: the bill is red-reversed already",
                    "the bill is red-reversed (INVOICE_REIMBURSE_CANCEL) on WeChat already (an "
                    "earlier call went through): the void is done",
                ),
            }
        ),
    }
)


def classify(signal: int | str, step: str | None = None) -> Rule:
    """The rule for an errcode or a transport `Signal` after a call of `step` (STEP_POLICY's
    row for that step if it has one, else POLICY's); unknown ones fail the order."""
    if isinstance(signal, bool):  # True == 1 and False == 0 would find rows by accident
        raise TypeError(f"a signal is an errcode or a Signal, not {signal!r}")
    if step is not None:
        override = STEP_POLICY.get(step, {}).get(signal)
        if override is not None:
            return override
    rule = POLICY.get(signal)
    if rule is not None:
        return rule
    if isinstance(signal, int):
        return Rule(
            Action.FAIL,
            f"unknown errcode {signal}",
            f"unknown errcode {signal}: not in the pipeline's policy; look it up in WeChat's "
            "global error codes and add a rule for it",
        )
    return Rule(
        Action.FAIL,
        f"unknown signal {signal!r}",
        f"unknown signal {signal!r}: a bug in the pipeline",
    )


def classify_attempt(signal: int | str, answers: int, step: str | None = None) -> Rule:
    """The rule after the `answers`-th consecutive answer `signal` to a call of `step` for one
    order (1-based).

    The table's rule while its `max_retries` allows another try; past it, a FAIL rule whose
    reason says how often the signal came back.
    """
    if answers < 1:
        raise ValueError(f"answers counts from 1, got {answers}")
    rule = classify(signal, step)
    if rule.max_retries is None or answers <= rule.max_retries:
        return rule
    reason = (rule.exhausted_reason or "{answers} answers in a row: giving up").format(
        answers=answers
    )
    return Rule(Action.FAIL, rule.meaning, reason)


def authorization_wait_rule(waited_s: float) -> Rule:
    """The rule for a 72038 after waiting `waited_s` since the order was authorised."""
    rule = POLICY[72038]
    if waited_s < AUTHORIZATION_DEADLINE_S:
        return rule
    hours = AUTHORIZATION_DEADLINE_S / 3600
    return Rule(
        Action.FAIL,
        rule.meaning,
        f"WeChat still does not see the user's authorisation after {hours:g} h: check that "
        "appid and order_id match the authorisation",
    )


# getauthdata's `invoice_status` for an order that waits for its authorisation (72038 before).
# The facts list the values seen, not all of them: an unknown one is taken as "not authorised
# yet" (no insert; asked again; failed after the deadline with the value in its reason), the
# safe reading, since an insert without an authorisation is refused anyway.
AUTH_SUCCESS = "auth success"
AUTH_NEVER = "never auth"
AUTH_REJECTED = "reject insert"
_AUTH_WAIT_REASON = (
    "WeChat says the payer has not authorised this order yet (getauthdata: {status}): asked "
    "again later without an insert call; failed after the deadline"
)
AUTH_STATUS_POLICY: Mapping[str, Rule] = MappingProxyType(
    {
        AUTH_SUCCESS: Rule(
            Action.SUCCESS, "authorised", "the payer has authorised the order: it is inserted"
        ),
        AUTH_NEVER: Rule(
            Action.WAIT_AUTHORIZATION,
            "not authorised yet",
            _AUTH_WAIT_REASON.format(status=AUTH_NEVER),
            retry_delay_s=AUTHORIZATION_RECHECK_S,
        ),
        AUTH_REJECTED: Rule(
            Action.REJECT,
            "the payer refused the bill",
            "the payer refused the bill for this order (getauthdata: reject insert): it can "
            "never be inserted",
        ),
    }
)


def authorization_status_rule(invoice_status: str) -> Rule:
    """What to do with a waiting order after getauthdata answered `invoice_status`."""
    rule = AUTH_STATUS_POLICY.get(invoice_status)
    if rule is not None:
        return rule
    return Rule(
        Action.WAIT_AUTHORIZATION,
        f"unknown authorisation status {invoice_status!r}",
        _AUTH_WAIT_REASON.format(status=f"{invoice_status!r}, a value the pipeline does not know")
        + "; if it persists, check what WeChat means by it",
        retry_delay_s=AUTHORIZATION_RECHECK_S,
    )


def signal_for_http_status(status: int) -> Signal | None:
    """The signal for an HTTP status, None when the body is to be read (2xx, 3xx)."""
    if 500 <= status <= 599:
        return Signal.HTTP_5XX
    if 400 <= status <= 499:
        return Signal.HTTP_4XX
    return None


def delay_until_next_minute(now: float) -> float:
    """Seconds from `now` (Unix time) into the next calendar minute, plus one for clock skew."""
    next_minute = (math.floor(now / 60) + 1) * 60
    return next_minute - now + 1.0


# WeChat's daily quotas are counted per Beijing calendar day (UTC+8, no daylight saving).
_UTC8_OFFSET_S = 8 * 3600
QUOTA_TIMEZONE = timezone(timedelta(seconds=_UTC8_OFFSET_S))  # for showing a reset time


def beijing_time(at: datetime) -> str:
    """A moment as the logs, the runbook and WeChat's quotas speak of it: Beijing time."""
    return f"{at.astimezone(QUOTA_TIMEZONE):%Y-%m-%d %H:%M} Beijing time"


def seconds_until_quota_reset(now: float) -> float:
    """Seconds from `now` (Unix time) to the next midnight UTC+8, when daily quotas reset.

    WeChat resets daily quotas at midnight Beijing time (assumption, not confirmed by the
    facts); plus a minute for clock skew.
    """
    day = 86_400
    local = now + _UTC8_OFFSET_S
    next_midnight = (math.floor(local / day) + 1) * day
    return next_midnight - local + 60.0


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0, jitter: float) -> float:
    """Exponential backoff with equal jitter for the `attempt`-th retry (1-based).

    The delay doubles from `base` up to `cap`; half of it is fixed and half scaled by `jitter`,
    a random number in [0, 1) that the caller draws, so concurrent workers spread out while
    the function stays pure.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    ceiling = min(cap, base * 2 ** min(attempt - 1, 64))  # bounded exponent: no overflow
    return ceiling / 2 + ceiling / 2 * jitter


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
