"""End to end: the metrics of real DAG runs (`airflow dags test` with `[metrics] statsd_on`) as a
StatsD server receives them over UDP, compared with the order database and the sandbox's own
count of calls; a metrics backend that is down or absent neither fails nor slows a run."""

from __future__ import annotations

import re
import socket
import time

import psycopg2
import pytest

from airflow_desk import AirflowDesk
from factories import make_order, write_pdf
from nontax_dev.airflow_run import DAG_ID, REQUESTS_DAG_ID, dags_test
from nontax_dev.statsd_wire import StatsdListener
from wechat_nontax.observability import metrics
from wechat_nontax.observability.metrics import statsd_config
from wechat_nontax.requests.contract import request_action

pytestmark = pytest.mark.e2e

REJECTED = ["T00000003", "T00000007"]


class Desk(AirflowDesk):
    def load(self, n):
        orders = [make_order(i) for i in range(n)]
        for order in orders:
            write_pdf(self.pdf_root, order)
        self.store.upsert_orders(orders)
        return orders

    def run_with(self, env: dict[str, str], dag_id: str = DAG_ID, conf: dict | None = None):
        return dags_test({**self.env, **env}, conf, dag_id=dag_id)


@pytest.fixture
def desk(orders_db, sandbox, tmp_path_factory, tmp_path):
    d = Desk(orders_db, sandbox, tmp_path_factory.mktemp("airflow-metrics"), tmp_path / "pdfs")
    yield d
    d.store.close()


@pytest.fixture
def wire():
    listener = StatsdListener()
    yield listener
    listener.close()


def test_an_issuing_run_sends_its_metrics_on_the_statsd_wire(desk, wire):
    desk.load(40)
    desk.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72035, order_ids=REJECTED)
    result = desk.run_with(statsd_config(f"127.0.0.1:{wire.port}"))
    assert result.run_state == "success", result.output[-3000:]

    inserted = desk.sql("SELECT count(*) FROM nontax.bill_order WHERE status = 'inserted'")[0][0]
    assert inserted == 38
    assert wire.total("airflow.nontax.bills.inserted", status="inserted") == inserted
    assert wire.total("airflow.nontax.orders.ended", status="rejected", errcode="72035") == 2
    calls = desk.sandbox.calls()
    assert wire.total("airflow.nontax.wechat.calls", api="insert") == calls["insertbill"] == 40
    assert wire.total("airflow.nontax.wechat.calls", api="insert", errcode="0") == 38
    assert wire.total("airflow.nontax.wechat.calls", api="upload", errcode="0") == calls["setpdf"]
    timings = [line for line in wire.lines("airflow.nontax.wechat.call_ms") if line.kind == "ms"]
    assert len([t for t in timings if t.tags == {"api": "insert"}]) == 40
    assert all(t.value >= 0 for t in timings)
    fetched = desk.sql("SELECT sum(fetch_count) FROM nontax.access_token")[0][0]
    assert wire.total("airflow.nontax.token.refreshes", forced="false") == fetched == 1
    assert wire.total("airflow.nontax.runs.reported", dag=DAG_ID, verdict="success") == 1
    (last_success,) = wire.lines("airflow.nontax.run.last_success")
    assert last_success.tags == {"dag": DAG_ID} and abs(last_success.value - time.time()) < 600

    ours = [line for line in wire.lines() if line.name.startswith("airflow.nontax.")]
    assert {line.name.removeprefix("airflow.") for line in ours} <= {
        m.name for m in metrics.EMITTED
    }
    # No order id, bill code, openid, token or secret in any line of ours.
    from wechat_sandbox.client import DEFAULT_SECRET

    secrets = [DEFAULT_SECRET, *desk.sandbox.issued_tokens()]
    bills = desk.sql("SELECT order_id, code, openid FROM nontax.bill_order")
    for line in ours:
        assert not re.search(r"T0000\d{4}", line.raw), line.raw
        for value in [*secrets, *(v for row in bills for v in row if v)]:
            assert value not in line.raw, line.raw


def test_a_requests_run_counts_the_refusals_and_voids_it_carried_out(desk, wire):
    desk.load(2)
    assert desk.run_with({}, conf={"order_ids": ["T00000001"]}).run_state == "success"
    conn = psycopg2.connect(desk.dsn)
    try:
        assert request_action(conn, "T00000000", "refuse", "订单已退款", "duty@unit").accepted
        assert request_action(conn, "T00000001", "void", "财政平台已冲红", "duty@unit").accepted
    finally:
        conn.close()
    result = desk.run_with(statsd_config(f"127.0.0.1:{wire.port}"), dag_id=REQUESTS_DAG_ID)
    assert result.run_state == "success", result.output[-3000:]
    assert wire.total("airflow.nontax.requests.ended", kind="refuse", outcome="done") == 1
    assert wire.total("airflow.nontax.requests.ended", kind="void", outcome="done") == 1
    assert wire.total("airflow.nontax.wechat.calls", api="refuse", errcode="0") == 1
    assert wire.total("airflow.nontax.wechat.calls", api="void", errcode="0") == 1
    assert desk.sql("SELECT count(*) FROM nontax.bill_request WHERE status = 'done'") == [(2,)]


def _closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_a_metrics_backend_down_or_absent_neither_fails_nor_slows_a_run(desk):
    """Three runs of 30 orders each: no metrics, StatsD at a closed port, StatsD at a host name
    that does not resolve. Each run is green with every order inserted; the two with a broken
    backend take no longer than the one without metrics, give or take the noise of a shared
    machine (`dags test` starts a Python process of several seconds either way)."""
    durations = {}
    for n, (name, env) in enumerate(
        [
            ("none", {}),
            ("closed port", statsd_config(f"127.0.0.1:{_closed_port()}")),
            ("unresolvable", statsd_config("statsd.nontax.invalid:8125")),
        ]
    ):
        orders = [make_order(i) for i in range(n * 30, n * 30 + 30)]
        for order in orders:
            write_pdf(desk.pdf_root, order)
        desk.store.upsert_orders(orders)
        started = time.monotonic()
        result = desk.run_with(env)
        durations[name] = time.monotonic() - started
        assert result.run_state == "success", (name, result.output[-3000:])
        ids = [o.order_id for o in orders]
        assert desk.sql(
            "SELECT count(*) FROM nontax.bill_order WHERE status = 'inserted' "
            "AND order_id = ANY(%s)",
            (ids,),
        ) == [(30,)], name
    for name in ("closed port", "unresolvable"):
        assert durations[name] < 1.5 * durations["none"] + 10, durations
