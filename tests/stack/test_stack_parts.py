"""The parts of `nontax_dev.stack` that need no Airflow: addresses, configuration, and the
way `down` stops every process, also the ones that ignore SIGTERM or left the process group."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nontax_dev import pg
from nontax_dev.airflow_run import ROOT, orders_connection
from nontax_dev.stack import StackError
from nontax_dev.stack.cli import stop_command
from nontax_dev.stack.config import StackConfig
from nontax_dev.stack.databases import sqlalchemy_url
from nontax_dev.stack.processes import MARKER, Proc, command_of, stack_processes
from nontax_dev.stack.records import Secrets, StackState
from nontax_dev.stack.stack import Stack, stop_stack
from wechat_nontax.store.connection import dsn_from_env
from wechat_sandbox.process import free_port


def test_sqlalchemy_url_over_tcp_and_a_unix_socket():
    assert sqlalchemy_url("postgresql://postgres@127.0.0.1:5432/airflow_meta") == (
        "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow_meta"
    )
    assert sqlalchemy_url("postgresql://u:p%40ss%2Fw@db:6432/m?sslmode=require") == (
        "postgresql+psycopg2://u:p%40ss%2Fw@db:6432/m?sslmode=require"
    )
    assert sqlalchemy_url("postgresql://postgres@/airflow_meta?host=/run/pg dir") == (
        "postgresql+psycopg2://postgres@/airflow_meta?host=%2Frun%2Fpg+dir"
    )


def test_a_process_that_ended_reads_as_an_empty_command_line():
    code = "import sys; print(flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code, "marker"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    process = psutil.Process(child.pid)
    try:
        # its first line says it runs the interpreter: read before, the command line may still
        # be the forked parent's or empty while the child is between fork and exec
        child.stdout.readline()
        assert command_of(process).endswith(f"{code} marker")
        child.stdin.close()  # it exits; unreaped, it is a zombie whose command line is gone
        for _ in range(100):
            if process.status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        assert process.status() == psutil.STATUS_ZOMBIE
        assert command_of(process) == ""
    finally:
        child.kill()
        child.wait()


def test_the_orders_connection_reads_back_as_the_same_database(monkeypatch):
    dsn = "postgresql://nontax:s3cr%3At@db.internal:6432/nontax?sslmode=require"
    conn = json.loads(orders_connection(dsn))
    assert conn == {
        "conn_type": "postgres",
        "host": "db.internal",
        "port": 6432,
        "login": "nontax",
        "password": "s3cr:t",
        "schema": "nontax",
        "extra": {"sslmode": "require"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_NONTAX_ORDERS_DB", json.dumps(conn))
    assert "dbname=nontax" in dsn_from_env() and "password=s3cr:t" in dsn_from_env()
    assert pg.describe_dsn(dsn) == "nontax@db.internal:6432/nontax"  # never the password


def test_the_configuration_comes_from_the_environment(tmp_path: Path):
    cfg = StackConfig.from_env(
        {
            "NONTAX_STACK_DIR": str(tmp_path),
            "NONTAX_STACK_PORT": "8181",
            "NONTAX_STACK_PG": "postgresql://postgres@pg:5432/postgres",
            "NONTAX_STACK_PDF_ROOT": str(tmp_path / "pdfs"),
            "AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT": '{"conn_type": "http"}',
            "NONTAX_STACK_POOL_SLOTS": "6",
        }
    )
    assert (cfg.state_dir, cfg.port, cfg.pool_slots) == (tmp_path, 8181, 6)
    assert cfg.url == "http://127.0.0.1:8181"
    assert cfg.wechat_conn == '{"conn_type": "http"}'  # no sandbox then
    assert cfg.pdf_dir == (tmp_path / "pdfs").resolve()
    default = StackConfig.from_env({})
    assert (default.port, default.sandbox_port, default.wechat_conn) == (8080, 8765, None)
    assert default.state_dir == ROOT / ".run" / "stack"
    assert default.executor == "local"


def test_two_stacks_from_two_environments_listen_on_disjoint_ports(tmp_path: Path):
    """Every port `make up` opens moves with a variable, so two stacks run side by side."""
    first = StackConfig.from_env({})
    assert first.listening_ports() == {
        "NONTAX_STACK_PORT": 8080,
        "NONTAX_STACK_LOG_PORT": 8793,
        "NONTAX_STACK_HEALTH_PORT": 8974,
        "NONTAX_RECEIVER_PORT": 8770,
    }
    second = StackConfig.from_env(
        {
            "NONTAX_STACK_DIR": str(tmp_path / "second"),
            "NONTAX_STACK_PORT": "8081",
            "NONTAX_STACK_LOG_PORT": "8794",
            "NONTAX_STACK_HEALTH_PORT": "8975",
            "WECHAT_SANDBOX_PORT": "8766",
            "NONTAX_RECEIVER_PORT": "8771",
            "NONTAX_STACK_META_DB": "airflow_meta2",
            "NONTAX_STACK_ORDERS_DB_NAME": "nontax2",
        }
    )
    assert (first.meta_db_name, first.orders_db_name) == ("airflow_meta", "nontax")
    assert (second.meta_db_name, second.orders_db_name) == ("airflow_meta2", "nontax2")
    assert (second.port, second.worker_log_port, second.scheduler_health_port) == (8081, 8794, 8975)

    def ports(cfg: StackConfig) -> set[int]:
        return {*cfg.listening_ports().values(), cfg.sandbox_port, cfg.receiver_port}

    assert len(ports(first)) == len(ports(second)) == 5
    assert ports(first).isdisjoint(ports(second))


def test_a_stack_beside_the_default_one_says_how_to_stop_it(tmp_path: Path):
    assert stop_command(StackConfig.from_env({})) == "make down"
    beside = StackConfig.from_env({"NONTAX_STACK_DIR": str(tmp_path / "second")})
    assert stop_command(beside) == f"NONTAX_STACK_DIR={tmp_path / 'second'} make down"


@pytest.mark.parametrize("field", ["worker_log_port", "scheduler_health_port", "receiver_port"])
def test_up_refuses_a_busy_log_health_or_receiver_port_naming_its_variable(tmp_path: Path, field):
    variable = {"worker_log_port": "NONTAX_STACK_LOG_PORT",
                "scheduler_health_port": "NONTAX_STACK_HEALTH_PORT",
                "receiver_port": "NONTAX_RECEIVER_PORT"}[field]  # fmt: skip
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"port": free_port(), "worker_log_port": free_port(),
                 "scheduler_health_port": free_port(), field: port}  # fmt: skip
        config = StackConfig(state_dir=tmp_path, **ports)
        stack = Stack(config)
        with pytest.raises(StackError, match=f"port {port} is in use.*{variable}="):
            stack.up()
    assert stack.state is None


def test_fresh_databases_drop_what_an_earlier_stack_left(tmp_path: Path):
    """The benchmark's stacks start on empty databases, whatever an interrupted run left."""
    names = [f"airflow_meta_fresh_{os.getpid()}", f"nontax_fresh_{os.getpid()}"]
    orders = pg.with_dbname(pg.LOCAL_SERVER, names[1])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = StackConfig(
            state_dir=tmp_path, port=free_port(), pg_server=pg.LOCAL_SERVER,
            meta_db_name=names[0], orders_db_name=names[1], fresh_databases=True,
            sandbox_port=busy.getsockname()[1],  # `up` stops right after the databases
        )  # fmt: skip
        try:
            pg.ensure_database(pg.LOCAL_SERVER, names[1])
            pg.run_sql(orders, "CREATE TABLE left_behind (order_id text)")
            stack = Stack(config)
            with pytest.raises(StackError, match="sandbox port"):
                stack.up()
            assert stack.state is not None and stack.state.created_databases == names
            tables = pg.run_sql(
                orders, "SELECT count(*) FROM pg_tables WHERE tablename = 'left_behind'"
            )
            assert tables == [(0,)]
        finally:
            for name in names:
                pg.drop_database(pg.LOCAL_SERVER, name)


