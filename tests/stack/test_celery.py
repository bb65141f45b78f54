"""CeleryExecutor for real, without Docker: the stack of `make up-celery` (api-server, scheduler,
dag-processor, triggerer, two `airflow celery worker` processes on the local Redis, Postgres,
the sandbox), started by this module on free ports with databases and Redis keys of its own, and
always stopped again.

1. Each worker answers the compose file's health check (`celery inspect ping -d celery@<host>`).
2. A run's batches are spread over both workers: the task instances' hostnames say which worker
   ran each one, and every bill reaches WeChat once.
3. A worker is killed while a batch of its is half done (SIGKILL to all its processes, as when
   its machine is lost): the scheduler notices its silence and retries the batch on the other
   worker, which finishes it; the run ends green, every bill in WeChat exactly once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psutil
import pytest
import redis
from stack_helpers import own_stack_config, run_in, running

from factories import make_order, write_pdf
from nontax_tools import celery_workers
from nontax_tools.airflow_api import DAG_ID
from nontax_tools.stack import Proc, Stack
from wechat_nontax.orders_db import connect_dsn
from wechat_nontax.store import OrderStore
from wechat_sandbox.client import SandboxAdmin

pytestmark = pytest.mark.e2e

TEST_REDIS = os.environ.get("NONTAX_TEST_REDIS", celery_workers.DEFAULT_REDIS)
WORKERS = ["worker-1", "worker-2"]
ISSUE = "issue_bills"
ORDERS = 60
# 4 batches of 15 orders, 2 calls in flight each, 300 ms a call: a batch takes seconds, so the
# pool's 4 slots hold all four at once and each worker (2 tasks at a time) gets two.
CONF = {"batch_size": 15, "workers": 2}
LATENCY_MS = 300
# How long a worker may stay silent before its task instances are failed and retried: the
# deployed 120 s (docker/airflow-celery.env) shortened for the test, the one Celery setting
# that differs from the compose file's.
HEARTBEAT_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = own_stack_config(
        tmp_path_factory.mktemp("celery-stack"),
        "celery",
        executor="celery",
        workers=len(WORKERS),
        worker_concurrency=2,
        redis_url=TEST_REDIS,
        extra_env={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S)},
    )
    with running(config) as stack:
        prefix = stack.state.broker_prefix
        yield stack
    client = redis.Redis.from_url(TEST_REDIS)
    assert list(client.scan_iter(match=f"{prefix}*")) == [], "the stack's keys are left in Redis"
    client.close()


@pytest.fixture(scope="module")
def sandbox(stack: Stack) -> Iterator[SandboxAdmin]:
    admin = stack.sandbox_admin()
    admin.add_fault(endpoint="*", kind="latency", latency_ms=LATENCY_MS)
    yield admin
    admin.close()


@pytest.fixture(scope="module")
def store(stack: Stack) -> Iterator[OrderStore]:
    store = OrderStore(connect_dsn(stack.orders_dsn))
    yield store
    store.close()


def load(stack: Stack, store: OrderStore, first: int) -> list[str]:
    orders = [make_order(n) for n in range(first, first + ORDERS)]
    for order in orders:
        write_pdf(stack.pdf_root, order)
    store.upsert_orders(orders)
    return [o.order_id for o in orders]


def tis(stack: Stack, run_id: str) -> dict[tuple[str, int], dict]:
    return {(t["task_id"], t["map_index"]): t for t in stack.api.task_instances(run_id)}


def assert_each_bill_once(sandbox: SandboxAdmin, order_ids: list[str]) -> None:
    ids = [b["order_id"] for b in sandbox.bills()]
    assert len(ids) == len(set(ids)), "a bill was inserted twice"
    assert set(order_ids) <= set(ids)
    successes = sandbox.orders()
    assert {o: successes[o]["successes"] for o in order_ids} == dict.fromkeys(order_ids, 1)


def test_the_stack_runs_each_worker_in_its_own_session_and_they_answer_the_health_check(
    stack: Stack,
):
    assert [p.name for p in stack.workers()] == WORKERS
    for worker in stack.workers():
        assert os.getsid(worker.pid) == worker.pid, f"{worker.name} is not a session leader"
        # docker-compose.yaml's health check of a worker, against this one.
        answer = run_in(stack, celery_workers.ping_command(worker.name))
        assert f"celery@{worker.name}: OK" in answer
    health = stack.api.health()
    assert {health[c]["status"] for c in ("scheduler", "triggerer", "dag_processor")} == {"healthy"}


def test_a_run_is_spread_over_both_workers_and_each_bill_is_sent_once(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore
):
    order_ids = load(stack, store, 0)
    run_id = stack.api.trigger(CONF)
    run = stack.api.wait_run(run_id, timeout=300)

    instances = tis(stack, run_id)
    assert run["state"] == "success", {k: t["state"] for k, t in instances.items()}
    batches = {m: t for (task, m), t in instances.items() if task == ISSUE}
    assert len(batches) == 4
    assert {t["hostname"] for t in instances.values()} <= set(WORKERS)
    assert {t["hostname"] for t in batches.values()} == set(WORKERS)
    assert {t["try_number"] for t in batches.values()} == {1}
    assert_each_bill_once(sandbox, order_ids)
    assert store.count_by_status(order_ids) == {"inserted": ORDERS}


def running_batches(instances: dict[tuple[str, int], dict]) -> list[dict]:
    return [t for (task, _), t in instances.items() if task == ISSUE and t["state"] == "running"]


def _half_done_batch(stack: Stack, sandbox: SandboxAdmin, run_id: str) -> tuple[str, dict]:
    """Wait until a batch is running and WeChat has some, not all, of its bills; returns the
    worker running it and the run's batches (map index -> order ids)."""
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    deadline = time.monotonic() + 180
    orders: list[list[str]] | None = None
    while time.monotonic() < deadline:
        instances = tis(stack, run_id)
        if orders is None and instances.get(("claim_orders", -1), {}).get("state") == "success":
            orders = stack.api.get(
                f"{base}/claim_orders/xcomEntries/return_value", params={"deserialize": "true"}
            )["value"]
        if orders and (running := running_batches(instances)):
            billed = {b["order_id"] for b in sandbox.bills()}
            for ti in running:
                done = len(billed & set(orders[ti["map_index"]]))
                if 3 <= done < len(orders[ti["map_index"]]) - 3:
                    return ti["hostname"], dict(enumerate(orders))
        time.sleep(0.2)
    raise TimeoutError(f"no batch was seen half done: {instances}")


