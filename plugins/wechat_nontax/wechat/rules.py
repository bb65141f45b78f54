"""What to do after each answer from WeChat: the errcode policy, in one table.

Every call the pipeline makes (token, PDF upload, insertbill, authorization status, refusing an
order, setting a bill's status) ends in a signal: an `errcode` from the answer, or one of the
transport `Signal`s when no usable answer came back. `POLICY` maps each signal to a `Rule`: the
`Action` to take and a reason written for the person on duty. A few answers mean something
else after one kind of call (72035 after a refusal: it was refused already; 72060 after a void:
it was voided already): `STEP_POLICY` holds those, per `Step`. Of the steps of the insert path
only getauthdata has an entry there (what a repeated -1 hints at), so what the others do is the
table's. The table follows `spec/wechat-api-facts.md`; codes outside it are looked up in
WeChat's global error codes (`policy.classify` reads the table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from wechat_nontax.wechat.statuses import Action, Signal, Step
from wechat_nontax.wechat.timing import backoff_delay, delay_until_next_minute


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

# WeChat's global "invalid args"; what getbillauthurl is assumed to answer a stale ticket with.
TICKET_REFUSED = 40097


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
        # Assumed (WeChat documents no errcode of getbillauthurl): a ticket it no longer takes
        # is answered like any bad argument, 40097. Making a link twice is harmless, so the
        # link is asked again once with a fresh ticket; a second 40097 is the request's fault.
        Step.AUTH_LINK: MappingProxyType(
            {
                TICKET_REFUSED: Rule(
                    Action.RETRY,
                    "invalid args (or a wx_card ticket WeChat no longer takes)",
                    "WeChat refused the link's arguments or its wx_card ticket: fetch a fresh "
                    "ticket and ask again once",
                    retry_delay_s=0.0,
                    max_retries=1,
                    exhausted_reason="WeChat refused the link's arguments {answers} times, the "
                    "second time with a fresh wx_card ticket: check the WeChat Connection's "
                    "s_pappid, the order's fee and the redirect_url",
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
