"""A stack's settings: `StackConfig`, from the environment of `make up` or from a test's own
values, and the ports it opens."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nontax_dev.airflow_run import ROOT
from nontax_dev.stack import celery_workers
from wechat_nontax.observability.metrics import statsd_config
from wechat_nontax.settings import (
    CALLBACK_CONN_ID,
    DEFAULT_POOL_SLOTS,
    DEFAULT_RECEIVER_PORT,
    DEFAULT_WECHAT_POOL,
    RECEIVER_PORT_ENV,
    WECHAT_POOL_ENV,
)

DEFAULT_STATE_DIR = ROOT / ".run" / "stack"
CALLBACK_CONN_ENV = f"AIRFLOW_CONN_{CALLBACK_CONN_ID.upper()}"


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
    pool: str = DEFAULT_WECHAT_POOL
    pool_slots: int = DEFAULT_POOL_SLOTS
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
            pool=env.get(WECHAT_POOL_ENV) or DEFAULT_WECHAT_POOL,
            pool_slots=num("NONTAX_STACK_POOL_SLOTS", DEFAULT_POOL_SLOTS),
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
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def pdf_dir(self) -> Path:
        return (self.pdf_root or self.state_dir / "pdfs").resolve()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
