"""The access token at rest and in transit: encrypted in Postgres, never in a statement, never
redirected, and forced refreshes bounded for every worker, against real Postgres, the sandbox
and real local HTTP servers."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta

import psycopg2
import psycopg2.extras
import pytest
from cryptography.fernet import Fernet

from factories import make_order, write_pdf
from local_http import Answer, recording_server
from nontax_dev.airflow_run import sandbox_connection
from wechat_nontax.issuing.batch import BatchIssuer
from wechat_nontax.issuing.batch_settings import Settings
from wechat_nontax.issuing.outcomes import Outcome
from wechat_nontax.issuing.pdfs import read_pdf
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.hook import WeChatNonTaxHook
from wechat_nontax.wechat.token_cache import NoFernetKeyError, TokenCache
from wechat_sandbox.client import DEFAULT_SECRET

TOKEN = "ACCESS-TOKEN-" + "x7" * 40


class _Recorder:
    """Every statement a connection sends, as Postgres receives it (values interpolated)."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.sent = io.StringIO()

    def connect(self):
        conn = psycopg2.connect(self.dsn, connection_factory=psycopg2.extras.LoggingConnection)
        conn.initialize(self.sent)
        return conn


def _cache(recorder: _Recorder, key: bytes, source: str = "stable_token") -> TokenCache:
    return TokenCache(recorder.connect, appid="wx1", source=source, cipher=Fernet(key))


def _row(dsn: str) -> dict:
    conn = psycopg2.connect(dsn)
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT *, expires_at - now() AS left FROM nontax.access_token")
        [row] = cur.fetchall()
    conn.close()
    return row


def test_the_token_is_encrypted_at_rest_and_never_in_a_statement(orders_db):
    recorder, key = _Recorder(orders_db), Fernet.generate_key()
    cache = _cache(recorder, key)
    # An expires_in out of any range (a token service's bug): clamped, never a failing UPDATE
    # that Postgres would log with its values.
    assert cache.get(lambda force: (TOKEN, 10**15)) == TOKEN
    cache.invalidate(TOKEN, lambda force: ("NEXT-" + TOKEN, 7200))
    cache.close()
    assert TOKEN not in recorder.sent.getvalue()
    assert "access_token SET expires_at = now()" in recorder.sent.getvalue()  # it was recorded
    row = _row(orders_db)
    assert TOKEN not in json.dumps(row, default=str)
    assert Fernet(key).decrypt(row["token_ciphertext"].encode()).decode() == "NEXT-" + TOKEN
    assert row["token_sha256"] == hashlib.sha256(("NEXT-" + TOKEN).encode()).hexdigest()
    assert row["left"] <= timedelta(seconds=7200)


def test_expires_in_is_clamped_to_a_sane_range(orders_db):
    cache = _cache(_Recorder(orders_db), Fernet.generate_key())
    cache.get(lambda force: (TOKEN, 10**15))
    assert timedelta(seconds=7100) < _row(orders_db)["left"] <= timedelta(seconds=7200)
    cache.invalidate(TOKEN, lambda force: ("NEXT-" + TOKEN, -5))
    assert timedelta(seconds=0) < _row(orders_db)["left"] <= timedelta(seconds=60)
    cache.close()


def test_a_row_that_does_not_decrypt_counts_as_stale(orders_db):
    recorder, fetched = _Recorder(orders_db), []

    def fetch(force):
        fetched.append(force)
        return f"{TOKEN}-{len(fetched)}", 7200

    first = _cache(recorder, Fernet.generate_key())
    assert first.get(fetch) == f"{TOKEN}-1"
    other_key = _cache(recorder, Fernet.generate_key())  # a rotated key, a damaged row
    assert other_key.get(fetch) == f"{TOKEN}-2"
    assert fetched == [False, False]
    first.close()
    other_key.close()


