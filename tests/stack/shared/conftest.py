"""The local stack of `make up` (LocalExecutor) that the UI modules share: started once, at the
first module that asks for it, on free ports with databases of its own, and stopped after the
last test on it (or at the end of an interrupted session). Each module gets it as new to its
tests: no run active, an empty order database, the sandbox reset, no PDFs, and the DAGs paused
as `Stack.up` leaves them."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from factories import empty_order_database
from nontax_dev.airflow_api import DAG_ID
from nontax_dev.stack.stack import Stack
from stack_helpers import own_stack_config, running
from wechat_nontax.settings import REQUESTS_DAG_ID, WAITING_DAG_ID

# SimpleAuthManager's users: `admin`, and `viewer` for the Bills page's read-only role.
USERS = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer"}
# nontax_waiting every minute rather than never: it stays paused but where a module unpauses it
# (test_payer_events.py), whose scheduled runs then come without waiting 2 minutes for a tick.
WAITING_EVERY_MINUTE = {"NONTAX_WAITING_SCHEDULE": "* * * * *"}


# The shared stack while it runs: the stack and the context manager that stops it.
_shared: dict[str, Any] = {}


@pytest.fixture(scope="module")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Stack, dict[str, bool]]:
    if not _shared:
        config = own_stack_config(
            tmp_path_factory.mktemp("stack"), "local", extra_env={**USERS, **WAITING_EVERY_MINUTE}
        )
        running_stack = running(config)
        stack = running_stack.__enter__()
        _shared.update(running=running_stack, stack=stack)
        _shared["paused"] = {
            d: stack.api.dag(d)["is_paused"] for d in (DAG_ID, REQUESTS_DAG_ID, WAITING_DAG_ID)
        }
    return _shared["stack"], _shared["paused"]


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the shared stack after the last test on it (they run one after the other: see
    tests/conftest.py), not at the end of the session: a stack left idle would take a share of
    the CPU from every test after it."""
    if _shared and (nextitem is None or nextitem.path.parent != item.path.parent):
        _stop_shared()


def pytest_sessionfinish() -> None:
    if _shared:  # an interrupted session
        _stop_shared()


def _stop_shared() -> None:
    running_stack = _shared["running"]
    _shared.clear()
    running_stack.__exit__(None, None, None)


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
