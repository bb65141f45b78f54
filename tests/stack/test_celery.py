"""CeleryExecutor for real, without Docker: the stack of `make up EXECUTOR=celery WORKERS=2`
(api-server, scheduler, dag-processor, triggerer, two `airflow celery worker` processes,
Postgres, the sandbox) started once for this module on free ports, with databases of its own and
a Redis of its own (a private `redis-server` on a free port, the only one a test restarts), and
always stopped again, the Redis last.

1. Each worker answers the compose file's health check (`celery inspect ping -d celery@<host>`).
2. The stack's environment and the compose file's `x-airflow-common` one agree key by key; the
   few the test stack changes are listed below (TEST_OVERRIDES), each with its reason.
3. 2,000 orders in one run: batches on both workers (the task instances' hostnames), every bill
   inserted once in the sandbox, exactly one token fetch on a cold cache, the run green.
4. Redis restarted (killed, started again empty) between two runs: the second run completes
   without a person.
5. A worker killed (SIGKILL to its whole process group) while its batch is half done: the
   scheduler notices within seconds (the heartbeat settings below), the batch is retried on the
   other worker after its orders' hold ends, every bill is in WeChat exactly once, the only
   orders sent twice are those whose answer was in flight (`duplicate`, with WeChat's reason),
   and the run's report counts them.
6. A deploy stops a worker as the compose file has it (SIGTERM as its DUMB_INIT_SETSID says,
   SIGKILL after its stop_grace_period) mid-batch: the batches stop before the SIGKILL and end
   on the other worker, nothing sent twice, no code lost.
7. A batch's supervisor (its Celery pool process) killed, or the worker's main process: the
   orphaned task process stops itself within seconds and the next try takes over without
   waiting for its hold, every bill once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psutil
import psycopg2
import pytest
import redis
import yaml
from test_compose import COMPOSE, example_env, interpolate, worker_stop

from factories import make_order, write_pdf
from nontax_dev.airflow_api import DAG_ID
from nontax_dev.stack import celery_workers
from nontax_dev.stack.processes import Proc, command_of
from nontax_dev.stack.stack import Stack
from stack_helpers import PrivateRedis, own_stack_config, run_in, running
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_sandbox.client import SandboxAdmin

pytestmark = pytest.mark.e2e

WORKERS = ["worker-1", "worker-2"]
ISSUE = "issue_bills"
# What the test stack sets otherwise than `make up EXECUTOR=celery` and the compose file, and why.
TEST_OVERRIDES = {
    # A silent worker's task is failed after 15 s, not the deployed 120 s
    # (docker/airflow-celery.env): the kill test takes seconds, not minutes.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
    # 2 tasks at a time per worker (8 deployed): a run's 4 batches must go to both workers.
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
    # No scheduled run: the tests trigger theirs (own_stack_config sets it).
    "NONTAX_SCHEDULE": "0 0 29 2 *",
    "NONTAX_REQUESTS_SCHEDULE": "0 0 29 2 *",
    "NONTAX_WAITING_SCHEDULE": "0 0 29 2 *",
}
# Settings the compose file leaves at Airflow's and the pipeline's defaults, changed here only.
TEST_ONLY = {
    # The scheduler looks for silent task instances every 2 s (10 s by default), and a task's
    # supervisor reports every 2 s (5 s by default), so that 15 s of silence is never a slow beat.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    # A try's hold on its orders lasts 40 s unrenewed (120 s by default): the retry of a killed
    # batch waits at most that long before working on its orders. It must be at least twice
    # 3 x the Connection's timeout + 2 s, hence the timeout of 5 s below (15 s deployed).
    "NONTAX_HOLD_S": "40",
    # A failed try is retried 10-20 s later (30-60 s by default): the killed, stopped and
    # orphaned batches' retries. More than the few seconds an orphaned task process takes to
    # end its hold, so that its retry still finds the orders free.
    "NONTAX_RETRY_DELAY_S": "10",
}
WECHAT_TIMEOUT_S = 5
BASE_URL = "AIRFLOW__API__BASE_URL"


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, broker: PrivateRedis) -> Iterator[Stack]:
    concurrency = int(TEST_OVERRIDES["AIRFLOW__CELERY__WORKER_CONCURRENCY"])
    config = own_stack_config(
        tmp_path_factory.mktemp("celery-stack"),
        "celery",
        executor="celery",
        workers=len(WORKERS),
        worker_concurrency=concurrency,
        redis_url=f"{broker.url}/3",
        sandbox_extra={"token_mode": "stable_token", "timeout": WECHAT_TIMEOUT_S},
        extra_env={**TEST_OVERRIDES, **TEST_ONLY},
    )
    with running(config) as stack:
        prefix = stack.state.broker_prefix
        yield stack
    client = redis.Redis.from_url(config.redis_url)
    assert list(client.scan_iter(match=f"{prefix}*")) == [], "the stack's keys are left in Redis"
    client.close()


@pytest.fixture(scope="module")
def sandbox(stack: Stack) -> Iterator[SandboxAdmin]:
    admin = stack.sandbox_admin()
    yield admin
    admin.close()


@pytest.fixture(scope="module")
def store(stack: Stack) -> Iterator[OrderStore]:
    store = OrderStore(connect_dsn(stack.orders_dsn))
    yield store
    store.close()


def load(stack: Stack, store: OrderStore, first: int, count: int) -> list[str]:
    orders = [make_order(n) for n in range(first, first + count)]
    for order in orders:
        write_pdf(stack.pdf_root, order)
    for start in range(0, count, 1000):
        store.upsert_orders(orders[start : start + 1000])
    return [o.order_id for o in orders]


def tis(stack: Stack, run_id: str) -> dict[tuple[str, int], dict]:
    return {(t["task_id"], t["map_index"]): t for t in stack.api.task_instances(run_id)}


def run_green(stack: Stack, conf: dict, timeout: float) -> tuple[str, dict]:
    run_id = stack.api.trigger(conf)
    run = stack.api.wait_run(run_id, timeout=timeout)
    instances = tis(stack, run_id)
    assert run["state"] == "success", {k: t["state"] for k, t in instances.items()}
    return run_id, instances


def assert_each_bill_once(sandbox: SandboxAdmin, order_ids: list[str]) -> None:
    ids = [b["order_id"] for b in sandbox.bills()]
    assert len(ids) == len(set(ids)), "a bill was inserted twice"
    assert set(order_ids) <= set(ids)
    successes = sandbox.orders()
    assert {o: successes[o]["successes"] for o in order_ids} == dict.fromkeys(order_ids, 1)


def report_of(stack: Stack, run_id: str) -> dict:
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    return stack.api.get(f"{base}/report/xcomEntries/return_value", params={"deserialize": "true"})[
        "value"
    ]


# -- 1, 2: the workers, and the settings the compose file gives its containers -------------------


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


def compose_common_env() -> dict[str, str]:
    """The compose file's `x-airflow-common`: its env_file, then its environment, with
    .env.example's values (the defaults of `${VAR:-default}`)."""
    from dotenv import dotenv_values

    common = interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), example_env())
    common = common["x-airflow-common"]
    env: dict[str, str] = {}
    for path in common["env_file"]:
        env.update(dotenv_values(COMPOSE.parent / path, interpolate=False))
    return {**env, **{k: str(v) for k, v in common["environment"].items()}}


