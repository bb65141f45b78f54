"""Shared fixtures: a throwaway order database on the real Postgres and the sandbox over HTTP.

Postgres: `NONTAX_TEST_PG` (a libpq URI of a server where we may create databases) defaults to
the local server. Each test session gets a database of its own, migrated, and drops it at the end.
The sandbox runs as a real uvicorn process in its own process group for the whole session; every
test that asks for it starts from a reset state.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

# Airflow reads its configuration once, at first import: point it at a home of the tests' own,
# one per pytest-xdist worker (`make test` runs the suite in worker processes).
ROOT = Path(__file__).resolve().parent.parent
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
HOME = ROOT / ".airflow" / (f"tests-{WORKER}" if WORKER else "tests")
os.environ["AIRFLOW_HOME"] = str(HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
# The Bills plugin comes by the package's entry point; the plugins folder holds nothing of ours.
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(HOME / "plugins"))
# The token cache encrypts with Airflow's Fernet key and refuses to work without one.
os.environ.setdefault(
    "AIRFLOW__CORE__FERNET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode()
)

import pytest
from xdist.scheduler import LoadFileScheduling

from factories import empty_order_database
from nontax_dev.airflow_run import sandbox_connection
from nontax_dev.pg import scratch_database
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_sandbox.client import SandboxAdmin
from wechat_sandbox.process import SandboxProcess, start_sandbox

TEST_PG = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# The layers, the longest first: the workers take the long ones while the short ones fill in.
LAYERS = ("stack", "e2e", "reliability", "integration", "sandbox", "unit")
# The modules on the one shared local stack (their conftest.py starts and stops it).
SHARED_STACK = "tests/stack/shared/"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest layers first, and in the stack layer the modules on the shared local stack
    first and together (tests/stack/shared/conftest.py stops it after the last of them)."""
    items.sort(key=lambda item: (_layer(item), not item.nodeid.startswith(SHARED_STACK)))


def _layer(item: pytest.Item) -> int:
    parts = item.path.relative_to(ROOT / "tests").parts
    layer = parts[0] if len(parts) > 1 else "integration"  # tests/*.py: checks of the tree
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


class FileOrSharedStack(LoadFileScheduling):
    """`make test`'s workers (pytest-xdist, `--dist loadfile`): each file goes to one worker
    (its module fixtures are made once), and the modules on the shared stack together (another
    worker running one of them would start a stack of its own)."""

    def _split_scope(self, nodeid: str) -> str:
        return SHARED_STACK if nodeid.startswith(SHARED_STACK) else super()._split_scope(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    return FileOrSharedStack(config, log) if config.getvalue("dist") == "loadfile" else None


@pytest.fixture(scope="session")
def orders_db_uri() -> Iterator[str]:
    """A freshly migrated order database for this test session."""
    with scratch_database(TEST_PG, "nontax_test") as uri:
        yield uri


@pytest.fixture
def orders_db(orders_db_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's order database, emptied, and named by the Airflow Connection env var."""
    empty_order_database(orders_db_uri)
    monkeypatch.setenv("AIRFLOW_CONN_NONTAX_ORDERS_DB", orders_db_uri)
    return orders_db_uri


@pytest.fixture
def store(orders_db: str) -> Iterator[OrderStore]:
    """An order store on the emptied order database."""
    store = OrderStore(connect_dsn(orders_db))
    yield store
    store.close()


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[SandboxProcess]:
    proc = start_sandbox()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def sandbox(sandbox_process: SandboxProcess) -> SandboxAdmin:
    """The running sandbox, reset to its initial state (no bills, no faults, no tokens)."""
    admin = sandbox_process.admin()
    admin.reset()
    return admin


@pytest.fixture
def wechat_conn(sandbox: SandboxAdmin, monkeypatch: pytest.MonkeyPatch) -> SandboxAdmin:
    """`wechat_nontax_default` set to the sandbox (stable_token mode)."""
    monkeypatch.setenv("AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT", sandbox_connection(sandbox.url))
    return sandbox
