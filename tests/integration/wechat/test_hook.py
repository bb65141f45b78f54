"""`WeChatNonTaxHook` and the shared token cache against the sandbox over HTTP and real Postgres."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import psycopg2
import pytest

from factories import MINIMAL_PDF, make_order
from nontax_dev.airflow_run import sandbox_connection
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.hook import AuthData, WeChatNonTaxHook
from wechat_nontax.wechat.rules import POLICY
from wechat_nontax.wechat.statuses import Action
from wechat_nontax.wechat.validation import MAX_REFUSAL_REASON_CHARS
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID, DEFAULT_SECRET


def _token_fetches(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(fetch_count), 0) FROM nontax.access_token")
        (count,) = cur.fetchone()
    conn.close()
    return int(count)


def test_upload_and_insert_issue_a_bill(hook, wechat_conn):
    order = make_order(1)
    media_id = hook.upload_pdf(MINIMAL_PDF)
    bill = hook.insert_bill(order, media_id)
    [recorded] = wechat_conn.bills()
    assert recorded["order_id"] == order.order_id
    assert (recorded["code"], recorded["openid"]) == (bill.code, bill.openid)
    assert recorded["s_pdf_media_id"] == media_id
    assert hook.get_auth_data(order.order_id).invoice_status


def test_the_token_is_fetched_once_and_shared(hook, orders_db, wechat_conn):
    for _ in range(3):
        hook.get_access_token()
    other = WeChatNonTaxHook()
    other.get_access_token()
    other.close()
    assert wechat_conn.calls().get("stable_token", 0) == 1
    assert _token_fetches(orders_db) == 1


def test_no_basic_auth_and_no_own_extras_on_the_wire(hook):
    session = hook.session
    assert session.auth is None
    assert not {"token_mode", "token_margin_s", "token_service_url"} & set(session.headers)


def test_the_hook_overrides_no_private_method_of_httphook():
    # Built on HttpHook's public interface only: its private methods may change in any release.
    from airflow.providers.http.hooks.http import HttpHook

    own = {name for name in vars(WeChatNonTaxHook) if name.startswith("_")}
    assert not {name for name in own if not name.startswith("__") and hasattr(HttpHook, name)}


def test_proxy_settings_follow_the_environment_host_by_host(orders_db, wechat_conn, monkeypatch):
    # Read once per host (not at every call), with NO_PROXY honoured for each host on its own.
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    hook = WeChatNonTaxHook()
    try:
        hook.upload_pdf(MINIMAL_PDF)  # the sandbox (127.0.0.1): straight, not through the proxy
        direct = hook._settings_for(hook.session, f"{wechat_conn.url}/x")
        proxied = hook._settings_for(hook.session, "http://tokens.example/token")
        assert direct["proxies"].get("http") is None
        assert proxied["proxies"]["http"] == "http://proxy.invalid:3128"
        assert hook._settings_for(hook.session, f"{wechat_conn.url}/y") is direct  # cached
        assert hook.session.proxies == {}  # the session itself is left as configured
    finally:
        hook.close()


def test_token_race_eight_processes_one_fetch(orders_db, wechat_conn, asked_at_once):
    wechat_conn.add_fault(endpoint="stable_token", kind="latency", latency_ms=300)
    tokens = asked_at_once("get_access_token", 8)
    assert len(tokens) == 1
    assert wechat_conn.calls().get("stable_token", 0) == 1
    assert _token_fetches(orders_db) == 1


def test_each_token_is_masked_once_before_use_whatever_the_threads(hook, wechat_conn, monkeypatch):
    # In a task, every masking is a round trip to Airflow's supervisor: once per token.
    masked: list[str] = []
    monkeypatch.setattr("wechat_nontax.wechat.hook._mask", masked.append)
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: hook.upload_pdf(MINIMAL_PDF) and hook.get_access_token(),
                              range(32)))  # fmt: skip
    assert len(tokens) == 1 and masked == list(tokens)
    wechat_conn.expire_tokens()
    hook.upload_pdf(MINIMAL_PDF)  # refused token: a new one, masked before it is sent
    fresh = hook.get_access_token()
    assert fresh not in tokens and masked == [*tokens, fresh]


@pytest.mark.parametrize("mode", ["stable_token", "token"])
def test_refused_token_is_invalidated_refreshed_and_the_call_retried_once(
    mode, orders_db, wechat_conn, monkeypatch
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT", sandbox_connection(wechat_conn.url, token_mode=mode)
    )
    hook = WeChatNonTaxHook()
    hook.get_access_token()
    wechat_conn.expire_tokens()
    media_id = hook.upload_pdf(MINIMAL_PDF)
    hook.insert_bill(make_order(1), media_id)
    hook.close()
    assert _token_fetches(orders_db) == 2
    assert len(wechat_conn.bills()) == 1


def test_a_token_refused_twice_is_an_error(hook, wechat_conn):
    wechat_conn.add_fault(endpoint="setpdf", kind="errcode", errcode=40001)
    with pytest.raises(errors.TokenInvalidError):
        hook.upload_pdf(MINIMAL_PDF)
    assert wechat_conn.calls()["setpdf"] == 2  # the call and its one retry


_ERRCODES = sorted(
    code
    for code, rule in POLICY.items()
    if isinstance(code, int) and code != 0 and rule.action is not Action.REFRESH_TOKEN
)


@pytest.mark.parametrize("errcode", _ERRCODES)
def test_every_errcode_raises_its_typed_error(errcode, hook, wechat_conn):
    wechat_conn.add_fault(endpoint="insertbill", kind="errcode", errcode=errcode, count=1)
    media_id = hook.upload_pdf(MINIMAL_PDF)
    with pytest.raises(errors.WeChatError) as caught:
        hook.insert_bill(make_order(1), media_id)
    assert caught.value.errcode == errcode
    assert caught.value.rule.action is POLICY[errcode].action
    assert type(caught.value) is type(errors.error_for(errcode, "x"))
    assert caught.value.step == "insert"


@pytest.mark.parametrize(
    ("fault", "signal"),
    [
        ({"kind": "http_5xx", "status": 502}, "http_5xx"),
        ({"kind": "timeout", "timeout_s": 3}, "timeout"),
        ({"kind": "lost_answer"}, "connection_error"),
    ],
)
def test_transport_faults_are_classified(fault, signal, hook, wechat_conn, monkeypatch):
    hook.session.request  # noqa: B018 (read the Connection before shortening the timeout)
    hook.merged_extra["timeout"] = 1
    wechat_conn.add_fault(endpoint="setpdf", count=1, **fault)
    with pytest.raises(errors.WeChatError) as caught:
        hook.upload_pdf(MINIMAL_PDF)
    assert caught.value.signal == signal
    assert caught.value.rule.action is Action.RETRY


def test_wrong_secret_is_a_configuration_error(orders_db, sandbox, monkeypatch):
    conn = sandbox_connection(sandbox.url).replace(DEFAULT_SECRET, "not-the-secret")
    monkeypatch.setenv("AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT", conn)
    hook = WeChatNonTaxHook()
    with pytest.raises(errors.PermanentError) as caught:
        hook.get_access_token()
    hook.close()
    assert caught.value.step == "token"
    assert "not-the-secret" not in str(caught.value)


def test_token_service_mode(orders_db, sandbox, monkeypatch):
    """A central token service: here the sandbox's classic endpoint stands in for one."""
    from wechat_sandbox.client import DEFAULT_APPID

    service = (
        f"{sandbox.url}/cgi-bin/token?grant_type=client_credential"
        f"&appid={DEFAULT_APPID}&secret={DEFAULT_SECRET}"
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT",
        sandbox_connection(sandbox.url, token_mode="service", token_service_url=service),
    )
    hook = WeChatNonTaxHook()
    hook.insert_bill(make_order(1), hook.upload_pdf(MINIMAL_PDF))
    hook.close()
    assert sandbox.calls().get("token") == 1
    assert len(sandbox.bills()) == 1