def _without_driver(url: str) -> str:
    """A database URL without `db+` (Celery's result backend) and the driver name."""
    return re.sub(r"^(db\+)?postgresql(\+psycopg2)?://", "postgresql://", url)


def _connection(value: str) -> dict[str, Any]:
    conn = json.loads(value)
    conn["extra"] = conn.get("extra") or {}
    return conn


# The compose file's addresses and secrets are each deployment's own: for those, the local stack
# must have the same kind of value, not the same value.
def _same_kind(key: str, compose: str, local: str, compose_env: dict, local_env: dict) -> bool:
    if key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
               "AIRFLOW__API__SECRET_KEY"):  # fmt: skip
        return bool(compose) and bool(local)
    if key == "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
        return compose.startswith("postgresql+psycopg2://") and local.startswith(
            "postgresql+psycopg2://"
        )
    if key == "AIRFLOW__CELERY__RESULT_BACKEND":  # the metadata database, on both
        meta = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
        return _without_driver(compose) == _without_driver(compose_env[meta]) and (
            _without_driver(local) == _without_driver(local_env[meta])
        )
    if key == "AIRFLOW__CELERY__BROKER_URL":  # Redis, a database number of its own
        return all(
            urlsplit(url).scheme == "redis" and re.fullmatch(r"/\d+", urlsplit(url).path)
            for url in (compose, local)
        )
    if key == "AIRFLOW__CORE__EXECUTION_API_SERVER_URL":  # the api-server's, on both
        return compose.endswith(":8080/execution/") and local.startswith(local_env[BASE_URL])
    if key == BASE_URL:
        return all(urlsplit(u).scheme == "http" and urlsplit(u).port for u in (compose, local))
    if key == "NONTAX_PDF_ROOT":
        return compose.startswith("/") and local.startswith("/")
    if key.startswith("AIRFLOW_CONN_"):  # same type and extra; host and credentials are own
        ours, theirs = _connection(local), _connection(compose)
        extra = dict(theirs["extra"])
        if key == "AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT":
            extra["timeout"] = WECHAT_TIMEOUT_S  # the test stack's, see TEST_ONLY
        # A password is each deployment's; the local Postgres may let its user in without one.
        return (
            ours["conn_type"] == theirs["conn_type"]
            and set(ours) - {"password"} == set(theirs) - {"password"}
            and ours["extra"] == extra
        )
    return False


