"""Where the demo's orders live: the Postgres it picks (see nontax_dev.demo, step 1)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from nontax_dev.demo.report import relative
from nontax_dev.pg import LOCAL_SERVER, describe_dsn, fresh_database, server_answers

DEMO_DB_NAME = "nontax_demo"


@dataclass
class DemoDatabase:
    dsn: str  # libpq DSN of the order database
    where: str  # for the output: which server and database, no password
    kept: str | None = None  # a URI to look at the orders after the demo, when they stay


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def choose_database(stack: contextlib.ExitStack, say: Callable[[str], None]) -> DemoDatabase:
    """See nontax_dev.demo, step 1. An embedded server is stopped when `stack` closes."""
    given = os.environ.get("NONTAX_DEMO_DB", "").strip()
    if given:
        return DemoDatabase(given, f"NONTAX_DEMO_DB ({describe_dsn(given)})")
    if _truthy("NONTAX_DEMO_FORCE_EMBEDDED"):
        say("NONTAX_DEMO_FORCE_EMBEDDED is set: not looking for a server on 127.0.0.1:5432")
    elif server_answers(LOCAL_SERVER):
        dsn = fresh_database(LOCAL_SERVER, DEMO_DB_NAME)  # a URI, as LOCAL_SERVER is: kept
        return DemoDatabase(dsn, f"local server ({describe_dsn(dsn)}, created afresh)", dsn)
    else:
        say("no Postgres answers on 127.0.0.1:5432 for user postgres: starting an embedded one")
    import warnings

    from nontax_dev.embedded_pg import start_embedded_postgres

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        embedded = start_embedded_postgres()
    stack.callback(embedded.stop)
    dsn = fresh_database(embedded.uri("postgres"), DEMO_DB_NAME)
    return DemoDatabase(
        dsn,
        f"embedded Postgres (pgserver, data in {relative(embedded.pgdata)}, pid {embedded.pid})",
    )
