"""The demo's run, step by step (see nontax_dev.demo): Postgres, the sandbox and its faults, the
orders loaded, the issuing run, the requests run, the late payers, the verdict."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Any

from nontax_dev.airflow_run import (
    REQUESTS_DAG_ID,
    ROOT,
    airflow_env,
    dags_test,
    orders_connection,
    sandbox_connection,
)
from nontax_dev.demo.database import choose_database
from nontax_dev.demo.late_payers import run_payer_flow
from nontax_dev.demo.orders import (
    BATCH_SIZE,
    REFUND_REASON,
    SANDBOX_AUTHORIZATIONS,
    VOID_REASON,
    VOIDED,
    build_demo,
    demo_order_id,
    write_demo_files,
)
from nontax_dev.demo.report import (
    Console,
    print_orders,
    print_requests,
    print_sandbox,
    print_tasks,
    print_verdict,
    relative,
    report_from_store,
    report_from_xcom,
    table,
)
from nontax_dev.demo.verdict import judge

RUN_DIR = ROOT / ".run" / "demo"
PDF_ROOT = RUN_DIR / "pdfs"
ORDERS_FILE = RUN_DIR / "orders.jsonl"
DAG_LOG = RUN_DIR / "dag-test.log"
REQUESTS_LOG = RUN_DIR / "requests-test.log"
AIRFLOW_HOME = ROOT / ".airflow" / "demo"


@dataclass(frozen=True)
class Fault:
    """A sandbox fault rule switched on before the run, and what it does, for a person."""

    rule: dict[str, Any]
    what: str


# Transient: the run must ride them out.
FAULTS: tuple[Fault, ...] = (
    Fault(
        dict(endpoint="insertbill", kind="errcode", errcode=72036, probability=0.05, seed=7),
        "insertbill answers 72036 (invoice busy) to 5% of calls: retried with backoff",
    ),
    Fault(
        dict(endpoint="setpdf", kind="http_5xx", status=502, probability=0.03, seed=11),
        "setpdf answers HTTP 502 to 3% of calls: retried with backoff",
    ),
)


def _ask(dsn: str, order_id: str, kind: str, reason: str) -> str:
    """What `make refuse` / `make void` do: record the request (the DAG carries it out)."""
    from wechat_nontax.requests.contract import request_action
    from wechat_nontax.store.connection import connect_dsn

    conn = connect_dsn(dsn, application_name="nontax-demo")
    try:
        answer = request_action(conn, order_id, kind, reason, "demo")
    finally:
        conn.close()
    return answer.reason if answer.accepted else f"REFUSED: {answer.reason}"


def run_demo(console: Console) -> int:
    from nontax_dev.bill_pdf import bill_font
    from wechat_nontax.cli.load import load_lines, read_lines
    from wechat_nontax.issuing.run_steps import format_report
    from wechat_nontax.store.connection import connect_dsn
    from wechat_nontax.store.migrate import migrate
    from wechat_nontax.store.orders import OrderStore
    from wechat_sandbox.process import start_sandbox

    with contextlib.ExitStack() as stack:
        # 1. Postgres
        console.step("Postgres ...")
        db = choose_database(stack, console.say)
        applied = migrate(db.dsn)
        console.say(f"order database: {db.where}; migrations applied: {applied or 'none'}")
        store = OrderStore(connect_dsn(db.dsn, application_name="nontax-demo"))
        stack.callback(store.close)
        held = sum(store.count_by_status().values())
        if held:
            print(
                f"\nThe order database already holds {held} orders. The demo needs an empty "
                "database: unset NONTAX_DEMO_DB, or point it at a new one.",
                file=sys.stderr,
            )
            return 2

        # 2. The sandbox
        sandbox = start_sandbox()
        stack.callback(sandbox.stop)
        admin = sandbox.admin()
        stack.callback(admin.close)
        console.step(f"WeChat sandbox on {sandbox.url} (pid {sandbox.pid})")

        # 3. Orders, PDFs, load
        now = int(time.time())
        demo = build_demo(now)
        pdfs = write_demo_files(demo, orders_file=ORDERS_FILE, pdf_root=PDF_ROOT)
        console.step(
            f"{len(demo.orders)} demo orders: {pdfs} PDFs under {relative(PDF_ROOT)}/, "
            f"orders in {relative(ORDERS_FILE)}"
        )
        console.say(f"bill font: {bill_font().source}")
        console.say(
            "planted problems:\n"
            + table(
                ("order_id", "problem", "expected end"),
                [(d.order_id, d.planted.what, d.planted.status) for d in demo.planted if d.planted],
            )
        )
        report = load_lines(store, read_lines(str(ORDERS_FILE)), now=now)
        console.step(f"loaded {relative(ORDERS_FILE)} (as `make load-orders` does):")
        console.say(str(report))

        authorizations = {
            d.order_id: SANDBOX_AUTHORIZATIONS[d.planted.kind]
            for d in demo.planted
            if d.planted and d.planted.kind in SANDBOX_AUTHORIZATIONS
        }
        admin.set_authorizations(authorizations)
        for fault in FAULTS:
            admin.add_fault(**fault.rule)
        console.step("sandbox faults switched on:")
        console.say("\n".join(f"- {fault.what}" for fault in FAULTS))

        # A refund before the run: its refusal is asked for, so the run does not issue it.
        refund = next(d for d in demo.planted if d.planted and d.planted.kind == "refund")
        asked = _ask(db.dsn, refund.order_id, "refuse", REFUND_REASON)
        console.step(f"make refuse ORDER={refund.order_id} REASON='{REFUND_REASON}': {asked}")

        # 4. One run of the DAG
        env = airflow_env(
            AIRFLOW_HOME,
            orders_db=orders_connection(db.dsn),
            wechat_conn=sandbox_connection(sandbox.url),
            pdf_root=str(PDF_ROOT),
        )
        first = "" if (AIRFLOW_HOME / ".migrated").exists() else " (first time: airflow db migrate)"
        console.step(
            f"dag.test() of nontax_insertbill, batch_size {BATCH_SIZE}{first}; "
            f"log: {relative(DAG_LOG)}"
        )
        run_started = time.monotonic()
        result = dags_test(env, {"batch_size": BATCH_SIZE}, log_file=DAG_LOG, timeout=600)
        console.step(
            f"run {result.run_id}: {result.run_state} after {time.monotonic() - run_started:.1f}s "
            f"(exit code {result.returncode})"
        )

        # 5. What happened
        summary = report_from_xcom(AIRFLOW_HOME, result.run_id)
        source = "the report task's XCom"
        if summary is None:
            summary = report_from_store(store, demo.order_ids)
            source = "recomputed from the order store"
        console.section(f"Run report ({source})")
        print(textwrap.indent(format_report(summary), "  "))
        print_tasks(console, result)

        # 6. After the run: the fiscal platform red-reverses one bill; the requests DAG
        # refuses the refunded order and voids that bill.
        voided = demo_order_id(VOIDED)
        asked = _ask(db.dsn, voided, "void", VOID_REASON)
        console.step(f"make void ORDER={voided} REASON='{VOID_REASON}': {asked}")
        console.step(f"dag.test() of {REQUESTS_DAG_ID}; log: {relative(REQUESTS_LOG)}")
        carried = dags_test(env, log_file=REQUESTS_LOG, timeout=300, dag_id=REQUESTS_DAG_ID)
        console.step(f"run {carried.run_id}: {carried.run_state}")
        print_requests(console, db.dsn, [refund.order_id, voided])

        rows = {oid: store.get_row(oid) or {} for oid in demo.order_ids}
        retried = {
            oid for oid in demo.order_ids if any(a.outcome == "retry" for a in store.history(oid))
        }
        print_orders(console, demo, rows, retried)

        bills = admin.bills()
        sandbox_orders = admin.orders()
        reimburse = {oid: r["reimburse_status"] for oid, r in admin.statuses().items()}
        print_sandbox(console, admin, bills, reimburse, rows, retried)

        verdict = judge(
            demo, report.rejected, rows, bills, sandbox_orders, result.run_state, reimburse
        )
        verdict.expect(
            carried.run_state == "success", f"the requests run ended {carried.run_state}"
        )

        # 7. Payers who authorise after the load: links, events, the fast DAG.
        console.section("Payers who authorise after the load")
        flow = {"store": store, "dsn": db.dsn, "admin": admin, "env": env}
        problems = run_payer_flow(say=console.say, run_dir=RUN_DIR, pdf_root=PDF_ROOT, now=now,
                                  **flow)  # fmt: skip
        for problem in problems:
            verdict.expect(False, problem)

        print_verdict(
            console, verdict.problems, demo, run_state=result.run_state, dag_log=DAG_LOG,
            kept=db.kept,
        )  # fmt: skip
        return 1 if verdict.problems else 0
