"""End to end: the DAG run by Airflow (`airflow dags test`), real Postgres, the sandbox."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest

from dag_files import parse_dag_file
from factories import make_order, write_pdf
from nontax_dev.airflow_run import (
    AIRFLOW,
    DAG_ID,
    airflow_env,
    dags_test,
    sandbox_connection,
)
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore

pytestmark = pytest.mark.e2e

INSERT = "issue_bills"


@pytest.fixture(scope="session")
def airflow_homes(tmp_path_factory):
    """Two Airflow homes (SQLite metadata each), so that two runs can go at once."""
    return [tmp_path_factory.mktemp(f"airflow-{i}") for i in range(2)]


class Pipeline:
    def __init__(self, dsn: str, sandbox, homes: list[Path], pdf_root: Path):
        self.dsn, self.sandbox, self.pdf_root = dsn, sandbox, pdf_root
        self.envs = [
            airflow_env(
                home,
                orders_db=dsn,
                wechat_conn=sandbox_connection(sandbox.url),
                pdf_root=str(pdf_root),
            )
            for home in homes
        ]
        self.store = OrderStore(connect_dsn(dsn))

    def load(self, n: int, start: int = 0) -> list:
        orders = [make_order(i) for i in range(start, start + n)]
        for order in orders:
            write_pdf(self.pdf_root, order)
        self.store.upsert_orders(orders)
        return orders

    def run(self, conf: dict | None = None, *, home: int = 0):
        result = dags_test(self.envs[home], conf or {})
        assert result.run_id, result.output[-3000:]
        return result

    def sql(self, statement: str, params=()):
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        finally:
            conn.close()

    def assert_each_bill_once_and_matching(self, orders):
        bills = self.sandbox.bills()
        ids = [b["order_id"] for b in bills]
        assert len(ids) == len(set(ids)), "an order was inserted twice"
        by_id = {b["order_id"]: b for b in bills}
        rows = dict(
            (r[0], r[1:])
            for r in self.sql("SELECT order_id, status, code, openid FROM nontax.bill_order")
        )
        for order in orders:
            status, code, openid = rows[order.order_id]
            assert status == "inserted", (order.order_id, status)
            assert (code, openid) == (
                by_id[order.order_id]["code"],
                by_id[order.order_id]["openid"],
            )


@pytest.fixture
def pipeline(orders_db, sandbox, airflow_homes, tmp_path):
    p = Pipeline(orders_db, sandbox, airflow_homes, tmp_path / "pdfs")
    yield p
    p.store.close()


def test_the_dag_imports_without_error_or_warning_and_parses_quickly():
    parsed = parse_dag_file("nontax_insertbill.py")
    assert parsed.import_errors == {}
    assert DAG_ID in parsed.dags
    assert parsed.our_warnings == []
    assert parsed.seconds < 1.0  # `make bench` measures it precisely
    dag = parsed.dags[DAG_ID]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert set(dag.params) == {
        "order_ids",
        "max_orders",
        "batch_size",
        "min_batches",
        "workers",
        "dry_run",
    }
    # The run takes the state of its last task: the report, which waits for everything.
    assert [task.task_id for task in dag.leaves] == ["report"]


# How long the Celery broker may be away while a run's tasks are sent before one of them has
# spent its last try (docs/operating.md, "When Redis restarts").
BROKER_AWAY_S = 450


def test_every_task_has_tries_left_after_the_broker_was_away_for_minutes():
    """Each try the executor could not send counts as failed though it never ran: a task's
    retry delays (Airflow's least: retry_delay, multiplied by the backoff each try, up to
    max_retry_delay) add up to more than BROKER_AWAY_S before its last try."""
    dag = parse_dag_file("nontax_insertbill.py").dags[DAG_ID]
    for task in dag.tasks:
        delays = [
            min(
                task.retry_delay.total_seconds() * task.retry_exponential_backoff**n,
                task.max_retry_delay.total_seconds(),
            )
            for n in range(task.retries)
        ]
        assert sum(delays) >= BROKER_AWAY_S, (task.task_id, delays)


def test_happy_path_500_orders_spread_over_the_pool_slots(pipeline):
    orders = pipeline.load(500)
    result = pipeline.run()  # default params: at least 4 batches (the pool's slots)
    assert result.run_state == "success", result.output[-3000:]
    assert len(result.states(INSERT)) == 4
    assert set(result.states(INSERT).values()) == {"success"}
    labels = {t["rendered_map_index"] for t in result.tasks if t["task_id"] == INSERT}
    assert labels == {f"T{i:08d} … T{i + 124:08d} (125)" for i in range(0, 500, 125)}
    assert result.states("announce_bills") == {-1: "success"}
    pipeline.assert_each_bill_once_and_matching(orders)
    assert pipeline.sandbox.calls()["insertbill"] == 500
    # The token was fetched once for the whole run, by the refresh task.
    assert pipeline.sql("SELECT sum(fetch_count) FROM nontax.access_token") == [(1,)]


def test_mixed_faults_then_rerun_of_only_the_failed_instance(pipeline):
    orders = pipeline.load(300)
    refused = [orders[150].order_id, orders[160].order_id, orders[170].order_id]  # batch 1
    sandbox = pipeline.sandbox
    sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72036, probability=0.2, seed=1)
    sandbox.add_fault(endpoint="setpdf", kind="http_5xx", probability=0.1, seed=2)
    sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72015, order_ids=refused)
    result = pipeline.run({"batch_size": 100})
    assert result.run_state == "failed", [
        (t["task_id"], t["map_index"], t["state"]) for t in result.tasks
    ]
    assert result.states(INSERT) == {0: "success", 1: "failed", 2: "success"}
    assert result.states("report") == {-1: "failed"}
    statuses = dict(pipeline.sql("SELECT order_id, status FROM nontax.bill_order"))
    assert {statuses[o] for o in refused} == {"failed"}
    assert sum(1 for s in statuses.values() if s == "inserted") == 297
    reasons = pipeline.sql(
        "SELECT reason FROM nontax.bill_order WHERE order_id = ANY(%s)", (refused,)
    )
    assert all("72015" in r for (r,) in reasons)

    # The person on duty fixes the cause and re-runs that one instance.
    sandbox.clear_faults()
    calls_before = sandbox.calls()["insertbill"]
    rerun = subprocess.run(
        [AIRFLOW, "tasks", "test", DAG_ID, INSERT, result.run_id, "--map-index", "1"],
        env=pipeline.envs[0],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert sandbox.calls()["insertbill"] - calls_before == len(refused)
    pipeline.assert_each_bill_once_and_matching(orders)


def test_two_runs_at_once_share_no_order(pipeline):
    orders = pipeline.load(400)
    pipeline.sandbox.add_fault(endpoint="*", kind="latency", latency_ms=20)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda home: pipeline.run({"batch_size": 50}, home=home), [0, 1]))
    assert [r.run_state for r in runs] == ["success", "success"]
    shared = pipeline.sql(
        "SELECT order_id FROM nontax.bill_attempt WHERE step IN ('upload', 'insert') "
        "GROUP BY order_id HAVING count(DISTINCT run_id) > 1"
    )
    assert shared == []
    pipeline.assert_each_bill_once_and_matching(orders)
    assert pipeline.sql("SELECT sum(fetch_count) FROM nontax.access_token") == [(1,)]


def test_dry_run_sends_nothing(pipeline):
    pipeline.load(50)
    result = pipeline.run({"dry_run": True})
    assert result.run_state == "success", result.output[-3000:]
    calls = pipeline.sandbox.calls()
    assert sum(calls.values()) == 0, calls
    assert pipeline.sql("SELECT DISTINCT status FROM nontax.bill_order") == [("authorized",)]
    assert pipeline.sql("SELECT count(*) FROM nontax.bill_order WHERE claimed_by IS NOT NULL") == [
        (0,)
    ]
    assert result.states("announce_bills") == {-1: "skipped"}


def test_an_empty_queue_finishes_green_quickly(pipeline):
    started = time.monotonic()
    result = pipeline.run()
    assert result.run_state == "success"
    assert result.states("report") == {-1: "success"}
    assert time.monotonic() - started < 60
    assert not [t for t in result.tasks if t["task_id"] == INSERT and t["state"] == "failed"]


def test_secrets_stay_out_of_the_task_output_of_a_run(pipeline):
    """`dags test` echoes task logs; the hook must never have written a token or the secret."""
    from wechat_sandbox.client import DEFAULT_SECRET

    pipeline.load(20)
    result = pipeline.run()
    assert result.run_state == "success"
    tokens = pipeline.sandbox.issued_tokens()
    assert tokens
    for secret in [DEFAULT_SECRET, *tokens]:
        assert secret not in result.output
