"""What happens beside the batches while they run: the requests DAG at the issuing run's run id,
the batches' order-database connections cut, refusals asked once the first bills arrive."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from nontax_dev.chaos.dags import TIME_BUDGET_S
from nontax_dev.chaos.plan import RunPlan
from wechat_nontax.settings import ISSUE_TASK_ID, REPORT_TASK_ID, REQUESTS_TASK_ID
from wechat_nontax.store.sql import REFUSAL_BLOCKS
from wechat_nontax.wechat.statuses import Status

# Due and to be sent by a batch (not the orders waiting for their payer's answer).
TO_SEND = sorted(Status.DUE - {Status.AWAITING_AUTH})

# Where the runs with both DAGs at one run id are (a day apart: each run's id is its own).
SAME_RUN_AT = datetime(2030, 1, 1, 18, 30, tzinfo=UTC)  # 02:30 Beijing time


class RequestsBeside:
    """Both DAGs at one run id: once a batch of the issuing run `run_id` holds its orders, the
    requests DAG's two tasks run with that run id, their own operators' code, in a thread (a
    second `dag.test()` cannot run in this process meanwhile). `violations`: orders a batch
    held that had no claim left right after, before the issuing run's report (a batch's end
    gives its orders back to its run's claim; only a release ends it)."""

    def __init__(self, dsn: str, run_id: str, order_ids: Sequence[str], log_since: Any):
        self.dsn, self.run_id, self.order_ids, self._log_since = dsn, run_id, order_ids, log_since
        self.ran = 0
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="requests-beside", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.dsn, application_name="chaos-requests-beside")
        conn.autocommit = True
        try:
            while not self._stop.wait(0.02):
                held = self._rows(
                    conn,
                    f"AND held_by LIKE '%%|{ISSUE_TASK_ID}|%%' AND claim_expires_at > now()",
                    self.order_ids,
                )
                if held:
                    self._carry_out()
                    self._check(conn, held)
                    return
        finally:
            conn.close()

    @staticmethod
    def _rows(conn: Any, condition: str, order_ids: Iterable[str]) -> set[str]:
        """Those of `order_ids` that are due to be sent and meet `condition` (an order a batch
        leaves waiting for its payer ends its claim with that write: not counted)."""
        with conn.cursor() as cur:
            cur.execute(
                "SELECT order_id FROM nontax.bill_order WHERE order_id = ANY(%s) "
                f"AND status = ANY(%s) {condition}",
                (sorted(order_ids), TO_SEND),
            )
            return {row[0] for row in cur.fetchall()}

    def _carry_out(self) -> None:
        from types import SimpleNamespace

        from airflow.sdk.exceptions import AirflowException

        from nontax_dev.airflow_run import REQUESTS_DAG_ID
        from wechat_nontax.requests.operators import (
            CarryOutRequestsOperator,
            RequestsReportOperator,
        )

        outputs: dict[str, Any] = {}
        for operator in (
            CarryOutRequestsOperator(task_id=REQUESTS_TASK_ID, time_budget_s=TIME_BUDGET_S),
            RequestsReportOperator(task_id=REPORT_TASK_ID),
        ):
            ti = SimpleNamespace(
                dag_id=REQUESTS_DAG_ID, run_id=self.run_id, task_id=operator.task_id,
                map_index=-1, try_number=1, xcom_push=lambda key, value: None,
                xcom_pull=lambda task_ids, key="return_value": outputs.get(task_ids),
            )  # fmt: skip
            # A red task (a request a person must see) is the requests' own business here.
            with contextlib.suppress(AirflowException):
                outputs[operator.task_id] = operator.execute({"ti": ti, "run_id": self.run_id})
        self.ran = 1

    def _check(self, conn: Any, held: set[str]) -> None:
        # An order whose refusal was asked while its batch ran is left to the refusal by the
        # batch itself, its claim ended with that write (the product's rule): not counted.
        gone = self._rows(
            conn,
            "AND claimed_by IS NULL AND NOT " + REFUSAL_BLOCKS.format(table="bill_order"),
            held,
        )
        # Until the issuing run's report ends them, its claims are its own; the report releases
        # them before it logs "Run report:", so its start (DAG.test's line) is what counts.
        if gone and f"[DAG TEST] starting task_id={REPORT_TASK_ID} " not in self._log_since():
            self.violations.append(
                f"the requests run of the same run id ended {len(gone)} claims of the issuing "
                f"run while its batches ran ({sorted(gone)[0]}...)"
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


class OnInserts:
    """Does `act` once, in a thread of its own, when the sandbox has had `calls` insertbill
    calls (the batches are under way); `act` returns what it did (a count)."""

    def __init__(self, admin: Any, calls: int, act: Callable[[], int], name: str):
        self.admin, self.calls, self.act, self.done = admin, calls, act, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            if self.admin.calls().get("insertbill", 0) >= self.calls:
                self.done = self.act()
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.done


def drop_batch_connections(dsn: str) -> int:
    """Terminates the batches' order-database connections: 1 when there were any."""
    import psycopg2

    conn = psycopg2.connect(dsn, application_name="chaos-db-drop")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() "
            f"AND application_name LIKE 'nontax-{ISSUE_TASK_ID}%'"
        )
        dropped = cur.fetchone()[0]
    conn.close()
    return 1 if dropped else 0


def refuse_mid_batch(dsn: str, plan: RunPlan) -> int:
    """What `make refuse` does for the plan's orders refused while the batches run: how many
    were taken (one the batches inserted already is refused at the door)."""
    import psycopg2

    from wechat_nontax.requests.contract import request_action

    conn = psycopg2.connect(dsn, application_name="chaos-refuse")
    try:
        return sum(
            request_action(conn, oid, "refuse", f"chaos run {plan.run}: refused", "chaos").accepted
            for oid in plan.refused_mid_batch
        )
    finally:
        conn.close()
