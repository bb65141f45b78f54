"""The errcode policy: every row of the table, the delays, and the statuses actions leave."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wechat_nontax.wechat.policy import (
    AUTH_STATUS_POLICY,
    authorization_status_rule,
    authorization_wait_rule,
    classify,
    classify_attempt,
    signal_for_http_status,
)
from wechat_nontax.wechat.rules import (
    AUTHORIZATION_DEADLINE_S,
    AUTHORIZATION_RECHECK_S,
    BUSY_RETRY_LIMIT,
    INSERT_IN_PROGRESS_LIMIT,
    INSERT_IN_PROGRESS_WAIT_S,
    POLICY,
    STEP_POLICY,
    Rule,
)
from wechat_nontax.wechat.statuses import Action, Signal, Status, Step, status_for
from wechat_nontax.wechat.timing import (
    backoff_delay,
    delay_until_next_minute,
    seconds_until_quota_reset,
)

# Written out apart from POLICY on purpose: the facts' table, as this test reads it.
EXPECTED = {
    0: Action.SUCCESS,
    -1: Action.RETRY,
    40001: Action.REFRESH_TOKEN,
    40014: Action.REFRESH_TOKEN,
    42001: Action.REFRESH_TOKEN,
    41001: Action.REFRESH_TOKEN,
    45009: Action.STOP_QUOTA,
    45011: Action.RETRY,
    47001: Action.FAIL,
    40078: Action.FAIL,
    72015: Action.FAIL,
    72017: Action.FAIL,
    72023: Action.FAIL,
    72024: Action.FAIL,
    72031: Action.FAIL,
    72035: Action.REJECT,
    72036: Action.RETRY,
    72038: Action.WAIT_AUTHORIZATION,
    72040: Action.FAIL,
    72042: Action.FAIL,
    72043: Action.FAIL,
    72056: Action.ALREADY_INSERTED,
    # After the insert (spec "After the insert"; meanings as reported, the actions our choice).
    72048: Action.FAIL,  # the payer must authorise again: a person, never blind re-inserts
    72054: Action.RETRY,  # inserting, wait: the same holder asks again after a fixed wait
    72057: Action.STOP_QUOTA,  # today insert limit: a daily quota like 45009
    72060: Action.FAIL,  # red-reversed: nothing can change it (a void's own 72060: below)
    72061: Action.FAIL,  # written off: it cannot be voided or changed
    72082: Action.FAIL,  # PDF check error, like 72040
    40056: Action.FAIL,  # updatestatus: no bill of ours with this card_id + code
    40007: Action.REUPLOAD,
    40013: Action.FAIL,
    40125: Action.FAIL,
    "http_5xx": Action.RETRY,
    "http_4xx": Action.FAIL,
    "timeout": Action.RETRY,
    "connection_error": Action.RETRY,
    "malformed_answer": Action.RETRY,
}


def test_the_table_has_exactly_the_expected_rows():
    assert set(POLICY) == set(EXPECTED)


@pytest.mark.parametrize(("signal", "action"), list(EXPECTED.items()), ids=str)
def test_every_row(signal, action):
    rule = classify(signal)
    assert rule is POLICY[signal]
    assert rule.action is action
    assert rule.reason
    assert rule.meaning
    assert rule.waits == (
        action in {Action.RETRY, Action.REFRESH_TOKEN, Action.REUPLOAD, Action.WAIT_AUTHORIZATION}
    )
    if rule.max_retries is not None:
        assert "{answers}" in rule.exhausted_reason
    if action in {Action.REFRESH_TOKEN, Action.REUPLOAD}:
        assert rule.max_retries == 1  # retry the call once
        assert rule.retry_delay_s == 0.0


def test_signals_are_usable_as_plain_strings():
    assert classify(Signal.TIMEOUT) is classify("timeout")
    assert {str(s) for s in Signal} <= {k for k in POLICY if isinstance(k, str)}


@pytest.mark.parametrize("code", [12345, -2, 99999])
def test_unknown_errcode_fails_with_a_reason_that_says_so(code):
    rule = classify(code)
    assert rule.action is Action.FAIL
    assert rule.reason.startswith(f"unknown errcode {code}: ")


def test_unknown_string_signal_fails():
    assert classify("http_3xx").action is Action.FAIL
    assert "unknown signal" in classify("http_3xx").reason


@pytest.mark.parametrize("signal", [True, False])
def test_bools_are_not_errcodes(signal):
    with pytest.raises(TypeError):
        classify(signal)


def test_busy_is_retried_then_fails_with_the_billing_hint():
    for answers in range(1, BUSY_RETRY_LIMIT + 1):
        assert classify_attempt(-1, answers) is POLICY[-1]
    rule = classify_attempt(-1, BUSY_RETRY_LIMIT + 1)
    assert rule.action is Action.FAIL
    assert rule.reason == (
        f"WeChat answered -1 (system busy) {BUSY_RETRY_LIMIT + 1} times in a row for this "
        "order: if it persists, check billing_no/billing_code"
    )


def test_busy_after_getauthdata_is_retried_alike_then_fails_with_its_own_hint():
    for answers in range(1, BUSY_RETRY_LIMIT + 1):
        rule = classify_attempt(-1, answers, Step.AUTHORIZATION)
        assert rule.action is Action.RETRY and rule.max_retries == BUSY_RETRY_LIMIT
    rule = classify_attempt(-1, BUSY_RETRY_LIMIT + 1, Step.AUTHORIZATION)
    assert rule.action is Action.FAIL
    assert "to getauthdata" in rule.reason and "s_pappid" in rule.reason
    assert "billing_no" not in rule.reason


@pytest.mark.parametrize("signal", [40001, 40014, 41001, 42001, 40007])
def test_refresh_and_reupload_are_tried_once(signal):
    assert classify_attempt(signal, 1).action is not Action.FAIL
    second = classify_attempt(signal, 2)
    assert second.action is Action.FAIL
    assert "2 times" in second.reason


@pytest.mark.parametrize("signal", ["timeout", "http_5xx", 72036, 45011])
def test_unbounded_retries_are_left_to_the_caller(signal):
    assert classify_attempt(signal, 1000).action is Action.RETRY


def test_answers_count_from_one():
    with pytest.raises(ValueError, match="from 1"):
        classify_attempt(-1, 0)


def test_authorization_waits_until_the_deadline():
    assert authorization_wait_rule(0) is POLICY[72038]
    assert authorization_wait_rule(AUTHORIZATION_DEADLINE_S - 1) is POLICY[72038]
    late = authorization_wait_rule(AUTHORIZATION_DEADLINE_S)
    assert late.action is Action.FAIL
    assert "appid and order_id" in late.reason
    assert POLICY[72038].delay_s(1, now=0, jitter=0) == AUTHORIZATION_RECHECK_S


@pytest.mark.parametrize(
    ("now", "expected"),
    [(120.0, 61.0), (120.5, 60.5), (179.0, 2.0), (179.999, 1.001), (1_700_000_000, 41.0)],
)
def test_delay_until_next_minute(now, expected):
    assert delay_until_next_minute(now) == pytest.approx(expected)


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_delay_until_next_minute_lands_in_the_next_minute(now):
    delay = delay_until_next_minute(now)
    assert 1.0 < delay <= 61.0 + 1e-6
    assert (now + delay) // 60 > now // 60


def test_minute_quota_waits_into_the_next_minute():
    assert POLICY[45011].delay_s(1, now=130.0, jitter=0.9) == pytest.approx(51.0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1_700_000_000 - 1_700_000_000 % 86_400 - 8 * 3600, 86_400 + 60),  # 00:00 UTC+8
        (1_699_977_600 - 1, 1 + 60),  # 23:59:59 UTC+8
    ],
)
def test_seconds_until_quota_reset(now, expected):
    assert seconds_until_quota_reset(now) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [(1, 0.0, 0.25), (1, 0.5, 0.375), (2, 0.0, 0.5), (3, 0.0, 1.0), (7, 0.0, 15.0), (8, 0.0, 15.0)],
)
def test_backoff_delay_values(attempt, jitter, expected):
    assert backoff_delay(attempt, jitter=jitter) == pytest.approx(expected)


@given(
    st.integers(min_value=1, max_value=10_000),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_delay_bounds(attempt, jitter):
    delay = backoff_delay(attempt, jitter=jitter)
    ceiling = min(30.0, 0.5 * 2 ** min(attempt - 1, 64))
    assert ceiling / 2 <= delay <= ceiling
    assert 0 < delay <= 30.0
    assert backoff_delay(attempt + 1, jitter=jitter) >= delay


@pytest.mark.parametrize(("attempt", "jitter"), [(0, 0.5), (1, -0.1), (1, 1.0)])
def test_backoff_delay_refuses_bad_input(attempt, jitter):
    with pytest.raises(ValueError, match=r"attempt|jitter"):
        backoff_delay(attempt, jitter=jitter)


def test_backoff_rule_uses_backoff_delay():
    assert POLICY[-1].delay_s(3, now=0, jitter=0.25) == backoff_delay(3, jitter=0.25)
    assert POLICY[40001].delay_s(1, now=0, jitter=0.5) == 0.0


@pytest.mark.parametrize("signal", [0, 47001, 45009, 72035, 72056])
def test_rules_that_do_not_wait_have_no_delay(signal):
    with pytest.raises(ValueError, match="does not try again"):
        POLICY[signal].delay_s(1, now=0, jitter=0)


@pytest.mark.parametrize(
    ("action", "status"),
    [
        (Action.FAIL, Status.FAILED),
        (Action.REJECT, Status.REJECTED),
        (Action.ALREADY_INSERTED, Status.DUPLICATE),
        (Action.WAIT_AUTHORIZATION, Status.AWAITING_AUTH),
        (Action.RETRY, None),
        (Action.REFRESH_TOKEN, None),
        (Action.STOP_QUOTA, None),
        (Action.REUPLOAD, None),
        (Action.SUCCESS, None),
        ("fail", Status.FAILED),
    ],
)
def test_status_for(action, status):
    assert status_for(action) == status


@pytest.mark.parametrize(
    ("step", "status"),
    [("upload", Status.UPLOADED), ("insert", Status.INSERTED), ("token", None)],
)
def test_status_for_success_depends_on_the_step(step, status):
    assert status_for(Action.SUCCESS, step) == status


def test_every_action_leaves_a_due_status_or_a_final_one():
    for action in Action:
        status = status_for(action)
        assert status is None or status in Status.DUE | Status.FINISHED | Status.NEEDS_ATTENTION


def test_status_groups_partition_the_statuses():
    groups = [Status.WAITING_FOR_PAYER, Status.DUE, Status.FINISHED, Status.NEEDS_ATTENTION]
    assert set().union(*groups) == set(Status)
    assert sum(len(g) for g in groups) == len(Status)
    assert Status.AWAITING_AUTH in Status.DUE
    assert Status.DUPLICATE in Status.FINISHED
    assert Status.INVALID in Status.NEEDS_ATTENTION
    assert [str(s) for s in Status] == [
        "unauthorized",
        "authorized",
        "uploaded",
        "awaiting_auth",
        "inserted",
        "duplicate",
        "rejected",
        "refused",
        "cancelled",
        "declined",
        "invalid",
        "failed",
        "mismatched",
    ]
    # Never sent again: the finished ones, and the one needing a person whose bill exists.
    assert Status.FINISHED | {Status.MISMATCHED} == Status.SETTLED


@pytest.mark.parametrize(
    ("status", "signal"),
    [
        (200, None),
        (302, None),
        (400, "http_4xx"),
        (404, "http_4xx"),
        (500, "http_5xx"),
        (503, "http_5xx"),
    ],
)
def test_signal_for_http_status(status, signal):
    assert signal_for_http_status(status) == signal


def test_rules_are_immutable():
    with pytest.raises(TypeError):
        POLICY[0] = Rule(Action.FAIL, "x", "y")  # type: ignore[index]


# ---------------------------------------------------------------- the rows after the insert
# Per step: where an answer means something else. Written out apart from STEP_POLICY too.
EXPECTED_BY_STEP = {
    ("refuse", 72035): Action.ALREADY_DONE,  # refused already (an earlier try's call)
    ("refuse", 72056): Action.ALREADY_INSERTED,  # the order has a bill: cannot be refused
    ("void", 72060): Action.ALREADY_DONE,  # red-reversed already (an earlier try's call)
    ("authorization", -1): Action.RETRY,  # busy, with getauthdata's own hint once it persists
    ("auth_link", 40097): Action.RETRY,  # a stale wx_card ticket (assumed): a fresh one, once
}


def test_the_step_table_has_exactly_the_expected_rows():
    rows = {(step, signal) for step, table in STEP_POLICY.items() for signal in table}
    assert rows == set(EXPECTED_BY_STEP)


@pytest.mark.parametrize(("key", "action"), list(EXPECTED_BY_STEP.items()), ids=str)
def test_every_step_row(key, action):
    step, signal = key
    rule = classify(signal, step)
    assert rule is STEP_POLICY[step][signal]
    assert rule.action is action and rule.reason and rule.meaning
    assert rule.waits is (action is Action.RETRY)
    assert rule is not POLICY.get(signal)  # the same answer after another call is the table's


@pytest.mark.parametrize("step", [None, *Step])
@pytest.mark.parametrize("signal", sorted(EXPECTED, key=str), ids=str)
def test_steps_without_a_row_get_the_tables_rule(step, signal):
    if (step, signal) not in EXPECTED_BY_STEP:
        assert classify(signal, step) is POLICY[signal]


def test_a_refused_link_is_asked_again_once_then_fails_with_what_to_check():
    assert classify_attempt(40097, 1, "auth_link").action is Action.RETRY
    failed = classify_attempt(40097, 2, "auth_link")
    assert failed.action is Action.FAIL and "s_pappid" in failed.reason
    assert classify(40097, "insert").action is Action.FAIL  # unknown after any other call


@pytest.mark.parametrize("step", ["token", "upload", "insert", "authorization"])
def test_the_insert_path_has_no_step_rows_but_getauthdatas_busy_hint(step):
    # What issuing does after every answer is the table's, as before the steps after the insert.
    assert set(STEP_POLICY.get(step, {})) <= ({-1} if step == "authorization" else set())
    assert classify(72035, step).action is Action.REJECT
    assert classify(72060, step).action is Action.FAIL


def test_72054_waits_a_fixed_time_then_needs_a_person():
    rule = POLICY[72054]
    assert rule.delay_s(1, now=0, jitter=0.9) == INSERT_IN_PROGRESS_WAIT_S
    for answers in range(1, INSERT_IN_PROGRESS_LIMIT + 1):
        assert classify_attempt(72054, answers) is rule
    late = classify_attempt(72054, INSERT_IN_PROGRESS_LIMIT + 1)
    assert late.action is Action.FAIL
    assert f"{INSERT_IN_PROGRESS_LIMIT + 1} times in a row" in late.reason
    assert "duplicate" in late.reason


def test_72057_is_a_daily_quota_like_45009():
    assert POLICY[72057].action is POLICY[45009].action is Action.STOP_QUOTA
    assert "daily insert limit" in POLICY[72057].reason
    with pytest.raises(ValueError, match="does not try again"):
        POLICY[72057].delay_s(1, now=0, jitter=0)


def test_72048_needs_a_person_to_have_the_payer_authorise_again():
    rule = POLICY[72048]
    assert rule.action is Action.FAIL and status_for(rule.action) is Status.FAILED
    assert "authorise it again" in rule.reason and "make the order due again" in rule.reason


def test_72082_is_a_pdf_failure_like_72040():
    assert POLICY[72082].action is POLICY[72040].action is Action.FAIL
    assert "regenerate the PDF" in POLICY[72082].reason


def test_after_a_void_72060_is_done_and_72061_is_not():
    assert classify(72060, "void").action is Action.ALREADY_DONE
    assert classify(72060, "status").action is Action.FAIL  # a lock of a cancelled bill
    assert classify(72061, "void").action is Action.FAIL
    assert "can no longer be voided" in classify(72061, "void").reason


def test_classify_attempt_uses_the_steps_row():
    assert classify_attempt(72035, 1, "refuse").action is Action.ALREADY_DONE
    assert classify_attempt(72035, 1).action is Action.REJECT


@pytest.mark.parametrize(
    ("action", "step", "status"),
    [
        (Action.SUCCESS, "refuse", Status.REFUSED),
        (Action.ALREADY_DONE, "refuse", Status.REFUSED),
        (Action.SUCCESS, "void", Status.CANCELLED),
        (Action.ALREADY_DONE, "void", Status.CANCELLED),
        (Action.ALREADY_DONE, None, None),
    ],
)
def test_status_after_a_refusal_or_a_void(action, step, status):
    assert status_for(action, step) == status


# ---------------------------------------------------------------- getauthdata's invoice_status
# The values the facts say were seen, and what a waiting order does after each.
EXPECTED_AUTH = {
    "auth success": Action.SUCCESS,
    "never auth": Action.WAIT_AUTHORIZATION,
    "reject insert": Action.REJECT,
}


def test_the_authorisation_table_has_exactly_the_seen_values():
    assert set(AUTH_STATUS_POLICY) == set(EXPECTED_AUTH)


@pytest.mark.parametrize(("invoice_status", "action"), list(EXPECTED_AUTH.items()))
def test_every_authorisation_status(invoice_status, action):
    rule = authorization_status_rule(invoice_status)
    assert rule is AUTH_STATUS_POLICY[invoice_status]
    assert rule.action is action and rule.reason and rule.meaning


def test_waiting_after_never_auth_rechecks_like_72038():
    rule = authorization_status_rule("never auth")
    assert (
        rule.delay_s(1, now=0, jitter=0.5)
        == AUTHORIZATION_RECHECK_S
        == POLICY[72038].delay_s(1, now=0, jitter=0.5)
    )
    assert status_for(rule.action) is Status.AWAITING_AUTH


def test_the_payers_refusal_is_final():
    rule = authorization_status_rule("reject insert")
    assert status_for(rule.action) is Status.REJECTED
    assert "reject insert" in rule.reason


@given(st.text(max_size=30).filter(lambda value: value not in EXPECTED_AUTH))
def test_an_unknown_authorisation_status_is_waited_for_never_inserted(invoice_status):
    # The safe reading of a value the facts do not list: no insert; the deadline bounds it.
    rule = authorization_status_rule(invoice_status)
    assert rule.action is Action.WAIT_AUTHORIZATION
    assert repr(invoice_status) in rule.reason and repr(invoice_status) in rule.meaning