def test_without_a_fernet_key_no_token_is_fetched_or_stored(orders_db, monkeypatch):
    from airflow.sdk.crypto import get_fernet

    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "")
    get_fernet.cache_clear()
    try:
        cache = TokenCache(_Recorder(orders_db).connect, appid="wx1", source="stable_token")
        with pytest.raises(NoFernetKeyError):
            cache.get(lambda force: pytest.fail("fetched without a key"))
        cache.close()
    finally:
        get_fernet.cache_clear()
    conn = psycopg2.connect(orders_db)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM nontax.access_token")
        assert cur.fetchone()[0] == 0
    conn.close()


@pytest.mark.parametrize("status", [307, 308, 302])
def test_a_redirect_never_takes_the_secret_elsewhere(status, orders_db, monkeypatch):
    with recording_server() as elsewhere, recording_server() as wechat:
        target = f"{elsewhere.url}/cgi-bin/stable_token"
        wechat.answer = Answer(status, b"", {"Location": target})
        monkeypatch.setenv("AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT", sandbox_connection(wechat.url))
        hook = WeChatNonTaxHook()
        with pytest.raises(errors.WeChatError) as caught:
            hook.get_access_token()
        hook.close()
    assert caught.value.step == "token" and "redirect" in str(caught.value)
    assert len(wechat.received) == 1 and DEFAULT_SECRET.encode() in wechat.received[0].body
    assert elsewhere.received == []


def test_an_expires_in_that_is_not_an_integer_is_refused(orders_db, monkeypatch):
    answer = json.dumps({"access_token": TOKEN, "expires_in": "7200; DROP TABLE"}).encode()
    with recording_server(Answer(200, answer)) as service:
        monkeypatch.setenv(
            "AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT",
            sandbox_connection(service.url, token_mode="service", token_service_url=service.url),
        )
        hook = WeChatNonTaxHook()
        with pytest.raises(errors.WeChatError) as caught:
            hook.get_access_token()
        hook.close()
    assert caught.value.step == "token" and "expires_in" in str(caught.value)
    assert TOKEN not in str(caught.value)


# -- forced refreshes ---------------------------------------------------------------------------


def _issue(dsn, pdf_root, orders, run_id):
    store, hook = OrderStore(connect_dsn(dsn)), WeChatNonTaxHook()
    try:
        for order in orders:
            write_pdf(pdf_root, order)
        store.upsert_orders(orders)
        results = BatchIssuer(
            hook,
            store,
            Settings(pdf_root=str(pdf_root), max_workers=8, time_budget_s=20),
            run_id=run_id,
            read_pdf=lambda root, rel, limit: read_pdf(root, rel, max_bytes=limit),
            sleep=lambda s: None,
        ).run([o.order_id for o in orders])
        return results, {o.order_id: store.get_row(o.order_id)["status"] for o in orders}
    finally:
        hook.close()
        store.close()


def test_a_token_that_keeps_failing_forces_one_refresh_and_stops_the_batch(
    orders_db, wechat_conn, tmp_path
):
    """WeChat refuses every token and stable_token hands the refused one back: one forced
    refresh in all (the window is on the token row, for every worker and run), the batch stops
    with one clear reason, and every order is left due, none failed."""
    wechat_conn.add_fault(endpoint="insertbill", kind="errcode", errcode=40001)
    first, statuses = _issue(orders_db, tmp_path, [make_order(i) for i in range(30)], "run-1")
    assert set(statuses.values()) <= {"authorized", "uploaded"}, statuses
    assert not {r.outcome for r in first} & {Outcome.FAILED, Outcome.INVALID}
    assert any("access token" in (r.reason or "") for r in first)
    second, statuses = _issue(orders_db, tmp_path, [make_order(i) for i in range(30, 60)], "run-2")
    assert set(statuses.values()) <= {"authorized", "uploaded"}, statuses
    assert any("no forced refresh is allowed now" in (r.reason or "") for r in second)
    stable_tokens = [t for t in wechat_conn.tokens() if t["kind"] == "stable"]
    assert len(stable_tokens) == 2  # the first one and one forced refresh
    row = _row(orders_db)
    assert row["forced_count_day"] == 1 and row["forced_at"] is not None
