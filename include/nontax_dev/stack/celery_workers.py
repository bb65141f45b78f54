"""The local stack on CeleryExecutor (`make up EXECUTOR=celery WORKERS=2`): what
docker-compose.yaml runs in containers, run here as plain processes.

- The Celery settings are the compose file's own: docker/airflow-celery.env, read by both.
- Broker: Redis (NONTAX_STACK_REDIS_URL, default database 3 of the server on 127.0.0.1:6379: a
  database of its own, apart from whatever else uses that server's database 0). Each stack also
  keeps its keys under a prefix of its own (kombu's `global_keyprefix`), so that stacks sharing a
  database never see each other's queues or workers; `down` deletes them. Result backend: Airflow's
  metadata database, as in the compose file.
- `airflow celery worker` once per worker, each a "host" of its own the way each container is:
  HOSTNAME=worker-N, so its Celery node is celery@worker-N (what the compose file's health check
  pings) and the task instances it runs carry `worker-N` as their hostname (the hostname
  callable below), in the UI and the REST API.
- Task logs: every worker writes under the stack's AIRFLOW_HOME, where the api-server reads them
  (the compose file's containers share a logs volume the same way), so the workers serve none.

Imported by every worker's task processes (the hostname callable): only the standard library at
module level, here and in the package's __init__.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SETTINGS_FILE = Path(__file__).resolve().parents[3] / "docker" / "airflow-celery.env"
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
DEFAULT_REDIS = "redis://127.0.0.1:6379/3"
REDIS_ENV = "NONTAX_STACK_REDIS_URL"
HOSTNAME_CALLABLE = f"{__name__}.hostname"


def hostname() -> str:
    """`[core] hostname_callable` of a local worker: its HOSTNAME, as in a container."""
    return os.environ.get("HOSTNAME") or socket.getfqdn()


def shared_settings() -> dict[str, str]:
    """docker/airflow-celery.env, as docker compose reads it."""
    from dotenv import dotenv_values

    with SETTINGS_FILE.open(encoding="utf-8") as settings:  # missing: an error, never {}
        values = dotenv_values(stream=settings, interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def executor_env(
    *, redis_url: str, key_prefix: str, result_backend: str, concurrency: int
) -> dict[str, str]:
    """What every Airflow process of a Celery stack adds to its environment."""
    return {
        **shared_settings(),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": key_prefix,
    }


def worker_names(count: int) -> list[str]:
    return [f"worker-{n}" for n in range(1, count + 1)]


def worker_env(env: dict[str, str], name: str) -> dict[str, str]:
    return {**env, "HOSTNAME": name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE}


def worker_command(airflow: str, name: str) -> list[str]:
    """`airflow celery worker` as the compose file runs it (its concurrency from the
    environment, AIRFLOW__CELERY__WORKER_CONCURRENCY), named after its host."""
    return [airflow, "celery", "worker", "--celery-hostname", name, "--skip-serve-logs"]


def ping_command(name: str) -> list[str]:
    """The compose file's health check of a worker (`celery@${HOSTNAME}`)."""
    celery = str(Path(sys.executable).with_name("celery"))
    return [celery, "--app", CELERY_APP, "inspect", "ping", "-d", f"celery@{name}"]


def worker_ready(log: Path, name: str) -> bool:
    """Celery's own word that the worker consumes, in its log since it was last started (the
    stack appends a `=== <time> <command>` line at every start)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return f"celery@{name} ready." in text.rsplit("\n=== ", 1)[-1]


def describe_url(url: str) -> str:
    """A broker URL to print: its password, if any, left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def delete_keys(url: str, prefix: str) -> int:
    """Delete a stack's broker keys (queues, unacknowledged messages, bindings)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        return client.delete(*keys) if keys else 0
    finally:
        client.close()
