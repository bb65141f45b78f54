"""Connections to the order database, the project's own Postgres (never Airflow's metadata DB).

The driver is psycopg2 on purpose: providers-postgres 7.1 switches to psycopg 3 when it finds it
installed, and the order store relies on psycopg2's behaviour (server-side parameter binding is
not used, `execute_values`, exceptions in `psycopg2.errors`). The Connection is still the one
place the address and password come from.
"""

from __future__ import annotations

import psycopg2
import psycopg2.extensions

ORDERS_DB_CONN_ID = "nontax_orders_db"


def connect_dsn(dsn: str, *, application_name: str = "nontax") -> psycopg2.extensions.connection:
    """Open a connection from a libpq DSN or URI (tests and command-line tools)."""
    return psycopg2.connect(dsn, application_name=application_name)


def connect(
    conn_id: str = ORDERS_DB_CONN_ID, *, application_name: str = "nontax"
) -> psycopg2.extensions.connection:
    """Open a connection from an Airflow Connection (a task, or `AIRFLOW_CONN_...` outside one)."""
    from airflow.sdk import BaseHook  # heavy: imported when a connection is needed, not at parse

    conn = BaseHook.get_connection(conn_id)
    options = {k: v for k, v in (conn.extra_dejson or {}).items() if k in _LIBPQ_OPTIONS}
    return psycopg2.connect(
        host=conn.host or "127.0.0.1",
        port=conn.port or 5432,
        user=conn.login or None,
        password=conn.password or None,
        dbname=conn.schema or "postgres",
        application_name=application_name,
        **options,
    )


# Extras of the Connection that are handed to libpq; anything else is ignored.
_LIBPQ_OPTIONS = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "options", "keepalives"}
)


def dsn_from_env(conn_id: str = ORDERS_DB_CONN_ID) -> str:
    """The libpq DSN of `AIRFLOW_CONN_<CONN_ID>` (a URI or Airflow's JSON form), for tools that
    run without Airflow (importing the SDK costs seconds)."""
    import json
    import os

    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"set {name} to the order database (postgresql://user@host:5432/db)")
    if not value.lstrip().startswith("{"):
        return value.split("?__extra__", 1)[0]
    spec = json.loads(value)
    parts = {
        "host": spec.get("host"),
        "port": spec.get("port"),
        "user": spec.get("login"),
        "password": spec.get("password"),
        "dbname": spec.get("schema"),
    }
    return psycopg2.extensions.make_dsn(**{k: v for k, v in parts.items() if v})