def test_the_stack_has_the_compose_files_settings_key_by_key(stack: Stack):
    """Executor, broker, result backend, concurrency, pool, Connections and every other key of
    the compose file's `x-airflow-common` (with docker/airflow-celery.env): the same value in the
    stack's processes, or for an address or a secret the same kind of value; the test stack's own
    changes are exactly TEST_OVERRIDES."""
    compose, local = compose_common_env(), stack.env
    assert (
        compose["AIRFLOW__CORE__EXECUTOR"] == local["AIRFLOW__CORE__EXECUTOR"] == ("CeleryExecutor")
    )
    differ = {}
    for key, value in compose.items():
        assert key in local, f"the stack does not set {key}"
        expected = TEST_OVERRIDES.get(key, value)
        if local[key].lower() == expected.lower():
            continue
        if not _same_kind(key, value, local[key], compose, local):
            differ[key] = (value, local[key])
    assert differ == {}, "the stack and the compose file differ"
    assert {k: local[k] for k in TEST_ONLY} == TEST_ONLY
    # The workers run with the concurrency the stack was given (`make up`'s default, 8, is the
    # compose file's: tests/stack/test_compose.py).
    assert local["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == str(stack.config.worker_concurrency)
    assert local["NONTAX_POOL_SLOTS"] == compose["NONTAX_POOL_SLOTS"] == "4"


# -- 3: 2,000 orders over both workers -------------------------------------------------------------


def test_two_thousand_orders_are_spread_over_both_workers_with_one_token_fetch(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore
):
    # A cold cache: no token in the order database, none issued by the sandbox.
    conn = psycopg2.connect(stack.orders_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DELETE FROM nontax.access_token")
    sandbox.clear_faults()
    sandbox.add_fault(endpoint="*", kind="latency", latency_ms=20)
    issued_before = len(sandbox.issued_tokens())
    order_ids = load(stack, store, 0, 2000)

    started = time.monotonic()
    run_id, instances = run_green(stack, {"workers": 8}, timeout=600)
    print(f"2,000 orders over {len(WORKERS)} workers in {time.monotonic() - started:.1f} s")

    batches = {m: t for (task, m), t in instances.items() if task == ISSUE}
    assert len(batches) == 4  # one a pool slot
    assert {t["hostname"] for t in instances.values()} <= set(WORKERS)
    assert {t["hostname"] for t in batches.values()} == set(WORKERS)
    assert {t["try_number"] for t in batches.values()} == {1}
    assert_each_bill_once(sandbox, order_ids)
    assert store.count_by_status(order_ids) == {"inserted": 2000}
    # Exactly one token fetch: the token task's, shared through the cache by all four batches.
    assert len(sandbox.issued_tokens()) - issued_before == 1
    assert sandbox.tokens()[-1]["kind"] == "stable"  # the Connection's token_mode
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), sum(fetch_count) FROM nontax.access_token")
        assert cur.fetchone() == (1, 1)
    conn.close()
    assert report_of(stack, run_id)["by_status"] == {"inserted": 2000}


# -- 4: Redis restarted between two runs ----------------------------------------------------------


def test_a_run_after_redis_restarted_completes_without_a_person(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore, broker: PrivateRedis
):
    sandbox.clear_faults()
    first = load(stack, store, 5000, 8)
    run_green(stack, {"batch_size": 4}, timeout=300)
    started = time.monotonic()
    broker.restart()  # everything it held is gone: queues, bindings, the workers' registrations
    second = load(stack, store, 5100, 8)
    _, instances = run_green(stack, {"batch_size": 4}, timeout=300)
    print(f"the run after the Redis restart ended {time.monotonic() - started:.1f} s after it")
    assert {t["hostname"] for t in instances.values()} <= set(WORKERS)
    assert {t["try_number"] for t in instances.values()} == {1}  # nothing failed on the way
    assert_each_bill_once(sandbox, first + second)
    assert all(p.process() is not None for p in stack.workers())


# -- 5: a worker killed mid-batch -----------------------------------------------------------------

# 4 batches of 15 orders, 2 calls in flight each, 300 ms a call: a batch takes seconds, so the
# pool's 4 slots hold all four at once and each worker (2 tasks at a time) gets two.
KILL_ORDERS = 60
KILL_CONF = {"batch_size": 15, "workers": 2}


def running_batches(instances: dict[tuple[str, int], dict]) -> list[dict]:
    return [t for (task, _), t in instances.items() if task == ISSUE and t["state"] == "running"]


def _half_done_batch(
    stack: Stack, sandbox: SandboxAdmin, run_id: str
) -> tuple[str, int, dict[int, list[str]]]:
    """Wait until a batch is running and WeChat has some, not all, of its bills; returns the
    worker running it, its map index and the run's batches (map index -> order ids)."""
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    deadline = time.monotonic() + 180
    orders: list[list[str]] | None = None
    instances: dict = {}
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
                    return ti["hostname"], ti["map_index"], dict(enumerate(orders))
        time.sleep(0.2)
    states = {k: t["state"] for k, t in instances.items()}
    raise TimeoutError(f"no batch was seen half done: {states}")


def _kill_host(worker: Proc) -> int:
    """SIGKILL a worker's whole process group (its pool and task processes, which stay in it)
    and anything of it that left the group, at once: as when its machine is lost."""
    leader = psutil.Process(worker.pid)
    tree = [leader, *leader.children(recursive=True)]
    os.killpg(worker.pid, signal.SIGKILL)
    for process in tree:
        if process.is_running():
            process.kill()
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == []
    return len(gone)


def test_a_worker_killed_mid_batch_has_its_batches_finished_by_the_other_one(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore
):
    sandbox.clear_faults()
    sandbox.add_fault(endpoint="*", kind="latency", latency_ms=300)
    order_ids = load(stack, store, 10_000, KILL_ORDERS)
    run_id = stack.api.trigger(KILL_CONF)
    victim, half_done, batches = _half_done_batch(stack, sandbox, run_id)
    survivor = next(w for w in WORKERS if w != victim)
    lost = [t["map_index"] for t in running_batches(tis(stack, run_id)) if t["hostname"] == victim]
    assert lost, f"{victim}'s batch ended before it could be killed"
    killed_at = time.monotonic()
    killed = _kill_host(next(p for p in stack.workers() if p.name == victim))
    print(f"killed {victim} ({killed} processes) running batches {lost}")

    # Noticed within the heartbeat timeout (15 s) and the detection interval (2 s).
    first_try = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ISSUE}/{lost[0]}"
    while stack.api.get(first_try)["state"] == "running":
        assert time.monotonic() - killed_at < 60, "the scheduler did not notice the dead worker"
        time.sleep(0.5)
    print(f"Airflow noticed the dead worker after {time.monotonic() - killed_at:.1f} s")

    # Retried after Airflow's retry delay (NONTAX_RETRY_DELAY_S) on the survivor, which waits for
    # the killed try's hold on its orders (40 s from its last renewal) before working on them.
    run = stack.api.wait_run(run_id, timeout=300)
    print(f"the run ended {time.monotonic() - killed_at:.1f} s after the kill")
    instances = tis(stack, run_id)
    assert run["state"] == "success", {k: t["state"] for k, t in instances.items()}
    for m in lost:
        ti = instances[(ISSUE, m)]
        assert (ti["state"], ti["hostname"], ti["try_number"]) == ("success", survivor, 2)
        base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ISSUE}/{m}/tries"
        first = stack.api.get(f"{base}/1")
        assert (first["hostname"], first["state"]) == (victim, "failed")
    # The retry of the half-done batch skipped what the killed try had finished.
    assert "already_done" in stack.api.log_text(run_id, ISSUE, 2, map_index=half_done)
    for (task, m), ti in instances.items():
        if task == ISSUE and m not in lost:
            assert ti["state"] == "success" and ti["try_number"] == 1

    # Every bill in WeChat exactly once; no order lost. An insert whose answer died with the
    # worker is sent again by the retry, answered 72056 (already in the card package) and
    # recorded `duplicate` with that reason: done, never billed twice. No other order was sent
    # twice, and at most as many as the lost batches had calls in flight.
    assert_each_bill_once(sandbox, order_ids)
    rows = {o: store.get_row(o) for o in order_ids}
    statuses = {o: row["status"] for o, row in rows.items()}
    assert set(statuses.values()) <= {"inserted", "duplicate"}
    duplicates = {o for o, s in statuses.items() if s == "duplicate"}
    sent_twice = {o for o, s in sandbox.orders().items() if o in rows and s["attempts"] > 1}
    assert sent_twice == duplicates
    assert duplicates <= {o for m in lost for o in batches[m]}
    assert len(duplicates) <= len(lost) * KILL_CONF["workers"]
    for o in duplicates:
        assert "order_id repeated" in rows[o]["reason"], rows[o]["reason"]
    # The run's report says what happened: the batches' orders by their end, the duplicates too.
    report = report_of(stack, run_id)
    assert report["by_status"] == {
        s: n
        for s, n in (("duplicate", len(duplicates)), ("inserted", KILL_ORDERS - len(duplicates)))
        if n
    }
    assert report["needs_attention"] == [] and report["left_due"] == 0
    print(f"duplicates: {len(duplicates)}; report: {report['by_status']}")
    # The killed worker is gone for good; the other one still runs.
    alive = {p.name for p in stack.workers() if p.process() is not None}
    assert alive == {survivor}