def test_the_celery_configuration_comes_from_the_environment():
    cfg = StackConfig.from_env(
        {
            "NONTAX_STACK_EXECUTOR": "celery",
            "NONTAX_STACK_WORKERS": "3",
            "NONTAX_WORKER_CONCURRENCY": "4",  # the compose file's variable
            "NONTAX_STACK_REDIS_URL": "redis://127.0.0.1:6380/2",
        }
    )
    assert (cfg.executor, cfg.workers, cfg.worker_concurrency) == ("celery", 3, 4)
    assert cfg.redis_url == "redis://127.0.0.1:6380/2"
    # A database of its own on the local server, not the 0 everything else uses by default.
    assert StackConfig.from_env({}).redis_url == "redis://127.0.0.1:6379/3"
    with pytest.raises(ValueError, match="local or celery"):
        StackConfig(executor="kubernetes")


def test_make_up_takes_the_executor_and_the_number_of_workers():
    """`make up EXECUTOR=celery WORKERS=3` is the Celery stack of three workers; `make up` alone
    the LocalExecutor one."""
    env = {k: v for k, v in os.environ.items() if k not in ("EXECUTOR", "WORKERS")}

    def dry_run(*args: str) -> str:
        done = subprocess.run(
            ["make", "-n", "-W", ".venv/.installed-stamp", "up", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout

    celery = dry_run("EXECUTOR=celery", "WORKERS=3")
    assert "NONTAX_STACK_EXECUTOR=celery" in celery and "NONTAX_STACK_WORKERS=3" in celery
    assert "NONTAX_STACK_EXECUTOR=local" in dry_run()


def test_a_celery_stack_without_redis_stops_before_starting_airflow(tmp_path: Path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens on it
    config = StackConfig(
        state_dir=tmp_path, port=free_port(), sandbox_port=None, executor="celery",
        redis_url=f"redis://127.0.0.1:{port}/0", pg_server=pg.LOCAL_SERVER,
        meta_db_name=f"airflow_meta_noredis_{os.getpid()}", drop_databases_on_down=True,
        orders_db_name=f"nontax_noredis_{os.getpid()}",
    )  # fmt: skip
    stack = Stack(config)
    with pytest.raises(StackError, match=f"no Redis answers at redis://127.0.0.1:{port}/0"):
        stack.up()
    assert stack.state is not None and stack.workers() == []
    assert stack.processes() == []  # the sandbox it had started is stopped again


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = Stack(StackConfig(state_dir=tmp_path, port=port))
        with pytest.raises(StackError, match=f"port {port} is in use"):
            stack.up()
    assert stack.state is None


def test_secret_files_are_private_from_their_creation_and_the_state_dir_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With umask 0 and no chmod after the fact, every file holding a secret is still 0600 and
    the state directory 0700: nothing is ever readable by others, not even for a moment."""
    old_umask = os.umask(0)
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)  # no narrowing afterwards
    try:
        state_dir = tmp_path / "state"
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            stack = Stack(StackConfig(state_dir=state_dir, port=busy.getsockname()[1]))
            with pytest.raises(StackError):
                stack.up()  # creates the state directory, then finds the port busy
        stack.env = {"AIRFLOW_CONN_NONTAX_ORDERS_DB": "postgresql://u:pw@db/nontax"}
        stack._write_env_file()
        Secrets.load_or_create(state_dir / "secrets.json")
        StackState(stack_id="x", url="", state_dir=str(state_dir)).save(state_dir / "s.json")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for name in ("env.sh", "secrets.json", "s.json"):
        assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name


# A leader that ignores SIGTERM, with a child that moved to a process group of its own (as
# Airflow's task processes do) and ignores SIGTERM too.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
    process_group=0)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_down_stops_groups_stubborn_processes_and_escaped_children(tmp_path: Path):
    state = StackState(stack_id="test-" + os.urandom(4).hex(), url="", state_dir=str(tmp_path))
    env = {**os.environ, MARKER: state.stack_id}
    polite = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], env=env, start_new_session=True
    )
    stubborn = subprocess.Popen(
        [sys.executable, "-c", STUBBORN],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    escaped = int(stubborn.stdout.readline())
    assert os.getpgid(escaped) == escaped != stubborn.pid
    for name, popen in (("polite", polite), ("stubborn", stubborn)):
        created = psutil.Process(popen.pid).create_time()
        state.procs.append(Proc(name, popen.pid, created, str(tmp_path / f"{name}.log")))
    found = {p.pid for p in stack_processes(state.stack_id, state.procs)}
    assert {polite.pid, stubborn.pid, escaped} <= found

    messages: list[str] = []
    started = time.monotonic()
    left = stop_stack(state, grace_s=1.0, say=messages.append)
    assert left == []
    assert time.monotonic() - started < 15
    assert any("SIGKILL" in m for m in messages)
    polite.wait(5)
    stubborn.wait(5)
    assert not psutil.pid_exists(escaped) or psutil.Process(escaped).status() == "zombie"
    assert stack_processes(state.stack_id, state.procs) == []


def test_status_and_down_without_a_stack(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    base = [sys.executable, "-m", "nontax_dev.stack"]
    status = subprocess.run(
        [*base, "status", "--state-dir", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert status.returncode == 1 and "no stack running" in status.stdout
    down = subprocess.run(
        [*base, "down", "--state-dir", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert down.returncode == 0 and "nothing to stop" in down.stdout


def test_a_celery_worker_is_ready_by_its_log_since_its_last_start(tmp_path: Path):
    from nontax_dev.stack.celery_workers import worker_ready

    log = tmp_path / "worker-1.log"
    assert not worker_ready(log, "worker-1")  # no log yet
    log.write_text("\n=== 10:00 airflow celery worker\n[...] celery@worker-1 ready.\n")
    assert worker_ready(log, "worker-1")
    assert not worker_ready(log, "worker-2")
    with log.open("a") as out:  # started again: the old line does not count
        out.write("\n=== 11:00 airflow celery worker\n[...] Connected to redis://\n")
    assert not worker_ready(log, "worker-1")


def test_a_broker_url_is_shown_without_its_password():
    from nontax_dev.stack.celery_workers import describe_url

    assert describe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert describe_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert describe_url("rediss://user:s3cret@redis/1") == "rediss://user:***@redis/1"