def _kill_host(worker: Proc) -> int:
    """SIGKILL a worker and everything under it (its pool, the task processes) at once."""
    leader = psutil.Process(worker.pid)
    tree = [leader, *leader.children(recursive=True)]
    for process in tree:
        process.kill()
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == []
    return len(gone)


def test_a_worker_killed_mid_batch_has_its_batches_finished_by_the_other_one(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore
):
    order_ids = load(stack, store, 1000)
    run_id = stack.api.trigger(CONF)
    victim, batches = _half_done_batch(stack, sandbox, run_id)
    survivor = next(w for w in WORKERS if w != victim)
    lost = [t["map_index"] for t in running_batches(tis(stack, run_id)) if t["hostname"] == victim]
    assert lost, f"{victim}'s batch ended before it could be killed"
    killed = _kill_host(next(p for p in stack.workers() if p.name == victim))
    print(f"killed {victim} ({killed} processes) running batches {lost}")

    # Retried after the heartbeat timeout and Airflow's retry delay (30 s) on the survivor.
    run = stack.api.wait_run(run_id, timeout=420)
    instances = tis(stack, run_id)
    assert run["state"] == "success", {k: t["state"] for k, t in instances.items()}
    for m in lost:
        ti = instances[(ISSUE, m)]
        assert (ti["state"], ti["hostname"], ti["try_number"]) == ("success", survivor, 2)
        base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ISSUE}/{m}/tries"
        first = stack.api.get(f"{base}/1")
        assert (first["hostname"], first["state"]) == (victim, "failed")
        log = stack.api.log_text(run_id, ISSUE, 2, map_index=m)
        assert "already_done" in log  # the retry skipped what the killed try had finished
    for (task, m), ti in instances.items():
        if task == ISSUE and m not in lost:
            assert ti["state"] == "success" and ti["try_number"] == 1

    # Every bill in WeChat exactly once. An insert whose answer died with the worker is found
    # by the retry (WeChat's 72056) and recorded as `duplicate`: done, never sent again.
    assert_each_bill_once(sandbox, order_ids)
    statuses = {o: store.get_row(o)["status"] for o in order_ids}
    assert set(statuses.values()) <= {"inserted", "duplicate"}
    in_lost_batches = {o for m in lost for o in batches[m]}
    assert {o for o, s in statuses.items() if s == "duplicate"} <= in_lost_batches
    # The killed worker is gone for good; the other one still runs.
    alive = {p.name for p in stack.workers() if p.process() is not None}
    assert alive == {survivor}
