"""What the Bills page shows when something goes wrong, on the page's own FastAPI app with
Airflow's auth answered by the test (the guards are the stack tests' subject): an unreachable
order database is a 503 page that says what happened and what to do, in the reader's language,
naming neither the server nor its password; anything unexpected a 500 page that keeps the
detail for the log; bad input a 400 page. Never Airflow's raw JSON, never a bare "Internal
Server Error"."""

from __future__ import annotations

import html
import re
import socket
from collections.abc import Iterator

import psycopg2
import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from wechat_nontax.ui import database, guards
from wechat_nontax.ui.routes import create_app


class _Cashier:
    def get_name(self) -> str:
        return "cashier"


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app()
    app.dependency_overrides[get_user] = _Cashier
    for guard in (guards.CanRead, guards.CanEdit, guards.CanTrigger):
        app.dependency_overrides[guard.dependency] = lambda: None
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_order_database_is_a_page_that_says_what_to_do(client, monkeypatch):
    dsn = f"postgresql://postgres:s3cret-pw@127.0.0.1:{_closed_port()}/nontax"
    monkeypatch.setenv("AIRFLOW_CONN_NONTAX_ORDERS_DB", dsn)
    for path in ("/", "/order?id=T1", "/reset?id=T1", "/many?id=T1", "/action?id=1"):
        page = client.get(path, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
        assert page.status_code == 503, (path, page.status_code, page.text[:500])
        assert page.headers["content-type"].startswith("text/html")
        assert "无法连接订单数据库" in page.text and "nontax_orders_db" in page.text
        assert "s3cret-pw" not in page.text and str(dsn) not in page.text
    english = client.get("/", headers={"Accept-Language": "en-US"})
    assert "The order database cannot be reached" in english.text
    assert "Try again in a minute" in english.text


def test_anything_unexpected_is_a_500_page_and_the_detail_stays_in_the_log(client, monkeypatch):
    def broken():
        raise RuntimeError("a detail for the log only")

    monkeypatch.setattr(database, "connect", broken, raising=False)
    monkeypatch.setattr(
        "wechat_nontax.store.connection.connect", lambda **_: broken(), raising=True
    )
    page = client.get("/order?id=T1")
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert "Something went wrong" in page.text and "Nothing was changed by this page" in page.text
    assert "a detail for the log only" not in page.text
    assert "Internal Server Error" not in page.text


def test_bad_input_is_a_400_page(client):
    page = client.get("/?since=yesterday")
    assert page.status_code == 400 and "since: a date as YYYY-MM-DD" in page.text
    many = client.get("/many?action=delete&id=T1")
    assert many.status_code == 400 and "action: reset or issue" in many.text
    too_many = client.get("/many?" + "&".join(f"id=T{i}" for i in range(1001)))
    assert too_many.status_code == 400 and "at most 1000" in too_many.text


def test_an_action_on_many_orders_through_its_pages(client, store, orders_db, monkeypatch):
    """The confirmation lists every order and what will happen to it; the POST acts once and
    leads to the action's page, which says what happened to each."""
    from factories import make_order

    monkeypatch.setattr("wechat_nontax.ui.bulk.allowed", lambda user: frozenset({"edit"}))
    orders = [make_order(n) for n in range(1, 5)]
    store.upsert_orders(orders)
    ids = [o.order_id for o in orders]
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:  # the test's own
        cur.execute(
            "UPDATE nontax.bill_order SET status = 'invalid', reason = 'pdf: PDF not found' "
            "WHERE order_id = ANY(%s)",
            (ids[:3],),
        )
        cur.execute(
            "UPDATE nontax.bill_order SET status = 'unauthorized' WHERE order_id = %s", (ids[3],)
        )
    chinese = {"Accept-Language": "zh-CN", "Origin": "http://testserver"}
    confirm = client.get(
        "/many", params={"action": "reset", "reason": "pdf: PDF not found"}, headers=chinese
    )
    assert confirm.status_code == 200, confirm.text
    assert "重新设为待开具：3 个订单" in confirm.text
    picked = client.get("/many", params=[("action", "reset"), *[("id", i) for i in ids]])
    assert "Make due again: 3 orders" in picked.text and "left as it is:" in picked.text
    orders_field = re.search(r'name="orders" value="([^"]*)"', picked.text)[1]
    answer = client.post(
        "/many",
        # One order a line, the line breaks as a browser sends them (CR LF).
        data={
            "action": "reset",
            "orders": html.unescape(orders_field).replace("\n", "\r\n"),
            "picked": "by hand",
        },
        headers=chinese,
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    page = client.get(answer.headers["location"], headers=chinese)
    assert page.status_code == 200, page.text
    assert "3 个已重新设为待开具，1 个保持原样。" in page.text and "订单为手工选择。" in page.text
    assert {store.get_row(i)["status"] for i in ids[:3]} == {"authorized"}
