"""What the Bills page shows when something goes wrong, on the page's own FastAPI app with
Airflow's auth answered by the test (the guards are the stack tests' subject): an unreachable
order database is a 503 page that says what happened and what to do, in the reader's language,
naming neither the server nor its password; anything unexpected a 500 page that keeps the
detail for the log; bad input a 400 page. Never Airflow's raw JSON, never a bare "Internal
Server Error"."""

from __future__ import annotations

import socket
from collections.abc import Iterator

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
