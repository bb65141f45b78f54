"""The stack's Postgres: the server it picks (the named one, the local one, else an embedded
one it starts and `down` stops), the databases it creates there (dropped again at `down` only
for a test's stack, or at `up` for the benchmark's fresh ones), and Airflow's URL of one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from nontax_dev.pg import LOCAL_SERVER, describe_dsn, drop_database, ensure_database, server_answers
from nontax_dev.stack import StackError
from nontax_dev.stack.config import StackConfig
from nontax_dev.stack.records import StackState


def choose_server(
    cfg: StackConfig, say: Callable[[str], None], started_embedded: Callable[[Path], None]
) -> str:
    """The admin DSN of the server the stack uses; `started_embedded(pgdata)` is told as soon
    as an embedded server runs, so that `down` stops it whatever happens next."""
    if cfg.pg_server:
        if not server_answers(cfg.pg_server):
            raise StackError(f"no Postgres answers at {describe_dsn(cfg.pg_server)}")
        return cfg.pg_server
    if not cfg.force_embedded and server_answers(LOCAL_SERVER):
        return LOCAL_SERVER
    say("no Postgres on 127.0.0.1:5432 for user postgres: starting an embedded one")
    import warnings

    import pgserver

    pgdata = (cfg.state_dir / "pgdata").resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        server = pgserver.get_server(pgdata, cleanup_mode=None)  # outlives this process
    started_embedded(pgdata)
    socket_dir = str(server.get_postmaster_info().socket_dir)
    return f"postgresql://postgres@/postgres?host={quote(socket_dir, safe='/')}"


def make_databases(server: str, names: list[str], *, fresh: bool, created: list[str]) -> None:
    """Create each database that is missing (dropped first when `fresh`); each one created is
    added to `created` at once, for `down` to drop even when a later one fails."""
    for name in names:
        if fresh:
            drop_database(server, name)
        if ensure_database(server, name):
            created.append(name)


def drop_and_stop(state: StackState) -> None:
    """At `down`: drop the test databases the stack created, stop its embedded server."""
    if state.drop_databases_on_down and state.pg_server:
        for name in state.created_databases:
            with contextlib.suppress(Exception):
                drop_database(state.pg_server, name)
    if state.embedded_pgdata:
        _stop_embedded(Path(state.embedded_pgdata))


def _stop_embedded(pgdata: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    user = "pgserver" if os.geteuid() == 0 else None
    with contextlib.suppress(Exception):
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)


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


def _parse_dsn(dsn: str) -> dict[str, str]:
    import psycopg2.extensions

    return dict(psycopg2.extensions.parse_dsn(dsn))
