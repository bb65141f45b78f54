"""The rule for each answer from WeChat: a signal (errcode or transport `Signal`) after a call
of a step, looked up in the table (`rules.POLICY`, `rules.STEP_POLICY`); getauthdata's statuses.

Anything not in the table is a permanent failure with a reason that says so, so an unknown code
is seen by a person instead of being retried forever. The module is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from wechat_nontax.wechat.rules import (
    AUTHORIZATION_DEADLINE_S,
    AUTHORIZATION_RECHECK_S,
    POLICY,
    STEP_POLICY,
    Rule,
)
from wechat_nontax.wechat.statuses import Action, Signal


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
