"""`WeChatNonTaxHook` and the shared token cache against the sandbox over HTTP and real Postgres."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from factories import MINIMAL_PDF, make_order
from nontax_tools.airflow_run import sandbox_connection
from wechat_nontax import errors
from wechat_nontax.hook import WeChatNonTaxHook
from wechat_nontax.policy import POLICY, Action
from wechat_sandbox.client import DEFAULT_SECRET


@pytest.fixture
def hook(orders_db, wechat_conn):
    hook = WeChatNonTaxHook()
    yield hook
    hook.close()


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


def _ask_for_token(queue):
    hook = WeChatNonTaxHook()
    try:
        queue.put(hook.get_access_token())
    finally:
        hook.close()


def test_token_race_eight_processes_one_fetch(orders_db, wechat_conn):
    wechat_conn.add_fault(endpoint="stable_token", kind="latency", latency_ms=300)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ask_for_token, args=(queue,)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    tokens = {queue.get(timeout=5) for _ in procs}
    assert all(p.exitcode == 0 for p in procs)
    assert len(tokens) == 1
    assert wechat_conn.calls().get("stable_token", 0) == 1
    assert _token_fetches(orders_db) == 1


def test_each_token_is_masked_once_before_use_whatever_the_threads(hook, wechat_conn, monkeypatch):
    # In a task, every masking is a round trip to Airflow's supervisor: once per token.
    masked: list[str] = []
    monkeypatch.setattr("wechat_nontax.hook._mask", masked.append)
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
