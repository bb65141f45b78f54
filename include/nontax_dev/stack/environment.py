"""What each process of the stack is given in its environment: the Airflow processes all the
same one (the Connections, the secrets, the ports, the executor's settings), the sandbox and the
receiver only what they need (the caller's environment may hold real credentials)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nontax_dev.airflow_run import ROOT, airflow_env, orders_connection
from nontax_dev.stack import celery_workers
from nontax_dev.stack.config import CALLBACK_CONN_ENV, StackConfig
from nontax_dev.stack.databases import sqlalchemy_url
from nontax_dev.stack.processes import MARKER
from nontax_dev.stack.records import Secrets, StackState, write_private
from wechat_nontax.settings import POOL_SLOTS_ENV, RECEIVER_SPOOL_ENV, WECHAT_POOL_ENV
from wechat_sandbox.config import ENV_ADMIN_TOKEN, ENV_TOKENS_FILE

ADMIN_USER = "admin"
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
# What the sandbox and the receiver keep of the caller's environment.
_PLAIN = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


def airflow_processes_env(
    cfg: StackConfig,
    state: StackState,
    secrets: Secrets,
    *,
    orders_dsn: str,
    meta_dsn: str,
    wechat: str,
) -> dict[str, str]:
    """The environment every Airflow process of the stack shares (on Celery: with the
    broker's); writes the admin's password where SimpleAuthManager reads it."""
    # The caller's environment goes through (an AIRFLOW_CONN_NONTAX_NOTIFY, say); what the
    # stack sets below wins.
    env = airflow_env(
        cfg.home.resolve(),
        orders_db=orders_connection(orders_dsn),
        wechat_conn=wechat,
        pdf_root=str(cfg.pdf_dir),
    )
    passwords = cfg.home.resolve() / "simple_auth_manager_passwords.json"
    write_private(passwords, json.dumps({ADMIN_USER: secrets.admin_password}) + "\n")
    env.update(
        {
            MARKER: state.stack_id,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta_dsn),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": secrets.fernet_key,
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            # As in the compose file; `up` unpauses the DAG itself (unless --keep-paused).
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.jwt_secret,
            "AIRFLOW__API__SECRET_KEY": secrets.api_secret_key,
            "AIRFLOW__API__BASE_URL": cfg.url,
            "AIRFLOW__API__HOST": cfg.host,
            "AIRFLOW__API__PORT": str(cfg.port),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.worker_log_port),
            # The one log server (stack.LOG_SERVER) serves the triggerer's logs too.
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(cfg.worker_log_port),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(
                cfg.scheduler_health_port
            ),
            WECHAT_POOL_ENV: cfg.pool,
            POOL_SLOTS_ENV: str(cfg.pool_slots),  # the DAG spreads a run over them
        }
    )
    if cfg.executor == "celery":
        assert state.broker and state.broker_prefix
        env.update(
            celery_workers.executor_env(
                redis_url=state.broker,
                key_prefix=state.broker_prefix,
                result_backend=f"db+{sqlalchemy_url(meta_dsn)}",
                concurrency=cfg.worker_concurrency,
            )
        )
    else:
        env.update(LOCAL_EXECUTOR_PRELOAD)
    env.update(cfg.extra_env)
    return env


def sandbox_env(stack_id: str, admin_token: str, tokens_file: Path) -> dict[str, str]:
    """The sandbox's: its own settings, its admin token, where it lists the tokens it issues."""
    env = {k: v for k, v in os.environ.items() if k in _PLAIN or k.startswith("WECHAT_SANDBOX_")}
    env[MARKER] = stack_id
    env[ENV_ADMIN_TOKEN] = admin_token
    env[ENV_TOKENS_FILE] = str(tokens_file)
    env["PYTHONPATH"] = str(ROOT / "include")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def receiver_env(
    stack_id: str, *, orders_dsn: str, callback_connection: str, spool: Path
) -> dict[str, str]:
    """The receiver's: the order database and its own Connection, nothing of Airflow's."""
    env = {k: v for k, v in os.environ.items() if k in _PLAIN}
    env.update(
        {
            MARKER: stack_id,
            "AIRFLOW_CONN_NONTAX_ORDERS_DB": orders_dsn,
            CALLBACK_CONN_ENV: callback_connection,
            RECEIVER_SPOOL_ENV: str(spool),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
