"""The backlog gauges endpoint (observability.endpoint) on a real order database: what it serves,
parsed with prometheus_client's own parser, equals what the database holds; it is closed
without the right bearer token; a database that does not answer is a gauge, not an error."""

from __future__ import annotations

import json
import socket

import psycopg2
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from factories import make_order
from wechat_nontax.observability.endpoint import create_app
from wechat_nontax.wechat.statuses import Status

TOKEN = "scrape-token-for-tests"


@pytest.fixture
def scrape_token(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_NONTAX_METRICS", json.dumps({"conn_type": "generic", "password": TOKEN})
    )
    return TOKEN


@pytest.fixture
def client():
    return TestClient(create_app())


def scrape(client, token=TOKEN) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def sql(dsn, statement, params=()):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _a_backlog(store, orders_db):
    orders = [make_order(i) for i in range(30)]
    store.upsert_orders(orders)
    statuses = {
        Status.FAILED: range(0, 3), Status.INVALID: range(3, 5), Status.UPLOADED: range(5, 6),
        Status.AWAITING_AUTH: range(6, 8), Status.UNAUTHORIZED: range(8, 12),
        Status.MISMATCHED: range(12, 13),
    }  # fmt: skip
    for status, ns in statuses.items():
        for n in ns:
            sql(
                orders_db,
                "UPDATE nontax.bill_order SET status = %s, reason = 'r', "
                "s_pdf_media_id = 'm', pdf_uploaded_at = now(), code = 'c', openid = 'o', "
                "inserted_at = now() WHERE order_id = %s",
                (str(status), orders[n].order_id),
            )
    # Ages to find: the oldest due order authorised 3 h ago, one payer waited on for 2 days,
    # an awaiting_auth since 5 h, a request pending for 10 min, a quota stop in force.
    sql(
        orders_db,
        "UPDATE nontax.bill_order SET authorized_at = now() - interval '3 hours' "
        "WHERE order_id = %s",
        (orders[20].order_id,),
    )
    sql(
        orders_db,
        "UPDATE nontax.bill_order SET created_at = now() - interval '2 days' WHERE order_id = %s",
        (orders[9].order_id,),
    )
    sql(
        orders_db,
        "UPDATE nontax.bill_order SET auth_wait_since = now() - interval '5 hours' "
        "WHERE order_id = %s",
        (orders[7].order_id,),
    )
    sql(
        orders_db,
        "INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by) "
        "VALUES (%s, 'refuse', 'duplicate order', 'tester')",
        (orders[25].order_id,),
    )
    sql(orders_db, "UPDATE nontax.bill_request SET requested_at = now() - interval '10 minutes'")
    sql(
        orders_db,
        "INSERT INTO nontax.api_quota (appid, api, stopped_until, errcode, errmsg) "
        "VALUES ('wxa', 'insert', now() + interval '1 hour', 72057, 'limit'), "
        "('wxb', 'insert', now() + interval '1 hour', 72057, 'limit'), "
        "('wxa', 'upload', now() - interval '1 hour', 45009, 'over')",
    )


def test_the_gauges_equal_what_the_database_holds(store, orders_db, scrape_token, client):
    _a_backlog(store, orders_db)
    got = scrape(client)
    counted = dict(sql(orders_db, "SELECT status, count(*) FROM nontax.bill_order GROUP BY 1"))
    for status in Status:
        assert got[("nontax_orders", (("status", str(status)),))] == counted.get(status, 0)
    assert got[("nontax_orders_needing_person", ())] == 3 + 2 + 1
    assert got[("nontax_oldest_due_order_age_seconds", ())] == pytest.approx(3 * 3600, abs=120)
    waiting = "nontax_oldest_waiting_authorisation_age_seconds"
    assert got[(waiting, (("status", "unauthorized"),))] == pytest.approx(2 * 86400, abs=120)
    assert got[(waiting, (("status", "awaiting_auth"),))] == pytest.approx(5 * 3600, abs=120)
    assert got[("nontax_requests_pending", (("kind", "refuse"),))] == 1
    assert got[("nontax_requests_pending", (("kind", "void"),))] == 0
    assert got[("nontax_oldest_pending_request_age_seconds", ())] == pytest.approx(600, abs=120)
    assert got[("nontax_quota_stops_active", (("api", "insert"),))] == 2
    assert got[("nontax_quota_stops_active", (("api", "upload"),))] == 0  # ended an hour ago
    assert got[("nontax_backlog_up", ())] == 1
    assert 0 < got[("nontax_backlog_read_seconds", ())] < 5
    # Nothing of an order reaches the scrape: no order id, code or billing number.
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert "T000000" not in text and "NO0000" not in text


def test_an_empty_database_reads_zero_everywhere(orders_db, scrape_token, client):
    got = scrape(client)
    assert got[("nontax_orders", (("status", "inserted"),))] == 0
    assert got[("nontax_oldest_due_order_age_seconds", ())] == 0
    assert got[("nontax_backlog_up", ())] == 1


@pytest.mark.parametrize(
    ("header", "code"),
    [(None, 401), ("Basic dXNlcjpwdw==", 401), ("Bearer wrong-token", 403), ("Bearer ", 401)],
)
def test_a_scrape_without_the_token_is_refused(orders_db, scrape_token, client, header, code):
    headers = {"Authorization": header} if header else {}
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == code
    assert "nontax_orders" not in answer.text


def test_without_the_connection_the_endpoint_stays_closed(orders_db, client, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NONTAX_METRICS", raising=False)
    answer = client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 503
    assert "nontax_metrics" in answer.json()["detail"]


def test_a_database_that_does_not_answer_is_a_gauge_not_an_error(scrape_token, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_NONTAX_ORDERS_DB",
        json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": port,
                    "login": "postgres", "password": "db-secret-xyz", "schema": "nontax"}),
    )  # fmt: skip
    client = TestClient(create_app())
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    got = {s.name: s.value for f in text_string_to_metric_families(answer.text) for s in f.samples}
    assert got["nontax_backlog_up"] == 0
    assert "nontax_orders" not in got
    assert "db-secret-xyz" not in answer.text
