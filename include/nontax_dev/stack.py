"""`make up` / `make down`: the whole local Airflow for this project, in the background.

    python -m nontax_dev.stack up       start it and return once it is healthy
    python -m nontax_dev.stack status   what runs, and whether Airflow says it is healthy
    python -m nontax_dev.stack down     stop every process it started, and check none is left

What `up` starts, each process in a session (and so a process group) of its own, its pid and
start time recorded under the state directory (default `.run/stack/`: `stack.json`, `logs/`,
the AIRFLOW_HOME `airflow/`, `secrets.json`):
- Postgres: the server in NONTAX_STACK_PG (a libpq URI of a server where databases may be
  created), else the one on 127.0.0.1:5432 when it lets user postgres in, else an embedded one
  (the pgserver package, data in `<state>/pgdata`, stopped by `down`). Airflow's metadata
  database is `airflow_meta` there (NONTAX_STACK_META_DB names another), the order database
  `nontax` (NONTAX_STACK_ORDERS_DB_NAME names another there; NONTAX_STACK_ORDERS_DB, a libpq URI,
  one elsewhere, which must exist); those on the server are created when missing; both are
  migrated (`airflow db migrate`, `nontax migrate`), never dropped.
- The WeChat sandbox on WECHAT_SANDBOX_PORT (8765), unless AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT
  is set: then the DAG talks to that.
- The receiver of WeChat's events (`nontax receiver`) on NONTAX_RECEIVER_PORT (8770), its
  spool in `<state>/receiver-spool`, its callback token and EncodingAESKey generated once per
  state directory (`<state>/callback.json`) unless AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK names
  the unit's own; `<state>/env.sh` exports its URL and that Connection for the sandbox's pusher.
- `airflow api-server` (NONTAX_STACK_PORT, default 8080), `scheduler` (LocalExecutor; its
  health check on NONTAX_STACK_HEALTH_PORT, default 8974), `dag-processor`, `triggerer`, and
  one log server for the task and trigger logs (NONTAX_STACK_LOG_PORT, default 8793), all on
  loopback and with the same environment: the project's folders on
  PYTHONPATH, the Connections as AIRFLOW_CONN_... variables, one JWT secret, API secret key and
  Fernet key generated once per state directory, SimpleAuthManager with the user `admin` and a
  password generated once (printed; also in `<state>/airflow/simple_auth_manager_passwords.json`).
- The pool `wechat_nontax` (`airflow pools set`, NONTAX_STACK_POOL_SLOTS slots, default 4).
`up` returns when the API answers, the scheduler, triggerer and dag-processor report healthy
and the DAG is parsed; then it unpauses the DAG (and `make up` the frequent DAGs
`nontax_requests` and `nontax_waiting`). With catchup=False the scheduler then starts
the latest scheduled run at once if the DAG never ran in this metadata database.

`down` sends SIGTERM to each process group, waits (NONTAX_STACK_GRACE_S, default 20 s), then
SIGKILLs what is left: the groups, their descendants, and any process carrying this stack's
marker in its environment (task processes run in process groups of their own).

On CeleryExecutor (`make up EXECUTOR=celery WORKERS=2`: NONTAX_STACK_EXECUTOR=celery): the same,
plus NONTAX_STACK_WORKERS (2) `airflow celery worker` processes, worker-1, worker-2..., each
running NONTAX_WORKER_CONCURRENCY (8) tasks at once, on the Redis in NONTAX_STACK_REDIS_URL
(default redis://127.0.0.1:6379/3); the Celery settings are the compose file's (see
nontax_dev.celery_workers). `up` also waits until every
worker consumes; `down` also deletes the stack's keys in Redis.

Two stacks run side by side on one machine when each has its own state directory, ports and
databases, for example:

    NONTAX_STACK_DIR=.run/stack2 NONTAX_STACK_PORT=8081 NONTAX_STACK_HEALTH_PORT=8975 \
    NONTAX_STACK_LOG_PORT=8794 WECHAT_SANDBOX_PORT=8766 NONTAX_RECEIVER_PORT=8771 \
    NONTAX_STACK_META_DB=airflow_meta2 \
    NONTAX_STACK_ORDERS_DB_NAME=nontax2 make up

`up` refuses to start when any of its ports is in use, naming the variable that moves it.

Tests use the same code through `Stack(StackConfig(...))`, a context manager that always stops
what it started (see tests/stack/).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import requests

from nontax_dev import celery_workers
from nontax_dev.airflow_api import DAG_ID, AirflowApi, AirflowApiError
from nontax_dev.airflow_run import (
    AIRFLOW,
    NONTAX,
    REQUESTS_DAG_ID,
    ROOT,
    WAITING_DAG_ID,
    airflow_env,
    orders_connection,
    sandbox_connection,
)
from nontax_dev.pg import (
    LOCAL_SERVER,
    describe_dsn,
    drop_database,
    ensure_database,
    server_answers,
    with_dbname,
)
from nontax_dev.receiver_process import CallbackSecrets
from wechat_nontax.observability.metrics import statsd_config
from wechat_nontax.settings import (
    CALLBACK_CONN_ID,
    DEFAULT_RECEIVER_PORT,
    RECEIVER_PATH,
    RECEIVER_PORT_ENV,
    RECEIVER_SPOOL_ENV,
)
from wechat_sandbox.client import DEFAULT_APPID, SandboxAdmin
from wechat_sandbox.config import ENV_ADMIN_TOKEN, ENV_TOKENS_FILE
from wechat_sandbox.process import free_port

DEFAULT_STATE_DIR = ROOT / ".run" / "stack"
ADMIN_USER = "admin"
MARKER = "NONTAX_STACK_ID"
CALLBACK_CONN_ENV = f"AIRFLOW_CONN_{CALLBACK_CONN_ID.upper()}"
# Started in this order, stopped in the reverse one.
AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor", "triggerer")
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
# The LocalExecutor's workers forked from a forkserver that imported what the tasks import, so
# that no task process imports it again (wechat_nontax/preload.py; Celery's workers have the
# same from docker/airflow-celery.env).
LOCAL_EXECUTOR_PRELOAD = {
    "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
    "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": "wechat_nontax.preload",
}
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
# Airflow 3.3's own log servers (scheduler, triggerer) listen on every interface, with no
# setting for the host: they are skipped, and this one, the same app, serves the task and
# trigger logs of the shared log folder on loopback only.
LOG_SERVER = [
    sys.executable, "-m", "uvicorn", "--factory", "airflow.utils.serve_logs.log_server:get_app",
    "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning",
]  # fmt: skip


class StackError(RuntimeError):
    """The stack could not be started (the message says why and where the logs are)."""


# -- configuration -------------------------------------------------------------------------------


@dataclass
class StackConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    host: str = "127.0.0.1"
    port: int = 8080
    pg_server: str | None = None  # libpq URI of a server where we may create databases
    force_embedded: bool = False  # skip the local server, use pgserver
    meta_db_name: str = "airflow_meta"
    orders_db: str | None = None  # libpq URI of the order database (wins over orders_db_name)
    orders_db_name: str = "nontax"
    wechat_conn: str | None = None  # Airflow Connection (URI or JSON); None: the sandbox
    # The sandbox Connection's extra: the compose file's (token mode, the calls' timeout in s).
    sandbox_extra: dict[str, Any] = field(
        default_factory=lambda: {"token_mode": "stable_token", "timeout": 15}
    )
    sandbox_port: int | None = 8765  # None: a free port
    receiver_port: int | None = None  # None: a free port (`make up`: NONTAX_RECEIVER_PORT)
    callback_conn: str | None = None  # the receiver's Connection; None: generated secrets
    pdf_root: Path | None = None  # None: <state>/pdfs
    pool: str = "wechat_nontax"
    pool_slots: int = 4
    parallelism: int = 8
    # The one log server serves the triggerer's logs too (TRIGGER_LOG_SERVER_PORT is this).
    worker_log_port: int = 8793
    scheduler_health_port: int = 8974
    unpause: bool = True
    drop_databases_on_down: bool = False  # tests: drop the databases this stack created
    # The benchmark: drop the two databases at `up` when they exist (an interrupted run's), so
    # that a measured run never starts on orders an earlier one settled.
    fresh_databases: bool = False
    timeout_s: float = 240.0
    grace_s: float = 20.0
    extra_env: dict[str, str] = field(default_factory=dict)
    executor: str = "local"  # or "celery"
    workers: int = 2  # Celery workers
    worker_concurrency: int = 8  # tasks at once per Celery worker
    redis_url: str = celery_workers.DEFAULT_REDIS

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StackConfig:
        env = dict(os.environ if environ is None else environ)

        def num(name: str, default: int) -> int:
            return int(env.get(name) or default)

        return cls(
            state_dir=Path(env.get("NONTAX_STACK_DIR") or DEFAULT_STATE_DIR),
            host=env.get("NONTAX_STACK_HOST") or "127.0.0.1",
            port=num("NONTAX_STACK_PORT", 8080),
            pg_server=env.get("NONTAX_STACK_PG") or None,
            force_embedded=_truthy(env.get("NONTAX_STACK_FORCE_EMBEDDED")),
            meta_db_name=env.get("NONTAX_STACK_META_DB") or "airflow_meta",
            orders_db=env.get("NONTAX_STACK_ORDERS_DB") or None,
            orders_db_name=env.get("NONTAX_STACK_ORDERS_DB_NAME") or "nontax",
            wechat_conn=env.get("AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT") or None,
            sandbox_port=num("WECHAT_SANDBOX_PORT", 8765),
            receiver_port=num(RECEIVER_PORT_ENV, DEFAULT_RECEIVER_PORT),
            callback_conn=env.get(CALLBACK_CONN_ENV) or None,
            worker_log_port=num("NONTAX_STACK_LOG_PORT", 8793),
            scheduler_health_port=num("NONTAX_STACK_HEALTH_PORT", 8974),
            pdf_root=Path(env["NONTAX_STACK_PDF_ROOT"])
            if env.get("NONTAX_STACK_PDF_ROOT")
            else None,
            pool=env.get("NONTAX_WECHAT_POOL") or "wechat_nontax",
            pool_slots=num("NONTAX_STACK_POOL_SLOTS", 4),
            parallelism=num("NONTAX_STACK_PARALLELISM", 8),
            grace_s=float(env.get("NONTAX_STACK_GRACE_S") or 20),
            executor=env.get("NONTAX_STACK_EXECUTOR") or "local",
            workers=num("NONTAX_STACK_WORKERS", 2),
            worker_concurrency=num("NONTAX_WORKER_CONCURRENCY", 8),
            redis_url=env.get(celery_workers.REDIS_ENV) or celery_workers.DEFAULT_REDIS,
            # The pipeline's metrics to a StatsD server (`make up STATSD=127.0.0.1:9125`).
            extra_env=statsd_config(env["NONTAX_STACK_STATSD"])
            if env.get("NONTAX_STACK_STATSD")
            else {},
        )

    def __post_init__(self) -> None:
        if self.executor not in ("local", "celery"):
            raise ValueError(f"executor {self.executor!r}: local or celery")

    def listening_ports(self) -> dict[str, int]:
        """The ports the stack's Airflow and its receiver listen on, by the variable that moves
        each (the sandbox's, WECHAT_SANDBOX_PORT, is checked where the sandbox starts; a free
        receiver port, None, needs no check)."""
        ports = {
            "NONTAX_STACK_PORT": self.port,
            "NONTAX_STACK_LOG_PORT": self.worker_log_port,
            "NONTAX_STACK_HEALTH_PORT": self.scheduler_health_port,
        }
        if self.receiver_port:
            ports[RECEIVER_PORT_ENV] = self.receiver_port
        return ports

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def pdf_dir(self) -> Path:
        return (self.pdf_root or self.state_dir / "pdfs").resolve()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


# -- small helpers -------------------------------------------------------------------------------


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _parse_dsn(dsn: str) -> dict[str, str]:
    import psycopg2.extensions

    return dict(psycopg2.extensions.parse_dsn(dsn))


def sqlalchemy_url(dsn: str) -> str:
    """Airflow's `sql_alchemy_conn` (psycopg2) for a libpq DSN, Unix sockets included."""
    parts = _parse_dsn(dsn)
    auth = quote(parts.pop("user", None) or "postgres", safe="")
    if password := parts.pop("password", None):
        auth += ":" + quote(password, safe="")
    host = parts.pop("host", None) or "127.0.0.1"
    port = parts.pop("port", None) or "5432"
    dbname = parts.pop("dbname", None) or "postgres"
    query = dict(parts)
    if host.startswith("/"):
        query["host"] = host
        netloc = f"{auth}@"
    else:
        netloc = f"{auth}@{host}:{port}"
    suffix = f"?{urlencode(query)}" if query else ""
    return f"postgresql+psycopg2://{netloc}/{quote(dbname, safe='')}{suffix}"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# -- process bookkeeping -----------------------------------------------------------------------


