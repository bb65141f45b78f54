"""What the demo prints: its steps, the run's report (from the report task's XCom, or recomputed),
the task states, the orders' end states, the requests, the sandbox's own view and the verdict."""

from __future__ import annotations

import json
import shutil
import sqlite3
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nontax_dev.airflow_run import ROOT, WAITING_DAG_ID, DagTestResult
from nontax_dev.demo.orders import BATCH_SIZE, VOIDED, DemoData, demo_order_id
from wechat_nontax.settings import INSERTBILL_DAG_ID, REPORT_TASK_ID
from wechat_nontax.wechat.statuses import Status


def report_from_xcom(home: Path, run_id: str | None) -> dict[str, Any] | None:
    """The `report` task's return value from the run's metadata DB, if it is there."""
    # Read from the table: the CLI has no command that shows an XCom, and the REST API needs an
    # api-server the demo does not start (report_from_store recomputes it otherwise).
    if run_id is None:
        return None
    try:
        db = sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? "
                "AND task_id = ? AND key = 'return_value' ORDER BY map_index LIMIT 1",
                (INSERTBILL_DAG_ID, run_id, REPORT_TASK_ID),
            ).fetchone()
        finally:
            db.close()
        if row is None:
            return None
        value = row[0]
        for _ in range(2):  # stored as JSON, possibly JSON of a JSON string
            if isinstance(value, bytes | str):
                value = json.loads(value)
        return value if isinstance(value, dict) and "by_status" in value else None
    except (sqlite3.Error, ValueError, TypeError):
        return None


def report_from_store(store: Any, order_ids: Sequence[str]) -> dict[str, Any]:
    """The report's counts recomputed from the order store (when the XCom is not readable)."""
    counts = store.count_by_status(order_ids)
    attention = store.attention_of(order_ids)
    return {
        "orders": len(order_ids),
        "batches": -(-len(order_ids) // BATCH_SIZE),
        "by_status": dict(sorted(counts.items())),
        "inserted": counts.get(Status.INSERTED, 0),
        "needs_attention": [{"order_id": o, "status": s, "reason": r} for o, s, r in attention],
        "duration_s": None,
        "finished_per_s": None,
    }


def relative(path: Path) -> str:
    """`path` from the repository's root, when it is below it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _width() -> int:
    return max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, indent: str = "  ") -> str:
    """A plain-text table; the last column is clipped to the terminal width."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers[:-1])]
    room = max(20, _width() - len(indent) - sum(w + 2 for w in widths))

    def line(values: Sequence[str]) -> str:
        head = "  ".join(f"{v:<{w}}" for v, w in zip(values[:-1], widths, strict=False))
        return (indent + (head + "  " if head else "") + _clip(values[-1], room)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths] + ["-" * len(headers[-1])])]
    out += [line(r) for r in cells]
    return "\n".join(out)


class Console:
    def __init__(self, started: float) -> None:
        self.started = started

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def say(self, text: str) -> None:
        print(textwrap.indent(text, "         "), flush=True)

    def section(self, title: str) -> None:
        print(f"\n== {title} " + "=" * max(3, min(_width(), 100) - len(title) - 4), flush=True)


def print_tasks(console: Console, result: DagTestResult) -> None:
    console.section(f"Task states of run {result.run_id} ({result.run_state})")
    rows = []
    for task in result.tasks:
        label = task["rendered_map_index"] or ("" if task["map_index"] < 0 else task["map_index"])
        rows.append((task["task_id"], task["state"], task["try_number"], label))
    print(table(("task", "state", "tries", "label"), rows))


