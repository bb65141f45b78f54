"""`Stack`: the local Airflow of `make up` started (each part in its order, waiting until it is
healthy) and stopped again; `stop_stack`, the stop of a recorded stack from any process."""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from nontax_dev.airflow_api import DAG_ID, AirflowApi
from nontax_dev.airflow_run import AIRFLOW, NONTAX, sandbox_connection
from nontax_dev.pg import describe_dsn, with_dbname
from nontax_dev.receiver_process import CallbackSecrets
from nontax_dev.stack import StackError, celery_workers
from nontax_dev.stack.config import CALLBACK_CONN_ENV, StackConfig, port_in_use
from nontax_dev.stack.databases import choose_server, drop_and_stop, make_databases
from nontax_dev.stack.environment import (
    ADMIN_USER,
    airflow_processes_env,
    receiver_env,
    sandbox_env,
)
from nontax_dev.stack.health import (
    airflow_healthy,
    api_answers,
    dag_parsed,
    receiver_answers,
    wait_until,
)
from nontax_dev.stack.processes import (
    Proc,
    finish,
    run_in_background,
    spawn,
    stack_processes,
    stop_processes,
)
from nontax_dev.stack.records import Secrets, StackState, private_dir, write_private
from wechat_nontax.settings import RECEIVER_PATH
from wechat_sandbox.client import DEFAULT_APPID, SandboxAdmin
from wechat_sandbox.process import StoppedOnExit, free_port

# Started in this order, stopped in the reverse one.
AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor", "triggerer")
# Airflow 3.3's own log servers (scheduler, triggerer) listen on every interface, with no
# setting for the host: they are skipped, and this one, the same app, serves the task and
# trigger logs of the shared log folder on loopback only.
LOG_SERVER = [
    sys.executable, "-m", "uvicorn", "--factory", "airflow.utils.serve_logs.log_server:get_app",
    "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning",
]  # fmt: skip


