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
nontax_dev.stack.celery_workers). `up` also waits until every
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

The rooms: `config` (the settings from the environment, the ports), `records` (what the state
directory keeps: the stack's record, its secrets), `processes` (starting each process in a
group of its own, finding and stopping them all), `databases` (the Postgres server and the
databases made and dropped), `environment` (what each process is given), `celery_workers`,
`stack` (`Stack`: up, healthy, down), `cli` (the commands; `__main__` runs them).

Every worker's task processes import this package (`celery_workers.hostname`): only the
standard library here.
"""


class StackError(RuntimeError):
    """The stack could not be started (the message says why and where the logs are)."""
