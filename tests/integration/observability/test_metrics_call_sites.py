"""The metrics a batch and the requests runner send at the moments a counter must catch, read on a
real StatsD socket: a daily quota answer, a hold lost to another holder, a forced token refresh,
a request whose order another holder took. The order database and the sandbox say the same."""

from __future__ import annotations

import psycopg2
import pytest

from nontax_dev.statsd_wire import statsd_in_process
from wechat_nontax.issuing.outcomes import Outcome


@pytest.fixture
def wire():
    with statsd_in_process() as listener:
        yield listener


def test_a_daily_quota_answer_is_one_stop_and_its_call_is_counted(env, wire):
    env.sandbox.configure(daily_insert_limit=2)
    orders = env.orders(5)
    results = env.issue(orders, max_workers=1)
    assert [results[o.order_id].outcome for o in orders].count(Outcome.QUOTA) == 3
    assert env.sql("SELECT api, errcode FROM nontax.api_quota") == [("insert", 72057)]
    assert wire.total("airflow.nontax.quota.stops", api="insert") == 1
    assert wire.total("airflow.nontax.wechat.calls", api="insert", errcode="72057") == 1
    assert wire.total("airflow.nontax.bills.inserted", status="inserted") == 2
    assert (
        wire.total("airflow.nontax.wechat.calls", api="insert") == env.sandbox.calls()["insertbill"]
    )


class _AnotherHolderTakesIt:
    """The hook, but another try takes the order while its insert is at WeChat, which refuses
    it for good (72015): the try's end cannot be written, its hold is lost."""

    def __init__(self, hook, dsn):
        self.hook, self.dsn = hook, dsn

    def __getattr__(self, name):
        return getattr(self.hook, name)

    def insert_bill(self, order, media_id):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE nontax.bill_order SET held_by = 'another-try' WHERE order_id = %s",
                (order.order_id,),
            )
        conn.close()
        return self.hook.insert_bill(order, media_id)


def test_a_hold_lost_to_another_holder_is_counted_and_nothing_is_written(env, wire):
    order = env.orders(1)[0]
    env.sandbox.add_fault(
        endpoint="insertbill", kind="errcode", errcode=72015, order_ids=[order.order_id]
    )
    results = env.issue([order], api=_AnotherHolderTakesIt(env.hook, env.dsn))
    assert results[order.order_id].outcome == Outcome.HOLD_LOST
    row = env.store.get_row(order.order_id)
    assert row["status"] != "failed" and row["held_by"] == "another-try"
    assert wire.total("airflow.nontax.holds.lost", work="order") == 1
    assert wire.total("airflow.nontax.orders.ended") == 0  # the end was not written
    assert wire.total("airflow.nontax.wechat.calls", api="insert", errcode="72015") == 1


def test_an_order_failed_for_good_is_counted_by_status_and_errcode(env, wire):
    order = env.orders(1)[0]
    env.sandbox.add_fault(
        endpoint="insertbill", kind="errcode", errcode=72015, order_ids=[order.order_id]
    )
    results = env.issue([order])
    assert results[order.order_id].outcome == Outcome.FAILED
    assert env.store.get_row(order.order_id)["status"] == "failed"
    assert wire.total("airflow.nontax.orders.ended", status="failed", errcode="72015") == 1


def test_a_token_refresh_is_counted_once_per_fetch(env, wire):
    env.hook.get_access_token()
    env.hook.get_access_token()  # from the cache: no fetch
    assert env.token_fetches() == 1
    assert wire.total("airflow.nontax.token.refreshes", forced="false") == 1
    assert wire.total("airflow.nontax.wechat.calls", api="token", errcode="0") == 1