def print_orders(
    console: Console, demo: DemoData, rows: dict[str, dict[str, Any]], retried: set[str]
) -> None:
    console.section("The orders' end states")
    counts = Counter(str((rows.get(oid) or {}).get("status")) for oid in demo.order_ids)
    print("  by status: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    planted = {d.order_id: d.planted for d in demo.orders if d.planted}
    not_inserted = [
        oid for oid in demo.order_ids if rows.get(oid, {}).get("status") != Status.INSERTED
    ]
    print(f"\n  not inserted, or voided ({len(not_inserted)}), each with the reason recorded:")
    lines = table(
        ("order_id", "status", "errcode", "planted problem"),
        [
            (
                oid,
                rows.get(oid, {}).get("status"),
                rows.get(oid, {}).get("last_errcode") or "-",
                planted[oid].what
                if oid in planted
                else "(none: its bill was voided)"
                if oid == demo_order_id(VOIDED)
                else "(none: unexpected)",
            )
            for oid in not_inserted
        ],
    ).splitlines()
    print("\n".join(lines[:2]))
    reason_indent = " " * 14
    for oid, line in zip(not_inserted, lines[2:], strict=True):
        print(line)
        reason = "reason: " + (rows.get(oid, {}).get("reason") or "(none recorded)")
        print(
            textwrap.fill(
                reason,
                width=_width(),
                initial_indent=reason_indent,
                subsequent_indent=reason_indent + "  ",
            )
        )
    inserted = [oid for oid in demo.order_ids if rows.get(oid, {}).get("status") == Status.INSERTED]
    print(f"\n  inserted ({len(inserted)}), the first 10:")
    print(
        table(
            ("order_id", "code", "fee", "billing_code-no", "title"),
            [
                (
                    oid,
                    rows[oid]["code"],
                    f"¥{rows[oid]['fee'] / 100:,.2f}",
                    f"{rows[oid]['billing_code']}-{rows[oid]['billing_no']}",
                    rows[oid]["title"] + (" (retried after a fault)" if oid in retried else ""),
                )
                for oid in inserted[:10]
            ],
        )
    )


def print_requests(console: Console, dsn: str, order_ids: Sequence[str]) -> None:
    from wechat_nontax.requests.store import RequestStore, format_request
    from wechat_nontax.store.connection import connect_dsn

    store = RequestStore(connect_dsn(dsn, application_name="nontax-demo"))
    try:
        rows = store.needs_attention() + [r for oid in order_ids for r in store.of_order(oid)]
    finally:
        store.close()
    console.section("Requests to refuse and void (make attention, make history ORDER=...)")
    print("\n".join(f"  {format_request(row)}" for row in dict.fromkeys(rows)) or "  none")


def print_sandbox(
    console: Console,
    admin: Any,
    bills: Sequence[dict[str, Any]],
    reimburse: dict[str, str],
    rows: dict[str, dict[str, Any]],
    retried: set[str],
) -> None:
    """The sandbox's own view: its bills, the calls it had, its faults' hits, its refusals and
    voids; and the orders that rode out a fault."""
    calls = admin.calls()
    console.section("The sandbox's own view")
    print(f"  bills in the sandbox: {len(bills)}")
    print("  calls: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()) if v))
    for rule in admin.faults():
        print(
            f"  fault {rule.get('endpoint')} {rule.get('kind')} "
            f"{rule.get('errcode') or rule.get('status') or ''}: hit {rule.get('hits')} of "
            f"{rule.get('seen')} calls"
        )
    recovered = [oid for oid in retried if rows[oid].get("status") == Status.INSERTED]
    print(f"  orders retried after a transient fault and then inserted: {len(recovered)}")
    print(
        f"  refused: {', '.join(admin.rejections()) or '-'}; cancelled: "
        f"{', '.join(o for o, r in reimburse.items() if r.endswith('CANCEL')) or '-'}"
    )


def print_verdict(
    console: Console,
    problems: Sequence[str],
    demo: DemoData,
    *,
    run_state: str | None,
    dag_log: Path,
    kept: str | None,
) -> None:
    console.section("Verdict")
    if problems:
        print("  DEMO FAILED:")
        print("\n".join(f"  - {p}" for p in problems[:30]))
        print(f"  (Airflow's output: {relative(dag_log)})")
        return
    print(
        f"  OK: {len(demo.good)} good orders, each bill inserted exactly once in the sandbox;\n"
        f"  {len(demo.planted)} planted problems, each ended as expected with its reason;\n"
        f"  one order refused and one bill voided by the requests DAG, each once on WeChat;\n"
        f"  four payers' bills issued by {WAITING_DAG_ID} after WeChat pushed their "
        "authorisation to the receiver, each "
        "once; the declined and the unanswered order never sent;\n"
        f"  {len(demo.unloadable)} unloadable lines refused at load with their line numbers.\n"
        f"  The run is '{run_state}' on purpose: orders that need a person turn it red."
    )
    if kept:
        print(
            f"\n  The orders stay in {kept}; look at them with\n"
            f"    AIRFLOW_CONN_NONTAX_ORDERS_DB={kept} make attention\n"
            f"    .venv/bin/nontax --dsn {kept} "
            f"history {demo.planted[0].order_id}"
        )
