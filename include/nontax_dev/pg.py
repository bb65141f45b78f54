"""Small Postgres helpers shared by the tools, the stack, the demo, the benchmark and the tests:
which server, which database, made fresh or kept."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

# The server the tools look for first: a local one with trust auth (as on the development
# machines and in CI).
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database (a URI stays a URI)."""
    if "://" in dsn:
        return urlunsplit(urlsplit(dsn)._replace(path="/" + quote(dbname, safe="")))
    return psycopg2.extensions.make_dsn(dsn, dbname=dbname)


def describe_dsn(dsn: str) -> str:
    """user@host:port/dbname of a DSN, never its password."""
    parts = psycopg2.extensions.parse_dsn(dsn)
    host = parts.get("host") or "localhost"
    where = host if host.startswith("/") else f"{host}:{parts.get('port') or 5432}"
    return f"{parts.get('user') or 'postgres'}@{where}/{parts.get('dbname') or '?'}"


def server_answers(dsn: str, timeout_s: int = 3) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=timeout_s).close()
    except psycopg2.Error:
        return False
    return True


def _admin(server_dsn: str, *statements: str) -> list[tuple]:
    admin = psycopg2.connect(server_dsn)
    admin.autocommit = True
    try:
        rows: list[tuple] = []
        with admin.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = cur.fetchall() if cur.description else []
        return rows
    finally:
        admin.close()


def fresh_database(server_dsn: str, name: str) -> str:
    """Drop and create database `name` on the server of `server_dsn`; returns its DSN."""
    _admin(
        server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )
    return with_dbname(server_dsn, name)


def ensure_database(server_dsn: str, name: str) -> bool:
    """Create database `name` on the server unless it exists; True when created now."""
    admin = psycopg2.connect(server_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            cur.execute(f'CREATE DATABASE "{name}"')
            return True
    finally:
        admin.close()


def drop_database(server_dsn: str, name: str) -> None:
    _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(server_dsn: str, prefix: str) -> Iterator[str]:
    """A new order database of its own (`<prefix>_<random>`), migrated; dropped afterwards."""
    from wechat_nontax.store.migrate import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    dsn = fresh_database(server_dsn, name)
    try:
        migrate(dsn)
        yield dsn
    finally:
        drop_database(server_dsn, name)


def run_sql(dsn: str, *statements: str) -> list[tuple]:
    """Statements each in its own transaction (VACUUM may be one); the last one's rows."""
    return _admin(dsn, *statements)
