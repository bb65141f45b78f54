"""The receiver while the order database is away or slow: WeChat still gets `success` within
its 5 s, the event is spooled and recorded once the database is back, also by a receiver
started again after a crash with events in its spool."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from test_receiver import SECRETS, events, load_unauthorized, order_status

from factories import make_order
from nontax_dev.receiver_process import start_receiver
from switchable_proxy import SwitchableProxy
from waiting import wait_until
from wechat_sandbox.pusher import authorization_xml

WECHAT_WAIT_S = 5.0


@pytest.fixture
def proxy(orders_db):
    parts = urlsplit(orders_db)
    proxy = SwitchableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield proxy
    proxy.close()


def through(proxy: SwitchableProxy, uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(
        parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}")
    )


@pytest.fixture
def start(proxy, orders_db, tmp_path):
    started = []

    def start_one():
        proc = start_receiver(
            through(proxy, orders_db), SECRETS, spool_dir=tmp_path / "spool",
            log_path=tmp_path / "receiver.log", env={"NONTAX_RECEIVER_REPLAY_EVERY_S": "0.5"},
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start_one
    for proc in started:
        proc.stop()


@pytest.mark.parametrize("away", ["down", "slow"])
def test_an_event_while_the_database_is_away_is_answered_spooled_and_recorded_once(
    start, proxy, cur, away
):
    receiver = start()
    order_id = load_unauthorized(cur, 11)
    getattr(proxy, away)()
    pusher = receiver.pusher()
    xml = authorization_xml(order_id, appid=SECRETS.appid, create_time=int(time.time()))
    first = pusher.push(xml)
    assert first.delivered and first.tries == 1
    assert first.seconds < WECHAT_WAIT_S
    again = pusher.push(xml)  # WeChat's retry of the same event, also spooled
    assert again.delivered and again.seconds < WECHAT_WAIT_S
    assert receiver.health()["spool_depth"] == 2
    assert order_status(cur, order_id) == "unauthorized" and events(cur) == []

    proxy.up()
    wait_until(lambda: receiver.health()["spool_depth"] == 0, timeout=20,
               what="the spool emptied", interval=0.2)  # fmt: skip
    assert order_status(cur, order_id) == "authorized"
    assert events(cur) == [(order_id, True, "o-payer", True, "authorized: due now")]
    assert "spooled: the database did not take it" in receiver.log_text()
    pusher.close()


def test_a_receiver_killed_with_a_full_spool_records_it_when_started_again(start, proxy, cur):
    receiver = start()
    order_ids = [load_unauthorized(cur, 20 + i) for i in range(3)]
    late = make_order(30).order_id  # its order is loaded only after the events
    proxy.down()
    pusher = receiver.pusher()
    for order_id in [*order_ids, late]:
        assert pusher.authorize(order_id).delivered
    pusher.close()
    assert receiver.health()["spool_depth"] == 4
    receiver.kill()

    proxy.up()
    again = start()
    wait_until(lambda: again.health()["spool_depth"] == 0, timeout=20,
               what="the spool emptied after the restart", interval=0.2)  # fmt: skip
    assert [order_status(cur, o) for o in order_ids] == ["authorized"] * 3
    assert len(events(cur)) == 4
    load_unauthorized(cur, 30)
    assert order_status(cur, late) == "authorized"
    assert again.health()["database"] is True
