"""The local stack of `make up` (LocalExecutor) that the UI modules share: started once, at the
first module that asks for it, on free ports with databases of its own, and always stopped at
the end. Each module gets it as new to its tests: no run active, an empty order database, the
sandbox reset, no PDFs, and the DAGs paused as `Stack.up` leaves them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from stack_helpers import own_stack_config, running

from factories import empty_order_database
from nontax_dev.airflow_api import DAG_ID
from nontax_dev.stack.stack import Stack
from wechat_nontax.settings import REQUESTS_DAG_ID, WAITING_DAG_ID

# SimpleAuthManager's users: `admin`, and `viewer` for the Bills page's read-only role.
USERS = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer"}
# nontax_waiting every minute rather than never: it stays paused but where a module unpauses it
# (test_payer_events.py), whose scheduled runs then come without waiting 2 minutes for a tick.
WAITING_EVERY_MINUTE = {"NONTAX_WAITING_SCHEDULE": "* * * * *"}


@pytest.fixture(scope="session")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, dict[str, bool]]]:
    config = own_stack_config(
        tmp_path_factory.mktemp("stack"), "local", extra_env={**USERS, **WAITING_EVERY_MINUTE}
    )
    with running(config) as stack:
        paused = {
            d: stack.api.dag(d)["is_paused"] for d in (DAG_ID, REQUESTS_DAG_ID, WAITING_DAG_ID)
        }
        yield stack, paused


@pytest.fixture(scope="module")
def stack(local_stack: tuple[Stack, dict[str, bool]]) -> Stack:
    """The shared local stack, as if started for this module (a module may override it)."""
    stack, paused = local_stack
    for dag_id, was_paused in paused.items():
        stack.api.wait_idle(timeout=300, dag_id=dag_id)
        stack.api.set_paused(was_paused, dag_id=dag_id)
    empty_order_database(stack.orders_dsn)
    admin = stack.sandbox_admin()
    try:
        admin.reset()
    finally:
        admin.close()
    shutil.rmtree(stack.pdf_root, ignore_errors=True)
    stack.pdf_root.mkdir(parents=True)
    return stack
