"""One invocation of the chaos: a sandbox, a fresh order database and Airflow loaded once; and
one run of a plan in it, with the person on duty's re-runs and the promise checked twice (see
nontax_dev.chaos)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nontax_dev.chaos.checks import Snapshot, check_invariants
from nontax_dev.chaos.dags import CLIENT_TIMEOUT_S, load_dags
from nontax_dev.chaos.mid_run import (
    SAME_RUN_AT,
    OnInserts,
    RequestsBeside,
    drop_batch_connections,
    refuse_mid_batch,
)
from nontax_dev.chaos.on_duty import ChaosAirflow, check_private_loop
from nontax_dev.chaos.orders import seed_orders
from nontax_dev.chaos.plan import RunPlan
from nontax_dev.chaos.report import RunResult
from nontax_dev.chaos.secret_scan import secrets_in_order_db, secrets_in_task_logs, secrets_in_text
from nontax_dev.chaos.snapshot import take_snapshot
from nontax_dev.pg import with_dbname
from wechat_nontax.settings import INSERTBILL_DAG_ID, ISSUE_TASK_ID
from wechat_nontax.wechat.statuses import Status


class Chaos:
    """One invocation: a sandbox, a fresh order database, Airflow loaded once."""

    def __init__(self, *, pg: str, workdir: Path):
        self.pg = pg
        self.workdir = workdir
        self.pdf_root = workdir / "pdfs"
        self.pdf_root.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "airflow-output.log"
        self.db_name = f"nontax_chaos_{uuid.uuid4().hex[:10]}"
        self.dsn = with_dbname(pg, self.db_name)
        self.secrets: set[str] = set()
        self._stack = contextlib.ExitStack()

    # setup / teardown ----------------------------------------------------------------------

    def __enter__(self) -> Chaos:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        import psycopg2

        from nontax_dev.airflow_run import sandbox_connection
        from wechat_nontax.store.migrate import migrate
        from wechat_sandbox.client import DEFAULT_SECRET
        from wechat_sandbox.process import start_sandbox

        self.sandbox_process = start_sandbox()
        self._stack.callback(self.sandbox_process.stop)
        self.admin = self.sandbox_process.admin()
        self._stack.callback(self.admin.close)
        self.secrets.add(DEFAULT_SECRET)

        server = psycopg2.connect(self.pg)
        server.autocommit = True
        with server.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db_name}"')
        self._stack.callback(self._drop_db, server)
        migrate(self.dsn)
        self.db = psycopg2.connect(self.dsn, application_name="chaos-checker")
        self.db.autocommit = True
        self._stack.callback(self.db.close)

        home = self.workdir / "airflow"
        from nontax_dev.airflow_run import airflow_env, copy_migrated_metadata_db

        env = airflow_env(
            home,
            orders_db=self.dsn,
            wechat_conn=sandbox_connection(self.sandbox_process.url, timeout=CLIENT_TIMEOUT_S),
            pdf_root=str(self.pdf_root),
        )
        copy_migrated_metadata_db(home, env)
        os.environ.update(env)
        check_private_loop()
        self.dag, self.requests_dag = load_dags()
        # Cleared with a red batch: its downstream tasks, as the DAG wires them.
        self.rerun_with = sorted(self.dag.get_task(ISSUE_TASK_ID).get_flat_relative_ids())
        self.airflow = self._stack.enter_context(ChaosAirflow(home, env))

        from wechat_nontax.store.connection import connect_dsn
        from wechat_nontax.store.orders import OrderStore

        self.store = OrderStore(connect_dsn(self.dsn, application_name="chaos-seeder"))
        self._stack.callback(self.store.close)

    def _drop_db(self, server: Any) -> None:
        with server.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        server.close()

    # one run -------------------------------------------------------------------------------

    def run(self, plan: RunPlan, *, rerun_rounds: int) -> RunResult:
        started = time.monotonic()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._runs: list[tuple[str, str]] = []  # (dag id, run id) of the plan's DAG runs
        self.admin.reset()
        self._sql("DELETE FROM nontax.access_token")
        self._sql("DELETE FROM nontax.api_quota")
        seed_orders(self.store, self.pdf_root, plan)
        for _, rule in plan.faults:
            self.admin.add_fault(**rule)
        if plan.first_authorizations:
            self.admin.set_authorizations(plan.first_authorizations)
        if plan.insert_limit is not None:
            self.admin.configure(daily_insert_limit=plan.insert_limit)

        self._ask(plan, "refuse")
        dropper = (
            OnInserts(self.admin, 2, lambda: drop_batch_connections(self.dsn), "db-drop")
            if plan.db_drop
            else None
        )
        refuser = (
            OnInserts(self.admin, 1, lambda: refuse_mid_batch(self.dsn, plan), "refuse-mid-batch")
            if plan.refused_mid_batch
            else None
        )
        run_at = SAME_RUN_AT + timedelta(days=plan.run) if plan.same_run_id else None
        beside = (
            RequestsBeside(
                self.dsn, f"manual__{run_at.isoformat()}", plan.order_ids,
                lambda: self._log_since(log_offset),
            )
            if run_at is not None
            else None
        )  # fmt: skip
        try:
            dr = self._dag_test(plan, first=True, run_at=run_at)
        finally:
            drops = dropper.stop() if dropper else 0
            refused_mid_batch = refuser.stop() if refuser else 0
            if beside is not None:
                beside.stop()
        dag_runs, reruns = 1, 0
        for _ in range(rerun_rounds):
            todo = self._instances_to_rerun(dr, plan)
            if not todo:
                break
            self._rerun(dr, todo)
            reruns += len(todo)
        # A bill the fiscal platform red-reverses after the run (a void of an order that is not
        # inserted is refused at the door); the requests DAG runs with the faults on.
        self._ask(plan, "void")
        if self._pending_requests(plan):
            self._requests_run()
            dag_runs += 1

        rules = self.admin.faults()
        hits = Counter()
        for (kind, _), rule in zip(plan.faults, rules, strict=True):
            hits[kind] += rule["hits"]
        expiries = sum(
            r["hits"] for (kind, _), r in zip(plan.faults, rules, strict=True)
            if kind == "token_expire"
        )  # fmt: skip
        violations = check_invariants(self._snapshot(plan, expiries, final=False))

        # The person on duty fixes the cause, clears what is still red, runs what is due. The
        # late payers answer, and the waits for authorisations pass.
        self.admin.clear_faults()
        if plan.payers_later:
            self.admin.set_authorizations(dict(plan.payers_later))
        if plan.auth_quota:
            self.admin.add_fault(endpoint="getauthdata", kind="errcode", errcode=45009, count=1)
        self._sql(
            "UPDATE nontax.bill_order SET not_before = now() "
            "WHERE order_id = ANY(%s) AND status = %s",
            (list(plan.order_ids), str(Status.AWAITING_AUTH)),
        )
        if self._pending_requests(plan):
            self._sql(  # their transient waits end: the person runs them now
                "UPDATE nontax.bill_request SET not_before = NULL WHERE order_id = ANY(%s)",
                (list(plan.order_ids),),
            )
            self._requests_run()
            dag_runs += 1
        todo = self._instances_to_rerun(dr, plan)
        if todo:
            self._rerun(dr, todo)
            reruns += len(todo)
        if self._due_now(plan.order_ids):
            self._dag_test(plan)
            dag_runs += 1

        snapshot = self._snapshot(plan, expiries, final=True, log_offset=log_offset)
        for oid, status in plan.authorizations:
            answers = snapshot.sandbox_orders.get(oid, {}).get("errcodes", {})
            code = "72038" if status == "unauthorized" else "72035"
            hits[status] += answers.get(code, 0)
        later = dict(plan.payers_later)
        for call in snapshot.call_log:
            if call["endpoint"] == "getauthdata" and call.get("order_id") in later:
                answer = call.get("invoice_status")
                if answer == "auth success":
                    hits["late_auth"] += 1
                elif answer == "reject insert":
                    hits["refuses"] += 1
            elif call["endpoint"] == "insertbill" and call.get("errcode") == 72057:
                hits["insert_limit"] += 1
            if call["endpoint"] == "getauthdata" and call.get("errcode") == 45009:
                hits["auth_quota"] += 1
        if drops:
            hits["db_drop"] += drops
        if refused_mid_batch:
            hits["refuse_mid_batch"] += refused_mid_batch
        if beside is not None:
            hits["same_run_id"] += beside.ran
            violations += beside.violations
        lost = self._log_since(log_offset).count("lost its hold")
        if lost:
            violations.append(f"batches lost their hold on orders ({lost} log lines)")
        requests_done = Counter(
            kind for asked in snapshot.requests.values() for kind, state in asked if state == "done"
        )
        violations += [v for v in check_invariants(snapshot) if v not in violations]
        statuses = Counter(row["status"] for row in snapshot.rows.values())
        return RunResult(
            plan=plan,
            seconds=time.monotonic() - started,
            fault_hits=hits,
            dag_runs=dag_runs,
            reruns=reruns,
            statuses=statuses,
            token_expiries=expiries,
            token_fetches=snapshot.token_fetches,
            violations=violations,
            secret_hits=snapshot.secret_hits,
            requests_done=requests_done,
            quota_waiting=sum(1 for row in snapshot.rows.values() if row.get("quota")),
        )

    def _ask(self, plan: RunPlan, kind: str) -> None:
        """What `make refuse` / `make void` do for the plan's requests of `kind`."""
        from wechat_nontax.requests.contract import request_action

        for oid, wanted in plan.requests:
            if wanted == kind:
                request_action(self.db, oid, kind, f"chaos run {plan.run}: {kind}", "chaos")

    def _pending_requests(self, plan: RunPlan) -> bool:
        rows = self._sql(
            "SELECT count(*) FROM nontax.bill_request WHERE order_id = ANY(%s) "
            "AND status = 'pending'",
            (list(plan.order_ids),),
        )
        return rows[0][0] > 0

    def _dag_test(
        self, plan: RunPlan, *, first: bool = False, run_at: datetime | None = None
    ) -> Any:
        """The issuing run (the first one of a plan with its own conf); with `run_at`, named
        `manual__<run_at>` (a run id known before)."""
        dr = self.airflow.run(self.dag, plan.first_conf if first else plan.conf, run_at=run_at)
        self._runs.append((INSERTBILL_DAG_ID, dr.run_id))
        return dr

    def _requests_run(self) -> None:
        dr = self.airflow.run(self.requests_dag)
        self._runs.append((dr.dag_id, dr.run_id))

    def _instances_to_rerun(self, dr: Any, plan: RunPlan) -> list[tuple[str, int]]:
        """Red insert instances holding an order that a re-run can move: failed or due now."""
        red = self.airflow.red(dr.run_id, ISSUE_TASK_ID)
        if not red:
            return []
        batches = self.airflow.claimed_batches(dr.run_id)
        movable = self._movable(plan.order_ids)
        return [
            (ISSUE_TASK_ID, i)
            for i in red
            if i < len(batches) and any(oid in movable for oid in batches[i])
        ]

    def _rerun(self, dr: Any, instances: Iterable[tuple[str, int]]) -> None:
        """What a person does in the UI: clear the instances and their downstream tasks; the
        run goes on as the scheduler would take it."""
        self.airflow.clear_and_rerun(self.dag, dr, instances, self.rerun_with)

    # reading the state ---------------------------------------------------------------------

    def _sql(self, statement: str, params: Any = ()) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def _movable(self, order_ids: Sequence[str]) -> set[str]:
        rows = self._sql(
            "SELECT order_id FROM nontax.bill_order WHERE order_id = ANY(%s) AND "
            "(status = %s OR (status = ANY(%s) AND (not_before IS NULL OR not_before <= now())))",
            (list(order_ids), str(Status.FAILED), sorted(Status.DUE)),
        )
        return {r[0] for r in rows}

    def _due_now(self, order_ids: Sequence[str]) -> bool:
        rows = self._sql(
            "SELECT count(*) FROM nontax.bill_order WHERE order_id = ANY(%s) "
            "AND status = ANY(%s) AND (not_before IS NULL OR not_before <= now())",
            (list(order_ids), sorted(Status.DUE)),
        )
        return rows[0][0] > 0

    def _snapshot(
        self, plan: RunPlan, expiries: int, *, final: bool, log_offset: int | None = None
    ) -> Snapshot:
        tokens = self.admin.issued_tokens()  # the sandbox's own list: the admin API has hashes
        self.secrets.update(tokens)
        secret_hits = 0
        if final:
            secret_hits = secrets_in_order_db(
                self.db, sorted(self.secrets)
            ) + self.airflow.secret_hits(self._runs, sorted(self.secrets))
        if final and log_offset is not None:
            secret_hits += secrets_in_text(self._log_since(log_offset), self.secrets)
        return take_snapshot(
            self.db,
            self.admin,
            plan.order_ids,
            token_expiries=expiries,
            final=final,
            bad_orders={oid for oid, _ in plan.bad},
            secret_hits=secret_hits,
        )

    def _log_since(self, offset: int) -> str:
        """Airflow's output since `offset`."""
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def scan_task_logs(self) -> int:
        """Secret occurrences in the task log files Airflow wrote under its home."""
        return secrets_in_task_logs(Path(os.environ["AIRFLOW_HOME"]) / "logs", self.secrets)