class Stack(StoppedOnExit):
    """The local Airflow of `make up`; `with Stack(config) as stack:` starts it and always stops
    it again, also when the body (or the start itself) fails."""

    def __init__(
        self, config: StackConfig | None = None, say: Callable[[str], None] | None = None
    ) -> None:
        self.config = config or StackConfig()
        self.say = say or (lambda text: None)
        self.state: StackState | None = None
        self.secrets: Secrets | None = None
        self.env: dict[str, str] = {}
        self.orders_dsn: str | None = None
        self.sandbox_url: str | None = None
        # The sandbox's admin token, new at every `up`; the tokens it issues are listed in
        # <state>/sandbox-tokens (0600) for the tests that scan logs for them.
        self.sandbox_admin_token = secrets.token_urlsafe(24)
        self._api: AirflowApi | None = None
        self.started_in_s: float | None = None

    # -- what tests use --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def password(self) -> str:
        assert self.secrets is not None
        return self.secrets.admin_password

    @property
    def api(self) -> AirflowApi:
        if self._api is None:
            self._api = AirflowApi(self.url, ADMIN_USER, self.password)
        return self._api

    @property
    def sandbox_tokens_file(self) -> Path:
        return self.config.state_dir / "sandbox-tokens"

    def sandbox_admin(self) -> SandboxAdmin:
        """A client of the stack's sandbox's admin API (its token, its issued tokens)."""
        assert self.sandbox_url is not None, "this stack talks to a real WeChat"
        return SandboxAdmin(
            self.sandbox_url,
            admin_token=self.sandbox_admin_token,
            tokens_file=str(self.sandbox_tokens_file),
        )

    @property
    def pdf_root(self) -> Path:
        return self.config.pdf_dir

    def processes(self) -> list:
        """The stack's live processes (leaders, descendants, marked ones)."""
        if self.state is None:
            return []
        return stack_processes(self.state.stack_id, self.state.procs)

    # -- up --------------------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self.up()

    def up(self) -> Stack:
        """Start everything and wait until it is healthy; on failure stop it all and raise."""
        started = time.monotonic()
        cfg = self.config
        private_dir(cfg.state_dir)
        cfg.logs.mkdir(parents=True, exist_ok=True)
        cfg.home.mkdir(parents=True, exist_ok=True)
        previous = StackState.load(cfg.state_file)
        if previous is not None and any(p.process() for p in previous.procs):
            raise StackError(
                f"a stack started from {cfg.state_dir} is still running: stop it first "
                f"(`make down`, or python -m nontax_dev.stack down --state-dir {cfg.state_dir})"
            )
        for variable, port in cfg.listening_ports().items():
            if port_in_use(port):
                raise StackError(
                    f"port {port} is in use: another `make up` (stop it with `make down`), or "
                    f"something else (start on another port: {variable}={port + 1} make up)"
                )
        self.secrets = Secrets.load_or_create(cfg.secrets_file)
        self.state = StackState(
            stack_id=uuid.uuid4().hex,
            url=cfg.url,
            state_dir=str(cfg.state_dir),
            drop_databases_on_down=cfg.drop_databases_on_down,
        )
        self._save()
        try:
            self._up(started)
        except BaseException:
            self.down()
            raise
        self.state.status = "up"
        self._save()
        self.started_in_s = round(time.monotonic() - started, 1)
        return self

    def _save(self) -> None:
        assert self.state is not None
        self.state.save(self.config.state_file)

    def _up(self, started: float) -> None:
        cfg, state = self.config, self.state
        assert state is not None and self.secrets is not None

        # 1. Postgres: the metadata database and the order database.
        server = choose_server(cfg, self.say, self._started_embedded)
        if cfg.drop_databases_on_down:
            state.pg_server = server  # kept (with any password) only to drop them again
        names = [cfg.meta_db_name, *(() if cfg.orders_db else (cfg.orders_db_name,))]
        make_databases(server, names, fresh=cfg.fresh_databases, created=state.created_databases)
        self._save()
        meta_dsn = with_dbname(server, cfg.meta_db_name)
        self.orders_dsn = cfg.orders_db or with_dbname(server, cfg.orders_db_name)
        state.meta_db = describe_dsn(meta_dsn)
        state.orders_db = describe_dsn(self.orders_dsn)

        # 2. The sandbox, unless a WeChat Connection is given.
        wechat = cfg.wechat_conn
        if wechat is None:
            port = cfg.sandbox_port or free_port()
            if port_in_use(port):
                raise StackError(
                    f"the sandbox port {port} is in use (`make sandbox` running?): stop it or "
                    f"set WECHAT_SANDBOX_PORT"
                )
            self.sandbox_url = f"http://127.0.0.1:{port}"
            state.sandbox_url = self.sandbox_url
            self._spawn(
                "sandbox",
                [
                    sys.executable,
                    "-m",
                    "wechat_sandbox",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=sandbox_env(state.stack_id, self.sandbox_admin_token, self.sandbox_tokens_file),
            )
            wechat = sandbox_connection(self.sandbox_url, **cfg.sandbox_extra)

        # 3. The environment every Airflow process shares (on Celery: with the broker's).
        if cfg.executor == "celery":
            self._choose_broker()
        cfg.pdf_dir.mkdir(parents=True, exist_ok=True)
        state.pdf_root = str(cfg.pdf_dir)
        self.env = airflow_processes_env(
            cfg, state, self.secrets, orders_dsn=self.orders_dsn, meta_dsn=meta_dsn, wechat=wechat
        )
        self._write_env_file()

        # 4. Migrate both databases (at once), then start Airflow and create the pool.
        self.say(f"migrating {state.meta_db} (airflow db migrate) and {state.orders_db}")
        migrations = [
            self._run_bg("db-migrate", [AIRFLOW, "db", "migrate"]),
            self._run_bg("orders-migrate", [NONTAX, "migrate"]),
        ]
        for name, popen in migrations:
            self._finish(name, popen, timeout=180)
        self._spawn_receiver()
        for name in AIRFLOW_PROCESSES:
            command = [AIRFLOW, name]
            if name == "api-server":
                command += ["--host", cfg.host, "--port", str(cfg.port)]
            if name in ("scheduler", "triggerer"):
                command.append("--skip-serve-logs")  # Airflow binds it to every interface
            self._spawn(name, command)
        self._spawn("log-server", [*LOG_SERVER, "--port", str(cfg.worker_log_port)])
        pool = self._run_bg(
            "pools-set", [AIRFLOW, "pools", "set", cfg.pool, str(cfg.pool_slots), "calls to WeChat"]
        )
        workers = self._spawn_workers()
        self.say(f"started {', '.join(AIRFLOW_PROCESSES)}; waiting until they are healthy")

        # 5. Wait until it is healthy.
        deadline = started + cfg.timeout_s
        self._wait("the API (/api/v2/version)", deadline, lambda: api_answers(self.api))
        self.say(f"the API answers on {cfg.url}")
        self._finish(*pool, timeout=max(10.0, deadline - time.monotonic()))
        self.say(f"pool {cfg.pool}: {cfg.pool_slots} slots")
        self._wait(f"the DAG {DAG_ID} to be parsed", deadline, lambda: dag_parsed(self.api))
        self.say(f"DAG {DAG_ID} parsed")
        self._wait(
            "scheduler, triggerer and dag-processor to be healthy",
            deadline,
            lambda: airflow_healthy(self.api),
        )
        self._wait("the receiver (/healthz)", deadline, self._receiver_ok)
        self.say(f"the receiver answers on {self.state.receiver_url}")
        self.say("scheduler, triggerer, dag-processor: healthy")
        if workers:
            self._wait("the Celery workers to consume", deadline, self._workers_ready)
            self.say(f"Celery workers consuming: {', '.join(p.name for p in workers)}")
        if cfg.unpause:
            self.api.set_paused(False)

    def _started_embedded(self, pgdata: Path) -> None:
        assert self.state is not None
        self.state.embedded_pgdata = str(pgdata)
        self._save()

    def _spawn_receiver(self) -> None:
        """The receiver of WeChat's events, with only the order DB and its own secrets."""
        assert self.state is not None and self.orders_dsn is not None
        cfg = self.config
        port = cfg.receiver_port or free_port()  # a fixed one was checked before anything started
        env = receiver_env(
            self.state.stack_id,
            orders_dsn=self.orders_dsn,
            callback_connection=self.callback_connection(),
            spool=cfg.state_dir / "receiver-spool",
        )
        host = "127.0.0.1"
        self._spawn("receiver", [NONTAX, "receiver", "--host", host, "--port", str(port)], env=env)
        self.state.receiver_url = f"http://{host}:{port}{RECEIVER_PATH}"
        self._save()
        self._write_env_file()

    def callback_connection(self) -> str:
        """The receiver's Connection: the unit's own, else secrets made once for this stack."""
        if self.config.callback_conn:
            return self.config.callback_conn
        # The sandbox's app, as the demo's orders name it (a unit's own comes in its Connection).
        secrets_file = self.config.state_dir / "callback.json"
        return CallbackSecrets.load_or_create(secrets_file, DEFAULT_APPID).connection()

    def _write_env_file(self) -> None:
        """`<state>/env.sh`: source it to point `make status`, `make load-orders`... here."""
        lines = [
            "# source this file: the tools (make status, attention, load-orders) then use the",
            "# order database and PDF root of the stack of `make up`",
            f"export AIRFLOW_CONN_NONTAX_ORDERS_DB='{self.env['AIRFLOW_CONN_NONTAX_ORDERS_DB']}'",
            f"export NONTAX_PDF_ROOT='{self.config.pdf_dir}'",
        ]
        if self.state is not None and self.state.receiver_url:
            lines.append(f"export NONTAX_STACK_RECEIVER_URL='{self.state.receiver_url}'")
            lines.append(f"export {CALLBACK_CONN_ENV}='{self.callback_connection()}'")
        if self.sandbox_url:
            lines.append(f"export NONTAX_STACK_SANDBOX_URL='{self.sandbox_url}'")
            lines.append(f"export NONTAX_STACK_SANDBOX_ADMIN_TOKEN='{self.sandbox_admin_token}'")
        write_private(self.config.state_dir / "env.sh", "\n".join(lines) + "\n")

    # -- the Celery workers ----------------------------------------------------------------------

    def _choose_broker(self) -> None:
        assert self.state is not None
        if not celery_workers.redis_answers(self.config.redis_url):
            raise StackError(
                f"no Redis answers at {celery_workers.describe_url(self.config.redis_url)} (the "
                "Celery broker): start one (Debian: apt-get install redis-server) or name "
                f"another in {celery_workers.REDIS_ENV}"
            )
        self.state.broker = self.config.redis_url
        self.state.broker_prefix = f"nontax-{self.state.stack_id[:12]}:"
        self._save()

    def _spawn_workers(self) -> list[Proc]:
        """On Celery: each worker in a session of its own, named after its "host"."""
        cfg = self.config
        if cfg.executor != "celery":
            return []
        return [self._spawn_worker(name) for name in celery_workers.worker_names(cfg.workers)]

    def _spawn_worker(self, name: str) -> Proc:
        return self._spawn(
            name,
            celery_workers.worker_command(AIRFLOW, name),
            env=celery_workers.worker_env(self.env, name),
        )

    def restart_worker(self, name: str) -> Proc:
        """Start a stopped or killed Celery worker again under its name (a container started
        again); returns once Celery says it consumes."""
        assert self.state is not None
        # The dead workers' records go: `_wait` stops at any recorded process that has exited.
        self.state.procs = [p for p in self.state.procs if p not in self.workers() or p.process()]
        if any(p.name == name for p in self.state.procs):
            raise StackError(f"{name} is still running")
        proc = self._spawn_worker(name)
        self._wait(
            f"{name} ready",
            time.monotonic() + self.config.timeout_s,
            lambda: celery_workers.worker_ready(Path(proc.log), name),
        )
        return proc

    def workers(self) -> list[Proc]:
        """The Celery workers started (none on LocalExecutor), alive or not."""
        return [p for p in self.state.procs if p.name.startswith("worker-")] if self.state else []

    def _workers_ready(self) -> bool:
        return all(celery_workers.worker_ready(Path(p.log), p.name) for p in self.workers())

    # -- the processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a long-running process in a session of its own and record it."""
        assert self.state is not None
        proc = spawn(name, command, env or self.env, self.config.logs / f"{name}.log")
        self.state.procs.append(proc)
        self._save()
        return proc

    def _run_bg(self, name: str, command: list[str]):
        return name, run_in_background(command, self.env, self.config.logs / f"{name}.log")

    def _finish(self, name: str, popen, timeout: float) -> None:
        finish(name, popen, self.config.logs / f"{name}.log", timeout)

    # -- waiting until it is healthy -------------------------------------------------------------

    def _wait(self, what: str, deadline: float, ready: Callable[[], bool]) -> None:
        assert self.state is not None
        wait_until(what, deadline, ready, self.state.procs, self.config.timeout_s)

    def _receiver_ok(self) -> bool:
        assert self.state is not None and self.state.receiver_url
        return receiver_answers(self.state.receiver_url)

    # -- down ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """The end of a `with`: down (what survived, `processes()` shows)."""
        self.down()

    def down(self) -> list[str]:
        """Stop everything this stack started; returns what survived (nothing, normally)."""
        if self._api is not None:
            self._api.close()
            self._api = None
        if self.state is None:
            self.state = StackState.load(self.config.state_file)
        if self.state is None:
            return []
        left = stop_stack(self.state, grace_s=self.config.grace_s, say=self.say)
        self.state.status = "down" if not left else "down with leftovers"
        self.state.procs = [] if not left else self.state.procs
        self._save()
        return left


def stop_stack(state: StackState, *, grace_s: float, say: Callable[[str], None]) -> list[str]:
    """SIGTERM every process group, wait, SIGKILL the rest; stop an embedded Postgres; drop
    the test databases; delete the broker's keys. Returns a description of every process still
    alive after that."""
    left = stop_processes(state.stack_id, state.procs, grace_s=grace_s, say=say)
    drop_and_stop(state)
    if state.broker and state.broker_prefix:
        with contextlib.suppress(Exception):
            celery_workers.delete_keys(state.broker, state.broker_prefix)
    return left