# -- 6, 7: a deploy stops a worker; a task's supervisor dies -------------------------------------

# Batches of 40 orders, one call in flight each, 400 ms a call: a batch takes about 30 s, much
# longer than Docker's default 10 s grace, and its task process is seen at work for long.
LONG_ORDERS = 160
LONG_CONF = {"batch_size": 40, "workers": 1}


def _all_workers_up(stack: Stack) -> None:
    """Start again any worker an earlier test killed (as a container is started again)."""
    for name in WORKERS:
        if not any(p.name == name and p.process() is not None for p in stack.workers()):
            stack.restart_worker(name)


def _tree(worker: Proc) -> list[psutil.Process]:
    leader = psutil.Process(worker.pid)
    return [leader, *leader.children(recursive=True)]


def _start_long_run(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore, first: int
) -> tuple[list[str], str, str, int, dict[int, list[str]]]:
    _all_workers_up(stack)
    sandbox.clear_faults()
    sandbox.add_fault(endpoint="*", kind="latency", latency_ms=400)
    order_ids = load(stack, store, first, LONG_ORDERS)
    run_id = stack.api.trigger(LONG_CONF)
    victim, half_done, batches = _half_done_batch(stack, sandbox, run_id)
    return order_ids, run_id, victim, half_done, batches