def test_logs_never_show_the_secret_or_a_token(hook, wechat_conn, caplog):
    caplog.set_level(logging.DEBUG)
    wechat_conn.add_fault(endpoint="setpdf", kind="lost_answer", count=1)
    with pytest.raises(errors.WeChatError) as caught:
        hook.upload_pdf(MINIMAL_PDF)
    hook.insert_bill(make_order(1), hook.upload_pdf(MINIMAL_PDF))
    text = caplog.text + str(caught.value) + caught.value.errmsg
    issued = wechat_conn.issued_tokens()
    assert issued
    for secret in [DEFAULT_SECRET, *issued]:
        assert secret not in text


# ---------------------------------------------------------------- after the insert
def _inserted(hook, n: int = 1) -> tuple[str, str]:
    """An order with a bill: (order_id, code)."""
    order = make_order(n)
    return order.order_id, hook.insert_bill(order, hook.upload_pdf(MINIMAL_PDF)).code


def test_a_refused_order_is_refused_for_good(hook, wechat_conn):
    order = make_order(1)
    hook.reject_insert(order.order_id, "已退款，不再开具票据", url="https://unit.example/r")
    rejection = wechat_conn.rejections()[order.order_id]
    assert rejection["s_pappid"] == DEFAULT_APPID  # no s_pappid extra: the appid
    assert (rejection["reason"], rejection["url"]) == (
        "已退款，不再开具票据",
        "https://unit.example/r",
    )
    assert hook.get_auth_data(order.order_id).invoice_status == "reject insert"
    with pytest.raises(errors.RejectedError) as inserting:
        hook.insert_bill(order, hook.upload_pdf(MINIMAL_PDF))
    assert inserting.value.errcode == 72035 and inserting.value.step == "insert"
    # A second refusal (a retry after a lost answer): WeChat did it already.
    with pytest.raises(errors.AlreadyDoneError) as again:
        hook.reject_insert(order.order_id, "已退款，不再开具票据")
    assert again.value.errcode == 72035 and again.value.step == "refuse"
    assert again.value.action is Action.ALREADY_DONE
    assert wechat_conn.bills() == []


