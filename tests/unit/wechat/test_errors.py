"""Typed WeChat errors: the subclass follows the policy's action; str() is readable and safe."""

from __future__ import annotations

import pickle

import pytest

from wechat_nontax.wechat.errors import (
    AlreadyDoneError,
    AlreadyInsertedError,
    AwaitingAuthorizationError,
    InvalidOrderError,
    InvalidRequestError,
    MediaExpiredError,
    PermanentError,
    QuotaExhaustedError,
    RejectedError,
    RetryableError,
    TokenInvalidError,
    WeChatError,
    error_for,
    redact,
)
from wechat_nontax.wechat.policy import classify
from wechat_nontax.wechat.rules import BUSY_RETRY_LIMIT, POLICY
from wechat_nontax.wechat.statuses import Action
from wechat_nontax.wechat.validation import Problem

CLASS_FOR_ACTION = {
    Action.RETRY: RetryableError,
    Action.REFRESH_TOKEN: TokenInvalidError,
    Action.STOP_QUOTA: QuotaExhaustedError,
    Action.WAIT_AUTHORIZATION: AwaitingAuthorizationError,
    Action.ALREADY_INSERTED: AlreadyInsertedError,
    Action.REUPLOAD: MediaExpiredError,
    Action.FAIL: PermanentError,
    Action.REJECT: RejectedError,
    Action.ALREADY_DONE: AlreadyDoneError,
}


def test_every_action_but_success_has_a_class():
    assert set(CLASS_FOR_ACTION) == set(Action) - {Action.SUCCESS}


@pytest.mark.parametrize("signal", [s for s in POLICY if s != 0], ids=str)
def test_error_for_every_row_is_the_actions_subclass(signal):
    error = error_for(signal, "what WeChat said", step="insert")
    rule = classify(signal)
    assert type(error) is CLASS_FOR_ACTION[rule.action]
    assert isinstance(error, WeChatError)
    assert error.rule is rule
    assert error.action is rule.action
    assert error.signal == signal
    assert error.errcode == (signal if isinstance(signal, int) else None)
    assert error.errmsg == "what WeChat said"
    assert error.step == "insert"


@pytest.mark.parametrize(
    ("signal", "cls"),
    [
        (-1, RetryableError),
        (40001, TokenInvalidError),
        (45009, QuotaExhaustedError),
        (72038, AwaitingAuthorizationError),
        (72056, AlreadyInsertedError),
        (40007, MediaExpiredError),
        (72042, PermanentError),
        (72035, RejectedError),
        ("timeout", RetryableError),
        (99999, PermanentError),
        (72057, QuotaExhaustedError),
        (72054, RetryableError),
    ],
)
def test_error_for_examples(signal, cls):
    assert type(error_for(signal, "x")) is cls


@pytest.mark.parametrize(
    ("signal", "step", "cls"),
    [
        (72035, "refuse", AlreadyDoneError),
        (72035, "insert", RejectedError),
        (72056, "refuse", AlreadyInsertedError),
        (72060, "void", AlreadyDoneError),
        (72060, "status", PermanentError),
        (72061, "void", PermanentError),
    ],
)
def test_the_error_follows_the_steps_rule(signal, step, cls):
    error = error_for(signal, "x", step=step)
    assert type(error) is cls
    assert WeChatError(signal, "x", step).rule is error.rule  # the default rule is the step's
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own object)
    assert type(copy) is cls and copy.rule == error.rule and str(copy) == str(error)


def test_success_is_not_an_error():
    with pytest.raises(ValueError, match="success"):
        error_for(0, "ok")


def test_str_names_step_errcode_errmsg_and_reason():
    error = error_for(72042, "billing_code + billing_no already used", step="insert")
    assert str(error) == (
        "insert: errcode 72042 (billing_code + billing_no already used): " + POLICY[72042].reason
    )


def test_str_without_step_and_for_transport_signals():
    assert str(error_for(-1, "system busy")) == (
        "errcode -1 (system busy): WeChat is busy: retry with backoff"
    )
    error = error_for("timeout", "read timed out after 10 s", step="upload")
    assert str(error).startswith("upload: timeout (read timed out after 10 s): ")
    assert error.errcode is None


def test_str_falls_back_to_the_meaning_and_truncates_long_errmsgs():
    assert "(invalid media_id)" in str(error_for(40007, ""))
    long = error_for(72031, "x" * 5000, step="insert")
    assert len(str(long)) < 400
    assert "..." in str(long)


def test_repeated_busy_becomes_permanent_with_the_hint():
    error = error_for(-1, "system busy", step="insert", answers=BUSY_RETRY_LIMIT + 1)
    assert type(error) is PermanentError
    assert "check billing_no/billing_code" in str(error)
    assert "errcode -1 (system busy)" in str(error)


@pytest.mark.parametrize(
    "errmsg",
    [
        "HTTPSConnectionPool(host='api.weixin.qq.com'): Max retries exceeded with url: "
        "/nontax/insertbill?access_token=SECRET1",
        "url: /cgi-bin/token?grant_type=client_credential&appid=wx1&secret=SECRET1&x=1",
        '{"appid": "wx1", "secret": "SECRET1"}',
        "ACCESS_TOKEN=SECRET1",
    ],
)
def test_secrets_in_an_errmsg_never_reach_str(errmsg):
    error = error_for("connection_error", errmsg, step="insert")
    assert "SECRET1" not in str(error)
    assert "SECRET1" not in error.errmsg
    assert "SECRET1" not in repr(error)
    assert "***" in str(error)


def test_wechats_own_token_errmsg_is_kept():
    errmsg = "invalid credential, access_token is invalid or not latest rid: 6571-2b3c"
    assert redact(errmsg) == errmsg
    assert errmsg in str(error_for(40001, errmsg, step="insert"))


@pytest.mark.parametrize("signal", [40001, -1, "timeout"])
def test_errors_survive_pickling(signal):
    error = error_for(signal, "msg", step="upload", answers=5)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own object)
    assert type(copy) is type(error)
    assert (copy.signal, copy.errmsg, copy.step, copy.rule) == (
        error.signal,
        error.errmsg,
        error.step,
        error.rule,
    )
    assert str(copy) == str(error)


def test_catching_by_subclass():
    with pytest.raises(TokenInvalidError):
        raise error_for(42001, "access_token expired", step="insert")
    with pytest.raises(WeChatError):
        raise error_for(72035, "rejected", step="insert")


def test_invalid_order_error_carries_its_problems():
    problems = [Problem("fee", "must be positive, got 0"), Problem("title", "must not be empty")]
    error = InvalidOrderError(problems)
    assert isinstance(error, ValueError)
    assert error.problems == problems
    assert str(error) == "fee: must be positive, got 0; title: must not be empty"
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own object)
    assert copy.problems == problems
    with pytest.raises(ValueError, match="at least one"):
        InvalidOrderError([])


def test_invalid_request_error_is_its_own_kind():
    problems = [Problem("reason", "must not be empty or blank, got ''")]
    error = InvalidRequestError(problems)
    assert isinstance(error, ValueError) and not isinstance(error, InvalidOrderError)
    assert str(error) == "reason: must not be empty or blank, got ''"
    assert pickle.loads(pickle.dumps(error)).problems == problems  # noqa: S301
    with pytest.raises(ValueError, match="an InvalidRequestError needs at least one"):
        InvalidRequestError([])
