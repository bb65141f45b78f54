"""A real Airflow (`make up`'s code, LocalExecutor, the scheduler's forkserver task processes) with
`STATSD=` on: the metrics of a scheduled run's task processes reach a StatsD server, and the
api-server serves the backlog gauges at /nontax/metrics behind the scrape token."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from factories import make_order, write_pdf
from nontax_dev.stack.stack import Stack
from nontax_dev.statsd_wire import StatsdListener
from stack_helpers import own_stack_config, running
from wechat_nontax.observability.metrics import statsd_config
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore

TOKEN = "stack-scrape-token"


@pytest.fixture(scope="module")
def wire() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, wire) -> Iterator[Stack]:
    extra = {
        **statsd_config(f"127.0.0.1:{wire.port}"),
        "AIRFLOW_CONN_NONTAX_METRICS": json.dumps({"conn_type": "generic", "password": TOKEN}),
    }
    config = own_stack_config(tmp_path_factory.mktemp("stack"), "metrics", extra_env=extra)
    with running(config) as stack:
        yield stack


def test_a_scheduled_runs_task_processes_send_their_metrics(stack, wire):
    stack.api.wait_idle(timeout=120)
    store = OrderStore(connect_dsn(stack.orders_dsn))
    orders = [make_order(n) for n in range(12)]
    for order in orders:
        write_pdf(stack.pdf_root, order)
    store.upsert_orders(orders)
    store.close()
    run = stack.api.wait_run(stack.api.trigger({}), timeout=300)
    assert run["state"] == "success"
    assert wire.total("airflow.nontax.bills.inserted", status="inserted") == 12
    assert wire.total("airflow.nontax.wechat.calls", api="insert", errcode="0") == 12
    assert wire.total("airflow.nontax.runs.reported", dag="nontax_insertbill", verdict="success")
    # Airflow's own task metrics come the same way (the deployment's one [metrics] setting).
    assert any(line.name.startswith("airflow.ti.") for line in wire.lines())


def test_the_api_server_serves_the_backlog_gauges_to_the_token_only(stack):
    url = f"{stack.url}/nontax/metrics"
    assert requests.get(url, timeout=30).status_code == 401
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403
    answer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    got = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    assert got[("nontax_backlog_up", ())] == 1
    store = OrderStore(connect_dsn(stack.orders_dsn))
    try:
        counts = store.count_by_status()
    finally:
        store.close()
    assert got[("nontax_orders", (("status", "inserted"),))] == counts.get("inserted", 0)