@dataclass
class Proc:
    """A process the stack started: the leader of its own session and process group."""

    name: str
    pid: int
    create_time: float
    log: str

    def process(self):
        """The live psutil.Process, or None when it is gone (or the pid was reused)."""
        import psutil

        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 1.0 or p.status() == "zombie":
                return None
            return p
        except psutil.Error:
            return None


def _marked(stack_id: str) -> list:
    """Every live process whose environment carries this stack's marker."""
    import psutil

    found = []
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.status() == "zombie":
                continue
            environ = p.environ()
        except psutil.Error:
            continue
        if environ.get(MARKER) == stack_id:
            found.append(p)
    return found


def stack_processes(stack_id: str, procs: list[Proc]) -> list:
    """The live processes of a stack: its leaders, their descendants, and every marked one."""
    import psutil

    seen: dict[int, Any] = {}
    for proc in procs:
        leader = proc.process()
        if leader is None:
            continue
        seen[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            for child in leader.children(recursive=True):
                seen.setdefault(child.pid, child)
    for p in _marked(stack_id):
        seen.setdefault(p.pid, p)
    return [p for p in seen.values() if _alive(p)]


def _signal_all(processes: list, procs: list[Proc], sig: int) -> None:
    """Signal each live leader's process group, then every other process once: a second
    SIGTERM while the scheduler shuts its LocalExecutor down makes it hang."""
    import psutil

    groups = set()
    for proc in procs:
        if proc.process() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
                groups.add(proc.pid)
    for p in processes:
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if sig == signal.SIGTERM and os.getpgid(p.pid) in groups:
                continue
            p.send_signal(sig)


# -- the stack -----------------------------------------------------------------------------------


@dataclass
class StackState:
    """What `stack.json` records about a stack: enough for `down` from another process."""

    stack_id: str
    url: str
    state_dir: str
    procs: list[Proc] = field(default_factory=list)
    pg_server: str | None = None  # admin DSN of the server used (no password stored if none)
    embedded_pgdata: str | None = None  # set when the stack started an embedded server
    created_databases: list[str] = field(default_factory=list)
    drop_databases_on_down: bool = False
    sandbox_url: str | None = None
    receiver_url: str | None = None  # the callback URL of the stack's receiver
    orders_db: str | None = None  # described, never with a password
    meta_db: str | None = None
    pdf_root: str | None = None
    status: str = "starting"
    broker: str | None = None  # Celery: the Redis server, and the prefix of the stack's keys
    broker_prefix: str | None = None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        write_private(tmp, json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data["procs"] = [Proc(**p) for p in data.get("procs", [])]
        return cls(**data)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, 0600 from the moment it exists (a write, then a
    chmod, leaves it readable by everyone in between; an old file keeps its mode on truncate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def private_dir(path: Path) -> None:
    """The stack's state directory: secrets, logs and Airflow's home, for its owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


@dataclass
class Secrets:
    jwt_secret: str
    api_secret_key: str
    fernet_key: str
    admin_password: str

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        """Generated once per state directory, then reused by every `up` of it."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"
        made = cls(
            jwt_secret=secrets.token_urlsafe(48),
            api_secret_key=secrets.token_urlsafe(48),
            fernet_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
            admin_password="".join(secrets.choice(alphabet) for _ in range(16)),
        )
        write_private(path, json.dumps(asdict(made)))
        return made


class Stack:
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
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

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
        self.secrets = Secrets.load_or_create(cfg.state_dir / "secrets.json")
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
        server = self._choose_server()
        if cfg.drop_databases_on_down:
            state.pg_server = server  # kept (with any password) only to drop them again
        for name in (cfg.meta_db_name, *(() if cfg.orders_db else (cfg.orders_db_name,))):
            if cfg.fresh_databases:
                drop_database(server, name)
            if ensure_database(server, name):
                state.created_databases.append(name)
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
            )
            wechat = sandbox_connection(self.sandbox_url, **cfg.sandbox_extra)

        # 3. The environment every Airflow process shares (on Celery: with the broker's).
        if cfg.executor == "celery":
            self._choose_broker()
        cfg.pdf_dir.mkdir(parents=True, exist_ok=True)
        state.pdf_root = str(cfg.pdf_dir)
        self.env = self._airflow_env(meta_dsn, wechat)
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
        self._wait("the API (/api/v2/version)", deadline, self._version_ok)
        self.say(f"the API answers on {cfg.url}")
        self._finish(*pool, timeout=max(10.0, deadline - time.monotonic()))
        self.say(f"pool {cfg.pool}: {cfg.pool_slots} slots")
        self._wait(f"the DAG {DAG_ID} to be parsed", deadline, self._dag_ok)
        self.say(f"DAG {DAG_ID} parsed")
        self._wait("scheduler, triggerer and dag-processor to be healthy", deadline, self._healthy)
        self._wait("the receiver (/healthz)", deadline, self._receiver_ok)
        self.say(f"the receiver answers on {self.state.receiver_url}")
        self.say("scheduler, triggerer, dag-processor: healthy")
        if workers:
            self._wait("the Celery workers to consume", deadline, self._workers_ready)
            self.say(f"Celery workers consuming: {', '.join(p.name for p in workers)}")
        if cfg.unpause:
            self.api.set_paused(False)

    def _spawn_receiver(self) -> None:
        """The receiver of WeChat's events, with only the order DB and its own secrets."""
        assert self.state is not None and self.orders_dsn is not None
        cfg = self.config
        port = cfg.receiver_port or free_port()  # a fixed one was checked before anything started
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
        env.update(
            {
                MARKER: self.state.stack_id,
                "AIRFLOW_CONN_NONTAX_ORDERS_DB": self.orders_dsn,
                CALLBACK_CONN_ENV: self.callback_connection(),
                RECEIVER_SPOOL_ENV: str(cfg.state_dir / "receiver-spool"),
                "PYTHONUNBUFFERED": "1",
            }
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

    def _receiver_ok(self) -> bool:
        assert self.state is not None and self.state.receiver_url
        health = self.state.receiver_url.replace(RECEIVER_PATH, "/healthz")
        with contextlib.suppress(requests.RequestException):
            return requests.get(health, timeout=3).status_code == 200
        return False

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

    def _choose_server(self) -> str:
        cfg = self.config
        if cfg.pg_server:
            if not server_answers(cfg.pg_server):
                raise StackError(f"no Postgres answers at {describe_dsn(cfg.pg_server)}")
            return cfg.pg_server
        if not cfg.force_embedded and server_answers(LOCAL_SERVER):
            return LOCAL_SERVER
        self.say("no Postgres on 127.0.0.1:5432 for user postgres: starting an embedded one")
        import warnings

        import pgserver

        pgdata = (cfg.state_dir / "pgdata").resolve()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            server = pgserver.get_server(pgdata, cleanup_mode=None)  # outlives this process
        assert self.state is not None
        self.state.embedded_pgdata = str(pgdata)
        self._save()
        socket_dir = str(server.get_postmaster_info().socket_dir)
        return f"postgresql://postgres@/postgres?host={quote(socket_dir, safe='/')}"

    def _airflow_env(self, meta_dsn: str, wechat: str) -> dict[str, str]:
        cfg = self.config
        assert self.secrets is not None and self.state is not None and self.orders_dsn
        # The caller's environment goes through (an AIRFLOW_CONN_NONTAX_NOTIFY, say); what the
        # stack sets below wins.
        env = airflow_env(
            cfg.home.resolve(),
            orders_db=orders_connection(self.orders_dsn),
            wechat_conn=wechat,
            pdf_root=str(cfg.pdf_dir),
        )
        passwords = cfg.home.resolve() / "simple_auth_manager_passwords.json"
        write_private(passwords, json.dumps({ADMIN_USER: self.secrets.admin_password}) + "\n")
        env.update(
            {
                MARKER: self.state.stack_id,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta_dsn),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
                "AIRFLOW__CORE__FERNET_KEY": self.secrets.fernet_key,
                "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                # As in the compose file; `up` unpauses the DAG itself (unless --keep-paused).
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": self.secrets.jwt_secret,
                "AIRFLOW__API__SECRET_KEY": self.secrets.api_secret_key,
                "AIRFLOW__API__BASE_URL": cfg.url,
                "AIRFLOW__API__HOST": cfg.host,
                "AIRFLOW__API__PORT": str(cfg.port),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.worker_log_port),
                # The one log server (LOG_SERVER) serves the triggerer's logs too.
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(cfg.worker_log_port),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(
                    cfg.scheduler_health_port
                ),
                "NONTAX_WECHAT_POOL": cfg.pool,
                "NONTAX_POOL_SLOTS": str(cfg.pool_slots),  # the DAG spreads a run over them
            }
        )
        if cfg.executor == "celery":
            assert self.state.broker and self.state.broker_prefix
            env.update(
                celery_workers.executor_env(
                    redis_url=self.state.broker,
                    key_prefix=self.state.broker_prefix,
                    result_backend=f"db+{sqlalchemy_url(meta_dsn)}",
                    concurrency=cfg.worker_concurrency,
                )
            )
        else:
            env.update(LOCAL_EXECUTOR_PRELOAD)
        env.update(cfg.extra_env)
        return env

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

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a long-running process in a session of its own and record it."""
        import psutil

        assert self.state is not None
        log = self.config.logs / f"{name}.log"
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                command,
                env=env or self.env or self._sandbox_env(),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        proc = Proc(name, popen.pid, create_time, str(log))
        self.state.procs.append(proc)
        self._save()
        return proc

    def _sandbox_env(self) -> dict[str, str]:
        # Only what the sandbox needs: the caller's environment may hold real credentials.
        assert self.state is not None
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("WECHAT_SANDBOX_")}
        env[MARKER] = self.state.stack_id
        env[ENV_ADMIN_TOKEN] = self.sandbox_admin_token
        env[ENV_TOKENS_FILE] = str(self.sandbox_tokens_file)
        env["PYTHONPATH"] = str(ROOT / "include")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _run_bg(self, name: str, command: list[str]) -> tuple[str, subprocess.Popen]:
        """A one-off command (migrate, pools set), output to its log, in its own group."""
        log = self.config.logs / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                command,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return name, popen

    def _finish(self, name: str, popen: subprocess.Popen, timeout: float) -> None:
        log = self.config.logs / f"{name}.log"
        try:
            code = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise StackError(
                f"{name} took longer than {timeout:.0f}s; {log}:\n{_tail(log)}"
            ) from None
        if code != 0:
            raise StackError(f"{name} failed (exit {code}); {log}:\n{_tail(log)}")

    def _wait(self, what: str, deadline: float, ready: Callable[[], bool]) -> None:
        assert self.state is not None
        while True:
            for proc in self.state.procs:
                if proc.process() is None:
                    raise StackError(
                        f"{proc.name} exited while waiting for {what}; {proc.log}:\n"
                        f"{_tail(Path(proc.log))}"
                    )
            try:
                if ready():
                    return
            except (OSError, AirflowApiError) as exc:
                last = str(exc)
            else:
                last = "not yet"
            if time.monotonic() > deadline:
                logs = "\n".join(f"  {p.log}" for p in self.state.procs)
                raise StackError(
                    f"timed out after {self.config.timeout_s:.0f}s waiting for {what} "
                    f"({last[:500]}); the logs:\n{logs}"
                )
            time.sleep(0.5)

    def _version_ok(self) -> bool:
        import requests

        try:
            self.api.version()
        except requests.RequestException:
            return False
        return True

    def _dag_ok(self) -> bool:
        import requests

        try:
            self.api.dag()
        except AirflowApiError as exc:
            if exc.status != 404:
                raise
            ours = [e for e in self.api.import_errors() if "nontax" in e.get("filename", "")]
            if ours:
                raise StackError(
                    f"the DAG file does not import: {ours[0]['stack_trace']}"
                ) from None
            return False
        except requests.RequestException:
            return False
        return True

    def _healthy(self) -> bool:
        health = self.api.health()
        return all((health.get(c) or {}).get("status") == "healthy" for c in HEALTH_COMPONENTS)

    # -- down ------------------------------------------------------------------------------------

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
    the test databases. Returns a description of every process still alive after that."""
    procs = state.procs
    processes = stack_processes(state.stack_id, procs)
    if processes:
        say(f"stopping {len(processes)} processes (SIGTERM, then SIGKILL after {grace_s:.0f}s)")
        _signal_all(processes, procs, signal.SIGTERM)
        alive = _wait_gone(processes, grace_s)
        # Whatever started meanwhile (a task process spawned late) is caught by the marker.
        alive += [p for p in stack_processes(state.stack_id, procs) if p not in alive]
        if alive:
            names = ", ".join(sorted({_name(p) for p in alive}))
            say(f"{len(alive)} processes still alive after {grace_s:.0f}s ({names}): SIGKILL")
            _signal_all(alive, procs, signal.SIGKILL)
            _wait_gone(alive, 10)
    left = [f"{p.pid} {_name(p)}" for p in stack_processes(state.stack_id, procs) if _alive(p)]
    if state.drop_databases_on_down and state.pg_server:
        for name in state.created_databases:
            with contextlib.suppress(Exception):
                drop_database(state.pg_server, name)
    if state.embedded_pgdata:
        _stop_embedded(Path(state.embedded_pgdata))
    if state.broker and state.broker_prefix:
        with contextlib.suppress(Exception):
            celery_workers.delete_keys(state.broker, state.broker_prefix)
    return left


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(p) -> str:
    import psutil

    try:
        return " ".join(p.cmdline())[:60] or p.name()
    except psutil.Error:
        return str(p.pid)


def _wait_gone(processes: list, timeout: float) -> list:
    """Wait until every process is gone (a zombie counts as gone); returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _stop_embedded(pgdata: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    user = "pgserver" if os.geteuid() == 0 else None
    with contextlib.suppress(Exception):
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)


# -- the command line ------------------------------------------------------------------------------


def _rel(path: Path | str) -> str:
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def _is_up(state: StackState | None) -> bool:
    return bool(state and state.status == "up" and all(p.process() for p in state.procs))


def describe(stack: Stack) -> str:
    cfg, state = stack.config, stack.state
    assert state is not None
    passwords = cfg.home / "simple_auth_manager_passwords.json"
    unpaused = " (unpaused: the latest scheduled run starts at once if it never ran)"
    on = ", unpaused" if cfg.unpause else ""
    embedded = f" (embedded Postgres, data in {_rel(state.embedded_pgdata or '')})"
    wechat = f"{state.sandbox_url} (the sandbox)" if state.sandbox_url else "your Connection"
    lines = [
        f"  UI and API   {cfg.url}",
        f"  login        {ADMIN_USER} / {stack.password}   (also in {_rel(passwords)})",
        f"  DAG          {DAG_ID}{unpaused if cfg.unpause else ''}",
        f"               {REQUESTS_DAG_ID} (refusals and voids){on}",
        f"               {WAITING_DAG_ID} (waiting orders, once authorised){on}",
        f"  order DB     {state.orders_db}   (the tools: source {_rel(cfg.state_dir / 'env.sh')})",
        f"  metadata DB  {state.meta_db}{embedded if state.embedded_pgdata else ''}",
        f"  WeChat       {wechat}",
        f"  receiver     {state.receiver_url} (WeChat's events)",
        f"  executor     {_executor(stack)}",
        f"  PDF root     {_rel(state.pdf_root or cfg.pdf_dir)}",
        f"  logs         {_rel(cfg.logs)}/ (processes), {_rel(cfg.home / 'logs')}/ (tasks)",
        f"  stop it      {stop_command(cfg)}",
    ]
    return "\n".join(lines)


def stop_command(cfg: StackConfig) -> str:
    """`make down`, with the state directory of a stack that runs beside the default one."""
    if cfg.state_dir.resolve() == DEFAULT_STATE_DIR.resolve():
        return "make down"
    return f"NONTAX_STACK_DIR={_rel(cfg.state_dir)} make down"


def _executor(stack: Stack) -> str:
    state = stack.state
    if state is None or not state.broker:
        return "LocalExecutor (in the scheduler)"
    workers = ", ".join(p.name for p in stack.workers())
    broker = celery_workers.describe_url(state.broker)
    return f"CeleryExecutor: {workers} on {broker} (keys {state.broker_prefix}*)"


def cmd_up(cfg: StackConfig) -> int:
    existing = StackState.load(cfg.state_file)
    if _is_up(existing):
        stack = Stack(cfg)
        stack.state = existing
        stack.secrets = Secrets.load_or_create(cfg.state_dir / "secrets.json")
        print(f"the stack is already up (pids in {_rel(cfg.state_file)}):")
        print(describe(stack))
        return 0
    if existing is not None and existing.procs:
        print("a previous stack left processes behind: stopping them first")
        left = stop_stack(existing, grace_s=cfg.grace_s, say=print)
        if left:
            print("could not stop:\n  " + "\n  ".join(left), file=sys.stderr)
            return 1
        existing.procs, existing.status = [], "down"
        existing.save(cfg.state_file)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # stop what was started, as on Ctrl-C
    stack = Stack(cfg, say=say)
    try:
        stack.up()
    except StackError as exc:
        print(f"\nmake up failed: {exc}\n(everything it had started is stopped)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything started is stopped", file=sys.stderr)
        return 130
    if cfg.unpause:
        _unpause_frequent_dags(stack)
    print(f"\nAirflow is up after {stack.started_in_s:.1f}s:")
    print(describe(stack))
    return 0


# The DAGs that keep the daily one's promises between its runs.
FREQUENT_DAG_IDS = (REQUESTS_DAG_ID, WAITING_DAG_ID)


def _unpause_frequent_dags(stack: Stack, timeout_s: float = 60.0) -> None:
    """`make up` is for a person at the UI: refusals and voids asked there (or by `make refuse`)
    are carried out by `nontax_requests`, and waiting orders whose payers authorise are issued
    by `nontax_waiting`, so they run too. The library's `Stack` (tests, bench) leaves them
    paused: their runs are their own."""
    deadline = time.monotonic() + timeout_s
    for dag_id in FREQUENT_DAG_IDS:
        while True:
            try:
                stack.api.set_paused(False, dag_id=dag_id)
                break
            except AirflowApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    print(f"{dag_id} left paused ({exc}): unpause it in the UI")
                    break
            time.sleep(1)


def cmd_down(cfg: StackConfig) -> int:
    state = StackState.load(cfg.state_file)
    if state is None or (not state.procs and not state.embedded_pgdata):
        print("nothing to stop (no stack recorded in " + _rel(cfg.state_file) + ")")
        return 0
    names = ", ".join(f"{p.name} ({p.pid})" for p in state.procs if p.process() is not None)
    print(f"stopping {names or 'nothing alive'}")
    left = stop_stack(state, grace_s=cfg.grace_s, say=lambda text: print(f"  {text}"))
    if left:
        print("still running after SIGKILL:\n  " + "\n  ".join(left), file=sys.stderr)
        state.status = "down with leftovers"
        state.save(cfg.state_file)
        return 1
    state.procs, state.status = [], "down"
    state.save(cfg.state_file)
    print("stopped; no process of the stack is left")
    return 0


def cmd_status(cfg: StackConfig) -> int:
    state = StackState.load(cfg.state_file)
    if state is None or not state.procs:
        print(f"no stack running (state: {_rel(cfg.state_file)})")
        return 1
    for proc in state.procs:
        alive = proc.process() is not None
        print(f"  {proc.name:<14} pid {proc.pid:<8} {'running' if alive else 'GONE'}")
    others = len(stack_processes(state.stack_id, state.procs)) - sum(
        1 for p in state.procs if p.process()
    )
    print(f"  (+ {others} child processes)")
    print(f"  url {state.url}")
    try:
        secrets_ = Secrets.load_or_create(cfg.state_dir / "secrets.json")
        api = AirflowApi(state.url, ADMIN_USER, secrets_.admin_password, timeout=5)
        health = api.health()
        print(
            "  health: "
            + ", ".join(f"{c} {(health.get(c) or {}).get('status')}" for c in HEALTH_COMPONENTS)
        )
    except Exception as exc:  # noqa: BLE001 - status reports, never raises
        print(f"  health: the API does not answer ({type(exc).__name__})")
        return 1
    return 0 if _is_up(state) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nontax_dev.stack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, help="API server port (NONTAX_STACK_PORT, 8080)")
    parser.add_argument("--host", help="API server interface (NONTAX_STACK_HOST, 127.0.0.1)")
    parser.add_argument("--state-dir", type=Path, help="state directory (NONTAX_STACK_DIR)")
    parser.add_argument("--keep-paused", action="store_true", help="do not unpause the DAG")
    args = parser.parse_args(argv)
    cfg = StackConfig.from_env()
    if args.port:
        cfg.port = args.port
    if args.host:
        cfg.host = args.host
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.keep_paused:
        cfg.unpause = False
    cfg.state_dir = cfg.state_dir.resolve()
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](cfg)


def clean_state(cfg: StackConfig) -> None:
    """Remove a stopped stack's state directory (tests)."""
    shutil.rmtree(cfg.state_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