def test_the_s_pappid_extra_is_sent_and_never_a_header(orders_db, sandbox, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT",
        sandbox_connection(sandbox.url, s_pappid="d3JCEfhGLW+q0iGP+o9"),
    )
    hook = WeChatNonTaxHook()
    try:
        assert hook.s_pappid == "d3JCEfhGLW+q0iGP+o9"
        hook.reject_insert("o-pappid", "refunded")
        assert "s_pappid" not in {h.lower() for h in hook.session.headers}
        assert hook.get_auth_data("o-pappid").invoice_status == "reject insert"
    finally:
        hook.close()
    assert sandbox.rejections()["o-pappid"]["s_pappid"] == "d3JCEfhGLW+q0iGP+o9"


@pytest.mark.parametrize(
    ("reason", "url", "field"),
    [
        ("", None, "reason"),
        ("   ", None, "reason"),
        ("理" * (MAX_REFUSAL_REASON_CHARS + 1), None, "reason"),
        ("two\nlines", None, "reason"),
        ("refunded", "javascript:alert(1)", "url"),
    ],
)
def test_a_bad_refusal_is_refused_before_any_call(hook, wechat_conn, reason, url, field):
    with pytest.raises(errors.InvalidRequestError) as caught:
        hook.reject_insert("o-bad", reason, url=url)
    assert [p.field for p in caught.value.problems] == [field]
    calls = wechat_conn.calls()
    assert calls["rejectinsert"] == 0 and calls["stable_token"] == 0  # not even a token


def test_the_longest_reason_goes_through(hook, wechat_conn):
    hook.reject_insert("o-long", "理" * MAX_REFUSAL_REASON_CHARS)
    assert len(wechat_conn.rejections()["o-long"]["reason"]) == MAX_REFUSAL_REASON_CHARS


def test_an_order_with_a_bill_cannot_be_refused(hook, wechat_conn):
    order_id, _code = _inserted(hook)
    with pytest.raises(errors.AlreadyInsertedError) as caught:
        hook.reject_insert(order_id, "too late")
    assert caught.value.errcode == 72056 and caught.value.step == "refuse"
    assert "void it in WeChat's back office" in str(caught.value)
    assert wechat_conn.rejections() == {}


def test_getauthdata_tells_never_authorised_from_authorised(hook, wechat_conn):
    wechat_conn.set_authorization("o-wait", "unauthorized")
    assert hook.get_auth_data("o-wait") == AuthData("never auth", 0)
    wechat_conn.set_authorization("o-wait", "authorized")
    data = hook.get_auth_data("o-wait")
    assert data.invoice_status == "auth success" and data.auth_time > 1_600_000_000


def test_a_void_is_done_once_and_recognised_when_repeated(hook, wechat_conn):
    order_id, code = _inserted(hook)
    hook.update_status(DEFAULT_CARD_ID, code, "CANCEL")
    assert wechat_conn.statuses()[order_id]["reimburse_status"] == "INVOICE_REIMBURSE_CANCEL"
    with pytest.raises(errors.AlreadyDoneError) as again:
        hook.update_status(DEFAULT_CARD_ID, code, "INVOICE_REIMBURSE_CANCEL")
    assert again.value.errcode == 72060 and again.value.step == "void"
    with pytest.raises(errors.PermanentError) as lock:  # anything else on a cancelled bill
        hook.update_status(DEFAULT_CARD_ID, code, "LOCK")
    assert lock.value.errcode == 72060 and lock.value.step == "status"
    assert wechat_conn.order_answers(order_id)["updatestatus"] == {"0": 1, "72060": 2}


