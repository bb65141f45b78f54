"""Shared by the reliability tests: the DAG run by Airflow in a process group of its own (so that
a test can SIGKILL the whole of it at a chosen moment) and the promise's
invariants checked against the sandbox and the order database."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2

from factories import MINIMAL_PDF, make_order, write_pdf
from nontax_dev.airflow_run import (
    AIRFLOW,
    DAG_ID,
    airflow_env,
    copy_migrated_metadata_db,
    dags_test,
    dags_test_command,
    latest_run,
    sandbox_connection,
)
from nontax_dev.chaos.checks import check_invariants
from nontax_dev.chaos.snapshot import take_snapshot
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore

INSERT = "issue_bills"


def sandbox_idle(sandbox) -> bool:
    """Every insertbill call the sandbox received has been answered (none is held or delayed),
    so that nothing of a killed run lands later, in another test."""
    return all(
        sum(stats["errcodes"].values()) >= stats["attempts"] for stats in sandbox.orders().values()
    )


class DagProcess:
    """`airflow dags test` in a new session (its own process group); always killed on exit."""

    def __init__(
        self,
        env: dict[str, str],
        conf: dict[str, Any],
        log_path: Path,
        dag_id: str = DAG_ID,
        run_at: datetime | None = None,
    ):
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            dags_test_command(dag_id, conf, run_at=run_at),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or a lost machine would."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(30)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text("utf-8", "replace")

    def __enter__(self) -> DagProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._log.close()


class Rig:
    """An order database, the sandbox and Airflow homes for `airflow dags test` runs."""

    def __init__(self, dsn: str, sandbox, homes: list[Path], pdf_root: Path, **extra: Any):
        self.dsn, self.sandbox, self.homes, self.pdf_root = dsn, sandbox, homes, pdf_root
        self.envs = []
        for home in homes:
            env = airflow_env(
                home,
                orders_db=dsn,
                wechat_conn=sandbox_connection(sandbox.url, **extra),
                pdf_root=str(pdf_root),
            )
            copy_migrated_metadata_db(home, env)
            self.envs.append(env)
        self.store = OrderStore(connect_dsn(dsn, application_name="test-rig"))
        self.db = psycopg2.connect(dsn, application_name="test-checker")
        self.db.autocommit = True

    def close(self) -> None:
        self.store.close()
        self.db.close()

    def load(self, n: int, start: int = 0, pdf: bytes = MINIMAL_PDF, **fields) -> list:
        orders = [make_order(i, **fields) for i in range(start, start + n)]
        for order in orders:
            write_pdf(self.pdf_root, order, pdf)
        self.store.upsert_orders(orders)
        return orders

    def sql(self, statement: str, params: Any = ()) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def statuses(self) -> dict[str, str]:
        return dict(self.sql("SELECT order_id, status FROM nontax.bill_order"))

    def statuses_count(self, status: str) -> int:
        return self.sql("SELECT count(*) FROM nontax.bill_order WHERE status = %s", (status,))[0][0]

    def run(
        self,
        conf: dict | None = None,
        *,
        home: int = 0,
        dag_id: str = DAG_ID,
        run_at: datetime | None = None,
    ):
        result = dags_test(self.envs[home], conf or {}, dag_id=dag_id, run_at=run_at)
        assert result.run_id, result.output[-3000:]
        return result

    def start(
        self,
        conf: dict,
        log_path: Path,
        *,
        home: int = 0,
        dag_id: str = DAG_ID,
        run_at: datetime | None = None,
    ) -> DagProcess:
        return DagProcess(self.envs[home], conf, log_path, dag_id, run_at)

    def latest_run_id(self, home: int = 0) -> str | None:
        return latest_run(self.envs[home])[0]

    def rerun_instance(self, run_id: str, map_index: int, *, home: int = 0):
        """What a person's clear of one insert instance does: `airflow tasks test` of it."""
        return subprocess.run(
            [AIRFLOW, "tasks", "test", DAG_ID, INSERT, run_id, "--map-index", str(map_index)],
            env=self.envs[home],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def end_leases(self) -> None:
        """The lease's hour passes: every claim has run out."""
        self.sql(
            "UPDATE nontax.bill_order SET claim_expires_at = now() - interval '1 second' "
            "WHERE claimed_by IS NOT NULL"
        )

    def violations(self, orders, *, token_expiries: int = 0, final: bool = True) -> list[str]:
        ids = [o.order_id if hasattr(o, "order_id") else o for o in orders]
        snapshot = take_snapshot(
            self.db, self.sandbox, ids, token_expiries=token_expiries, final=final
        )
        return check_invariants(snapshot)
