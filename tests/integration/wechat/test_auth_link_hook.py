"""The hook's authorisation link (nontax/getbillauthurl) and its shared wx_card ticket, against
the sandbox over HTTP and real Postgres."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import psycopg2
import pytest

from wechat_nontax.wechat import errors
from wechat_nontax.wechat.rules import TICKET_REFUSED
from wechat_nontax.wechat.statuses import Action
from wechat_nontax.wechat.token_cache import TICKET_SOURCE
from wechat_sandbox.auth_links import order_of_link

NOW = 1_770_000_000


def _ticket_row(dsn: str) -> tuple:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT token_ciphertext, token_sha256, fetch_count FROM nontax.access_token "
            "WHERE source = %s",
            (TICKET_SOURCE,),
        )
        row = cur.fetchone()
    conn.close()
    return row


def test_a_link_names_the_order_its_money_in_fen_and_the_ticket(
    hook, orders_db, wechat_conn, caplog
):
    caplog.set_level(logging.DEBUG)
    link = hook.get_bill_auth_url("ord-1", 12345, timestamp=NOW, source="app",
                                  redirect_url="https://unit.example/paid")  # fmt: skip
    assert order_of_link(link.auth_url) == "ord-1"
    assert link.expire_time == 7200
    [made] = wechat_conn.links()
    assert (made["order_id"], made["money"], made["source"]) == ("ord-1", 12345, "app")
    assert made["redirect_url"] == "https://unit.example/paid"
    assert made["s_pappid"] == hook.s_pappid
    assert parse_qs(urlsplit(link.auth_url).query)["money"] == ["12345"]
    # The ticket was fetched with the token, once, and is stored encrypted only.
    calls = wechat_conn.calls()
    assert (calls["getticket"], calls["getbillauthurl"]) == (1, 1)
    ciphertext, sha256, fetches = _ticket_row(orders_db)
    ticket = hook.get_card_ticket()
    assert fetches == 1 and sha256 and ticket not in ciphertext
    assert ticket not in caplog.text and hook.get_access_token() not in caplog.text


def test_the_ticket_is_reused_while_valid(hook, wechat_conn):
    for n in range(3):
        hook.get_bill_auth_url(f"ord-{n}", 100 + n, timestamp=NOW)
    assert wechat_conn.calls()["getticket"] == 1
    assert [link["money"] for link in wechat_conn.links()] == [100, 101, 102]


@pytest.mark.parametrize(
    ("order_id", "money", "source", "redirect_url", "field"),
    [
        ("", 100, "web", None, "order_id"),
        ("ord-1", 0, "web", None, "money"),
        ("ord-1", 12.5, "web", None, "money"),
        ("ord-1", True, "web", None, "money"),
        ("ord-1", 100, "wap", None, "source"),
        ("ord-1", 100, "web", "javascript:alert(1)", "redirect_url"),
    ],
)
def test_a_bad_request_is_refused_before_any_call(
    hook, wechat_conn, order_id, money, source, redirect_url, field
):
    with pytest.raises(errors.InvalidRequestError) as refused:
        hook.get_bill_auth_url(order_id, money, timestamp=NOW, source=source,
                               redirect_url=redirect_url)  # fmt: skip
    assert [p.field for p in refused.value.problems] == [field]
    calls = wechat_conn.calls()
    assert calls["getticket"] == 0 and calls["getbillauthurl"] == 0


def test_a_ticket_wechat_no_longer_takes_is_fetched_again_and_the_link_asked_once_more(
    hook, wechat_conn
):
    hook.get_bill_auth_url("ord-1", 100, timestamp=NOW)
    wechat_conn.expire_tickets()  # WeChat's side only: the cache still thinks it fresh
    link = hook.get_bill_auth_url("ord-2", 200, timestamp=NOW)
    assert order_of_link(link.auth_url) == "ord-2"
    calls = wechat_conn.calls()
    assert (calls["getticket"], calls["getbillauthurl"]) == (2, 3)


def test_a_refusal_that_a_fresh_ticket_does_not_cure_fails_with_its_reason(hook, wechat_conn):
    wechat_conn.add_fault(endpoint="getbillauthurl", kind="errcode", errcode=TICKET_REFUSED)
    with pytest.raises(errors.PermanentError) as failed:
        hook.get_bill_auth_url("ord-1", 100, timestamp=NOW)
    assert failed.value.step == "auth_link"
    assert "s_pappid" in str(failed.value) and "2 times" in str(failed.value)
    assert wechat_conn.calls()["getbillauthurl"] == 2


@pytest.mark.parametrize(
    ("errcode", "action"),
    [(72015, Action.FAIL), (45009, Action.STOP_QUOTA), (-1, Action.RETRY)],
)
def test_other_answers_follow_the_policy(hook, wechat_conn, errcode, action):
    wechat_conn.add_fault(endpoint="getbillauthurl", kind="errcode", errcode=errcode)
    with pytest.raises(errors.WeChatError) as refused:
        hook.get_bill_auth_url("ord-1", 100, timestamp=NOW)
    assert refused.value.action is action and refused.value.step == "auth_link"
    assert wechat_conn.calls()["getbillauthurl"] == 1


def test_a_refused_access_token_is_refreshed_for_the_link_too(hook, wechat_conn):
    hook.get_bill_auth_url("ord-1", 100, timestamp=NOW)
    wechat_conn.expire_tokens()
    hook.get_bill_auth_url("ord-2", 100, timestamp=NOW)
    assert wechat_conn.calls()["stable_token"] == 2


def test_the_ticket_is_fetched_once_for_processes_asking_at_once(
    orders_db, wechat_conn, asked_at_once
):
    wechat_conn.add_fault(endpoint="getticket", kind="latency", latency_ms=300)
    tickets = asked_at_once("get_card_ticket", 4)
    assert len(tickets) == 1
    assert wechat_conn.calls()["getticket"] == 1
    assert _ticket_row(orders_db)[2] == 1