def test_a_closed_bill_cannot_be_voided(hook, wechat_conn):
    order_id, code = _inserted(hook)
    wechat_conn.set_bill_status(order_id, "INVOICE_REIMBURSE_CLOSURE")  # reimbursed elsewhere
    with pytest.raises(errors.PermanentError) as caught:
        hook.update_status(DEFAULT_CARD_ID, code, "CANCEL")
    assert caught.value.errcode == 72061 and caught.value.step == "void"
    assert "can no longer be voided" in str(caught.value)


def test_statuses_move_and_unknown_bills_are_errors(hook, wechat_conn):
    order_id, code = _inserted(hook)
    for status in ("LOCK", "INIT", "LOCK", "CLOSURE"):
        hook.update_status(DEFAULT_CARD_ID, code, status)
    assert wechat_conn.statuses()[order_id]["reimburse_status"] == "INVOICE_REIMBURSE_CLOSURE"
    with pytest.raises(errors.PermanentError) as unknown:
        hook.update_status(DEFAULT_CARD_ID, "1234567890123", "CANCEL")
    assert unknown.value.errcode == 40056


@pytest.mark.parametrize(
    ("card_id", "code", "status", "field"),
    [
        (DEFAULT_CARD_ID, "1234567890123", "RELEASE", "status"),
        (DEFAULT_CARD_ID, "", "CANCEL", "code"),
        ("", "1234567890123", "CANCEL", "card_id"),
    ],
)
def test_a_bad_status_change_is_refused_before_any_call(hook, wechat_conn, card_id, code, status,
                                                        field):  # fmt: skip
    with pytest.raises(errors.InvalidRequestError) as caught:
        hook.update_status(card_id, code, status)
    assert [p.field for p in caught.value.problems] == [field]
    assert wechat_conn.calls()["updatestatus"] == 0


@pytest.mark.parametrize("what", ["refuse", "void"])
def test_a_lost_answer_is_retryable_and_the_retry_finds_it_done(hook, wechat_conn, what):
    # What a crash between the call and the write-back leaves: the retry recognises the result.
    if what == "refuse":
        endpoint, order_id = "rejectinsert", "o-lost"

        def call():
            hook.reject_insert(order_id, "refunded")
    else:
        order_id, code = _inserted(hook)
        endpoint = "updatestatus"

        def call():
            hook.update_status(DEFAULT_CARD_ID, code, "CANCEL")

    wechat_conn.add_fault(endpoint=endpoint, kind="lost_answer", count=1)
    with pytest.raises(errors.RetryableError) as lost:
        call()
    assert lost.value.signal == "connection_error" and lost.value.step == what
    with pytest.raises(errors.AlreadyDoneError):
        call()
    assert sum(wechat_conn.order_answers(order_id)[endpoint].values()) == 2


@pytest.mark.parametrize("what", ["refuse", "void"])
def test_a_refused_token_is_refreshed_for_the_new_calls(hook, orders_db, wechat_conn, what):
    order_id, code = _inserted(hook) if what == "void" else ("o-tok", "")
    hook.get_access_token()  # cached, then refused
    wechat_conn.expire_tokens()
    if what == "refuse":
        hook.reject_insert(order_id, "refunded")
        assert order_id in wechat_conn.rejections()
    else:
        hook.update_status(DEFAULT_CARD_ID, code, "CANCEL")
        assert wechat_conn.statuses()[order_id]["reimburse_status"] == "INVOICE_REIMBURSE_CANCEL"
    assert _token_fetches(orders_db) == 2


@pytest.mark.parametrize(
    ("endpoint", "errcode", "error"),
    [
        ("rejectinsert", 45009, errors.QuotaExhaustedError),
        ("rejectinsert", -1, errors.RetryableError),
        ("updatestatus", 72036, errors.RetryableError),
        ("updatestatus", 45011, errors.RetryableError),
    ],
)
def test_faults_on_the_new_calls_raise_their_typed_errors(hook, wechat_conn, endpoint, errcode,
                                                          error):  # fmt: skip
    _order_id, code = _inserted(hook)
    wechat_conn.add_fault(endpoint=endpoint, kind="errcode", errcode=errcode, count=1)
    if endpoint == "rejectinsert":
        call = partial(hook.reject_insert, "o-fault", "refunded")
    else:
        call = partial(hook.update_status, DEFAULT_CARD_ID, code, "CANCEL")
    with pytest.raises(error) as caught:
        call()
    assert caught.value.errcode == errcode