def _assert_every_bill_once_and_none_sent_twice(
    sandbox: SandboxAdmin, store: OrderStore, order_ids: list[str]
) -> None:
    assert_each_bill_once(sandbox, order_ids)
    sent_twice = {o for o, s in sandbox.orders().items() if o in order_ids and s["attempts"] > 1}
    assert sent_twice == set(), "orders sent twice"
    rows = [store.get_row(o) for o in order_ids]
    assert {r["status"] for r in rows} == {"inserted"}
    assert all(r["code"] and r["openid"] for r in rows), "a bill's code was lost"


def test_a_deploy_stops_a_workers_batches_cleanly_and_they_finish_on_the_other(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore
):
    """`docker compose stop airflow-worker` (or `up -d` with a new image), as the compose file
    has it: SIGTERM to the container's processes (to the whole process group, or to Celery's
    main process only, as its DUMB_INIT_SETSID says), SIGKILL to all after its
    stop_grace_period. The worker's batches stop before the SIGKILL, their calls in flight
    recorded, and are retried on the other worker: nothing sent twice, no code lost."""
    compose = interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), example_env())
    whole_group, grace_s = worker_stop(compose)
    order_ids, run_id, victim, _, batches = _start_long_run(stack, sandbox, store, 20_000)
    survivor = next(w for w in WORKERS if w != victim)
    lost = [t["map_index"] for t in running_batches(tis(stack, run_id)) if t["hostname"] == victim]
    worker = next(p for p in stack.workers() if p.name == victim and p.process() is not None)
    tree = _tree(worker)
    stopped_at = time.monotonic()
    if whole_group:  # the stack's worker leads its session and group, as under dumb-init
        os.killpg(worker.pid, signal.SIGTERM)
    else:
        os.kill(worker.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:  # Docker's SIGKILL to everything left in the container
        with contextlib.suppress(psutil.Error):
            process.kill()
    print(f"{victim} stopped in {time.monotonic() - stopped_at:.1f} s; {len(alive)} SIGKILLed")
    assert alive == [], f"the stop's SIGKILL came after {grace_s} s and cut the batches"

    run = stack.api.wait_run(run_id, timeout=400)
    instances = tis(stack, run_id)
    assert run["state"] == "success", {k: t["state"] for k, t in instances.items()}
    for m in lost:
        ti = instances[(ISSUE, m)]
        assert (ti["state"], ti["hostname"]) == ("success", survivor), m
    _assert_every_bill_once_and_none_sent_twice(sandbox, store, order_ids)
    assert set(batches) == {m for (task, m) in instances if task == ISSUE}


@pytest.mark.parametrize("killed", ["pool process", "main process"])
def test_a_task_whose_supervisor_died_stops_itself_and_the_next_try_takes_over(
    stack: Stack, sandbox: SandboxAdmin, store: OrderStore, killed: str
):
    """SIGKILL mid-batch to the Celery pool process that supervises a batch's task process,
    or to the worker's main process (Celery has its pool processes killed with it): Airflow
    fails that try (at once, or after the heartbeat timeout); the task process, orphaned, sends
    nothing more within seconds, records its call in flight and ends its hold, so that the next
    try works on the rest without waiting. Every bill in WeChat once, none sent twice, the run
    green."""
    first = 30_000 if killed == "pool process" else 40_000
    order_ids, run_id, victim, half_done, batches = _start_long_run(stack, sandbox, store, first)
    batch = set(batches[half_done])
    ti_id = tis(stack, run_id)[(ISSUE, half_done)]["id"]
    worker = next(p for p in stack.workers() if p.name == victim and p.process() is not None)
    # The task process's title (Airflow's task runner sets it); its supervisor's names the id too.
    title = f"airflow worker -- {ti_id}"
    task = next(p for p in _tree(worker) if command_of(p).startswith(title))
    supervisor = task.parent()
    assert supervisor is not None and supervisor.pid != worker.pid
    if killed == "pool process":
        supervisor.kill()
    else:
        os.kill(worker.pid, signal.SIGKILL)
    billed_at_kill = len(batch & {b["order_id"] for b in sandbox.bills()})
    killed_at = time.monotonic()
    _, alive = psutil.wait_procs([task], timeout=30)
    billed_at_exit = len(batch & {b["order_id"] for b in sandbox.bills()})
    print(
        f"the orphaned task process ended {time.monotonic() - killed_at:.1f} s after its "
        f"supervisor; the batch's bills at WeChat: {billed_at_kill} at the kill, "
        f"{billed_at_exit} when it ended, of {len(batch)}"
    )
    if alive:
        task.kill()
    assert alive == [], "the orphaned task process went on with its batch"
    # At most the insert in flight when the supervisor died and those started before the
    # batch's next look at its parent (every second; an insert starts every 0.8 s here).
    assert billed_at_exit - billed_at_kill <= 3

    run = stack.api.wait_run(run_id, timeout=400)
    instances = tis(stack, run_id)
    assert run["state"] == "success", {k: t["state"] for k, t in instances.items()}
    ti = instances[(ISSUE, half_done)]
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ISSUE}/{half_done}/tries"
    assert stack.api.get(f"{base}/1")["state"] == "failed"
    retry_log = stack.api.log_text(run_id, ISSUE, 2, map_index=half_done)
    assert "already_done" in retry_log
    assert "earlier_try" not in retry_log, "the retry waited for the orphan's hold"
    _assert_every_bill_once_and_none_sent_twice(sandbox, store, order_ids)
