"""`make demo`: the whole pipeline on 200 demo orders against the WeChat sandbox, in one go.

1. Postgres: NONTAX_DEMO_DB when set (an empty database: it is migrated, never dropped); else
   the server on 127.0.0.1:5432 when it lets user postgres in, with a database `nontax_demo`
   dropped and created afresh; else an embedded Postgres (`embedded_pg`, the pgserver package)
   with its data under .run/pgdata. NONTAX_DEMO_FORCE_EMBEDDED=1 skips the local server.
2. The sandbox, on a free port, in its own process group.
3. 200 orders with real bill PDFs under .run/demo/pdfs, written as JSON Lines to
   .run/demo/orders.jsonl and loaded like `make load-orders`. Six of them carry a planted
   problem (`PLANTED`) and four more lines cannot load at all (`_unloadable`); two transient
   sandbox faults are switched on (`FAULTS`), which the run must ride out.
4. One run of the DAG with `airflow dags test`, log in .run/demo/dag-test.log. One order's
   refusal is asked for before it (`make refuse`): the run leaves it alone.
5. The run's report, task states and the orders' end states, checked against what was planted.
6. One issued bill's void is asked for (`make void`), and one run of the DAG `nontax_requests`
   refuses the one order and voids the other bill (log in .run/demo/requests-test.log).
7. Payers who authorise after the load (`demo_payers`): six orders loaded unauthorised, their
   links made, four payers authorise, one declines (WeChat's events pushed by the sandbox's
   pusher to a receiver process, log in .run/demo/receiver/receiver.log), and one run of
   `nontax_waiting` issues the four (log in .run/demo/waiting-test.log).

Everything started is stopped again, also on Ctrl-C. The run itself ends "failed" by design: the
planted problems need a person. The demo succeeds (exit 0) when every good order's bill is in
the sandbox exactly once and every planted problem ended where it should, with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import textwrap
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nontax_dev.airflow_run import (
    REQUESTS_DAG_ID,
    ROOT,
    WAITING_DAG_ID,
    DagTestResult,
    airflow_env,
    dags_test,
    orders_connection,
    sandbox_connection,
)
from nontax_dev.pg import LOCAL_SERVER, describe_dsn, fresh_database, server_answers
from wechat_nontax.issuing.bill import Order
from wechat_nontax.settings import BEIJING_TIME
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID

RUN_DIR = ROOT / ".run" / "demo"
PDF_ROOT = RUN_DIR / "pdfs"
ORDERS_FILE = RUN_DIR / "orders.jsonl"
DAG_LOG = RUN_DIR / "dag-test.log"
REQUESTS_LOG = RUN_DIR / "requests-test.log"
AIRFLOW_HOME = ROOT / ".airflow" / "demo"
DEMO_DB_NAME = "nontax_demo"
ORDER_COUNT = 200
BATCH_SIZE = 50
SEED = 2026
UNKNOWN_CARD_ID = "pjZ8Yt7xiy3b9UfffRIA4TmNoSuch"  # well formed, unknown to WeChat: 40078


# -- the demo's data --------------------------------------------------------------------------


@dataclass(frozen=True)
class FeeKind:
    """A kind of non-tax fee: who collects it, its bill code, and what it usually costs."""

    unit: str
    item: str
    billing_code: str  # 票据代码, one per unit and kind of bill
    fees: tuple[int, ...] = ()  # fixed amounts in fen (fines, certificate fees)
    fee_range: tuple[int, int] = (0, 0)  # otherwise a range in fen

    @property
    def title(self) -> str:
        return f"{self.unit} {self.item}"

    def fee(self, rng: random.Random) -> int:
        if self.fees:
            return rng.choice(self.fees)
        low, high = self.fee_range
        return rng.randrange(low, high) // 10 * 10 or low  # whole jiao, like a till


FEE_KINDS: tuple[FeeKind, ...] = (
    FeeKind("某市第一人民医院", "门诊收费", "35010126", fee_range=(1_550, 86_000)),
    FeeKind("某市第一人民医院", "住院收费", "35010226", fee_range=(120_000, 2_380_000)),
    FeeKind("某市中医院", "门诊收费", "35010326", fee_range=(2_000, 45_000)),
    FeeKind("某大学", "学费", "35020126", fees=(460_000, 550_000, 680_000)),
    FeeKind("某大学", "住宿费", "35020226", fees=(80_000, 120_000, 150_000)),
    FeeKind("某市公安局交通警察支队", "罚没款", "35030126", fees=(5_000, 10_000, 20_000)),
    FeeKind("某市不动产登记中心", "不动产登记费", "35040126", fees=(8_000, 55_000)),
    FeeKind("某市公安局出入境管理支队", "证照费", "35030226", fees=(12_000, 16_000)),
    FeeKind("某市人事考试中心", "考试报名费", "35050126", fees=(6_000, 9_000, 12_000)),
)


@dataclass(frozen=True)
class Planted:
    """A problem planted in one demo order, and where the pipeline must leave that order."""

    kind: str
    what: str  # the problem, for a person
    status: str  # the order's expected end status
    reason_has: str = ""  # a piece of the recorded reason
    errcode: int | None = None  # the last errcode WeChat answered


# What the payer is told of the refused order, and why the voided bill goes.
REFUND_REASON = "费用已退还,本笔不再开具票据"
VOID_REASON = "财政平台已冲红(退费)"

# Spread over the first three batches of 50; the fourth stays clean, so one batch goes green.
PLANTED: dict[int, Planted] = {
    13: Planted("not_pdf", "the PDF file is an HTML error page", "invalid", "is not a PDF"),
    37: Planted("missing_pdf", "the PDF file was never written", "invalid", "PDF not found"),
    64: Planted(
        "outside_root",
        "the PDF is a symbolic link out of the PDF root (to a real PDF)",
        "invalid",
        "is a symbolic link",
    ),
    88: Planted("unknown_card", "card_id unknown to WeChat", "failed", errcode=40078),
    119: Planted(
        "unauthorized",
        "the payer has not authorised the bill yet",
        "awaiting_auth",
        errcode=72038,
    ),
    142: Planted("rejected", "WeChat refuses the order for good", "rejected", errcode=72035),
    150: Planted(
        "refund",
        "refunded before issue: its refusal is asked for before the run (make refuse)",
        "refused",
        REFUND_REASON,
        errcode=0,
    ),
}
# A good order whose bill the fiscal platform red-reverses after the run: voided (make void).
VOIDED = 180
# What the sandbox is told about the payers of the planted orders (see SandboxAdmin).
SANDBOX_AUTHORIZATIONS = {"unauthorized": "unauthorized", "rejected": "rejected"}


@dataclass(frozen=True)
class Unloadable:
    """A JSON Lines record the load must refuse, with a piece of the reason it must give."""

    after: int  # written after the line of this order number
    record: dict[str, Any]
    what: str
    reason_has: str


@dataclass(frozen=True)
class DemoOrder:
    order: Order
    planted: Planted | None = None

    @property
    def order_id(self) -> str:
        return self.order.order_id

    def record(self) -> dict[str, Any]:
        o = self.order
        return {
            "order_id": o.order_id, "card_id": o.card_id, "appid": o.appid, "fee": o.fee,
            "title": o.title, "billing_time": o.billing_time, "billing_no": o.billing_no,
            "billing_code": o.billing_code, "pdf_path": o.pdf_path,
        }  # fmt: skip


@dataclass(frozen=True)
class DemoData:
    orders: list[DemoOrder]
    unloadable: list[Unloadable]

    @property
    def order_ids(self) -> list[str]:
        return [d.order_id for d in self.orders]

    @property
    def good(self) -> list[DemoOrder]:
        return [d for d in self.orders if d.planted is None]

    @property
    def planted(self) -> list[DemoOrder]:
        return [d for d in self.orders if d.planted is not None]

    def lines(self) -> list[tuple[str, Unloadable | None]]:
        """The JSON Lines file, in order: each line's text and, for a bad one, what it is."""
        lines: list[tuple[str, Unloadable | None]] = []
        after = {u.after: u for u in self.unloadable}
        for number, demo in enumerate(self.orders, start=1):
            lines.append((json.dumps(demo.record(), ensure_ascii=False), None))
            if number in after:
                bad = after[number]
                lines.append((json.dumps(bad.record, ensure_ascii=False), bad))
        return lines

    def expected_rejections(self) -> list[tuple[int, Unloadable]]:
        """(line number, the unloadable record) for every line the load must refuse."""
        return [(n, bad) for n, (_, bad) in enumerate(self.lines(), start=1) if bad is not None]


def demo_order_id(number: int) -> str:
    return f"DEMO{number:06d}"


def build_demo(now: int, count: int = ORDER_COUNT, seed: int = SEED) -> DemoData:
    """The demo's orders (with their planted problems) and unloadable lines; no I/O.

    Billing times lie in the 30 days before `now`; amounts, titles and times come from a seeded
    random generator, so the same `now` gives the same data.
    """
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    next_no: Counter[str] = Counter()
    orders = []
    for number in range(1, count + 1):
        kind = rng.choice(FEE_KINDS)
        next_no[kind.billing_code] += 1
        billing_time = now - rng.randrange(3_600, 30 * 86_400)
        order_id = demo_order_id(number)
        month = datetime.fromtimestamp(billing_time, BEIJING_TIME).strftime("%Y%m")
        order = Order(
            order_id=order_id,
            card_id=DEFAULT_CARD_ID,
            appid=DEFAULT_APPID,
            fee=kind.fee(rng),
            title=kind.title,
            billing_time=billing_time,
            billing_no=f"{26_000_000 + next_no[kind.billing_code]:010d}",
            billing_code=kind.billing_code,
            pdf_path=f"{month}/{order_id}.pdf",
        )
        planted = PLANTED.get(number)
        if planted is not None and planted.kind == "unknown_card":
            order = dataclasses.replace(order, card_id=UNKNOWN_CARD_ID)
        orders.append(DemoOrder(order, planted))
    return DemoData(orders, _unloadable(orders, count, now))


def _unloadable(orders: list[DemoOrder], count: int, now: int) -> list[Unloadable]:
    def record(number: int, **changes: Any) -> dict[str, Any]:
        base = orders[-1].record()
        return {**base, "order_id": demo_order_id(number), **changes,
                "pdf_path": f"rejected/{demo_order_id(number)}.pdf"}  # fmt: skip

    taken = orders[min(4, len(orders) - 1)].order  # its billing pair is used again below
    quarter = max(1, count // 4)
    return [
        Unloadable(
            quarter // 2,
            record(count + 1, fee=0, billing_no="0099000001"),
            "a fee of 0",
            "fee: must be a positive number of fen",
        ),
        Unloadable(
            quarter + quarter // 2,
            record(count + 2, fee=35.5, billing_no="0099000002"),
            "the fee in yuan, as a decimal",
            "fee: must be an integer number of fen",
        ),
        Unloadable(
            2 * quarter + quarter // 2,
            record(count + 3, billing_time=(now - 7200) * 1000, billing_no="0099000003"),
            "billing_time in milliseconds",
            "milliseconds instead of seconds",
        ),
        Unloadable(
            3 * quarter + quarter // 2,
            record(count + 4, billing_no=taken.billing_no, billing_code=taken.billing_code),
            f"the billing_no + billing_code of {taken.order_id}",
            "billing_no + billing_code already used by another order",
        ),
    ]


# An HTML error page stored where the PDF should be: what a broken PDF service leaves behind.
NOT_A_PDF = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><p>bill renderer unavailable</p></body></html>\n"
)


def write_demo_files(demo: DemoData, *, orders_file: Path, pdf_root: Path) -> int:
    """Write the PDFs (fresh root) and the JSON Lines file; returns how many PDFs were written."""
    from nontax_dev.bill_pdf import render_bill_pdf

    if pdf_root.exists():
        shutil.rmtree(pdf_root)
    pdf_root.mkdir(parents=True)
    written = 0
    for item in demo.orders:
        kind = item.planted.kind if item.planted else None
        if kind == "missing_pdf":
            continue
        path = pdf_root / item.order.pdf_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "outside_root":  # a real PDF beside the root, reached through a link
            outside = pdf_root.parent / f"outside-{item.order_id}.pdf"
            outside.write_bytes(render_bill_pdf(item.order))
            path.symlink_to(outside)
        else:
            path.write_bytes(NOT_A_PDF if kind == "not_pdf" else render_bill_pdf(item.order))
        written += 1
    orders_file.parent.mkdir(parents=True, exist_ok=True)
    orders_file.write_text("".join(text + "\n" for text, _ in demo.lines()), encoding="utf-8")
    return written


# -- the sandbox's faults -----------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    rule: dict[str, Any]
    what: str


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


# -- Postgres -----------------------------------------------------------------------------------


@dataclass
class DemoDatabase:
    dsn: str  # libpq DSN of the order database
    where: str  # for the output: which server and database, no password
    kept: str | None = None  # a URI to look at the orders after the demo, when they stay


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def choose_database(stack: contextlib.ExitStack, say: Callable[[str], None]) -> DemoDatabase:
    """See the module docstring, step 1. An embedded server is stopped when `stack` closes."""
    given = os.environ.get("NONTAX_DEMO_DB", "").strip()
    if given:
        return DemoDatabase(given, f"NONTAX_DEMO_DB ({describe_dsn(given)})")
    if _truthy("NONTAX_DEMO_FORCE_EMBEDDED"):
        say("NONTAX_DEMO_FORCE_EMBEDDED is set: not looking for a server on 127.0.0.1:5432")
    elif server_answers(LOCAL_SERVER):
        dsn = fresh_database(LOCAL_SERVER, DEMO_DB_NAME)
        kept = LOCAL_SERVER.rpartition("/")[0] + f"/{DEMO_DB_NAME}"
        return DemoDatabase(dsn, f"local server ({describe_dsn(dsn)}, created afresh)", kept)
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
        dsn, f"embedded Postgres (pgserver, data in {_rel(embedded.pgdata)}, pid {embedded.pid})"
    )


# -- reading the results ------------------------------------------------------------------------


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
                "SELECT value FROM xcom WHERE dag_id = 'nontax_insertbill' AND run_id = ? "
                "AND task_id = 'report' AND key = 'return_value' ORDER BY map_index LIMIT 1",
                (run_id,),
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
        "inserted": counts.get("inserted", 0),
        "needs_attention": [{"order_id": o, "status": s, "reason": r} for o, s, r in attention],
        "duration_s": None,
        "finished_per_s": None,
    }


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def expect(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok


def judge(
    demo: DemoData,
    load_rejected: Sequence[tuple[int, str]],
    rows: dict[str, dict[str, Any]],
    sandbox_bills: Sequence[dict[str, Any]],
    sandbox_orders: dict[str, dict[str, Any]],
    run_state: str | None,
    reimburse: dict[str, str] | None = None,
) -> Verdict:
    """Did the demo go as planned? Pure: takes what was read from the store and the sandbox
    (`reimburse`: each bill's reimburse status, when the requests were carried out)."""
    verdict = Verdict()
    voided = demo_order_id(VOIDED)
    verdict.expect(run_state is not None, "the DAG run did not happen (see the log)")
    # The load refused exactly the unloadable lines, for their reasons.
    refused = dict(load_rejected)
    for line, bad in demo.expected_rejections():
        verdict.expect(
            bad.reason_has in refused.pop(line, ""),
            f"line {line} ({bad.what}) was not refused with '{bad.reason_has}'",
        )
    for line, reason in sorted(refused.items()):
        verdict.problems.append(f"line {line} was refused unexpectedly: {reason}")
    # Every good order's bill is in the sandbox exactly once, with the code the store holds.
    bills = Counter(b["order_id"] for b in sandbox_bills)
    codes = {b["order_id"]: b.get("code") for b in sandbox_bills}
    for item in demo.good:
        oid = item.order_id
        row = rows.get(oid) or {}
        successes = (sandbox_orders.get(oid) or {}).get("successes", 0)
        want = "cancelled" if oid == voided and reimburse is not None else "inserted"
        verdict.expect(
            row.get("status") == want and bills[oid] == 1 and successes == 1,
            f"{oid}: status {row.get('status')!r}, {bills[oid]} bill(s) and {successes} "
            f"successful insert(s) in the sandbox (want {want}, 1 and 1)",
        )
        if want == "cancelled":
            verdict.expect(
                (reimburse or {}).get(oid) == "INVOICE_REIMBURSE_CANCEL",
                f"{oid}: voided, but its bill is {(reimburse or {}).get(oid)} in the sandbox",
            )
        if bills[oid] == 1 and row.get("code") is not None:
            verdict.expect(codes[oid] == row["code"], f"{oid}: stored code != sandbox's code")
    # Every planted problem ended where it should, with a reason a person can act on.
    for item in demo.planted:
        oid, planted = item.order_id, item.planted
        assert planted is not None
        row = rows.get(oid) or {}
        reason = row.get("reason") or ""
        ok = row.get("status") == planted.status and bool(reason.strip())
        ok = ok and planted.reason_has in reason
        if planted.errcode is not None:
            ok = ok and row.get("last_errcode") == planted.errcode
        verdict.expect(
            ok,
            f"{oid} ({planted.what}): status {row.get('status')!r}, errcode "
            f"{row.get('last_errcode')}, reason {reason!r}; want {planted.status!r}"
            + (f", errcode {planted.errcode}" if planted.errcode else "")
            + (f", reason with '{planted.reason_has}'" if planted.reason_has else ""),
        )
        verdict.expect(bills[oid] == 0, f"{oid}: has a bill in the sandbox but should not")
    extra = sorted(set(bills) - set(demo.order_ids))
    verdict.expect(not extra, f"the sandbox holds bills of unknown orders: {extra[:5]}")
    return verdict


# -- output -------------------------------------------------------------------------------------


def _rel(path: Path) -> str:
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
    not_inserted = [oid for oid in demo.order_ids if rows.get(oid, {}).get("status") != "inserted"]
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
    inserted = [oid for oid in demo.order_ids if rows.get(oid, {}).get("status") == "inserted"]
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


# -- the demo -----------------------------------------------------------------------------------


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


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
            f"{len(demo.orders)} demo orders: {pdfs} PDFs under {_rel(PDF_ROOT)}/, "
            f"orders in {_rel(ORDERS_FILE)}"
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
        console.step(f"loaded {_rel(ORDERS_FILE)} (as `make load-orders` does):")
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
            f"airflow dags test nontax_insertbill, batch_size {BATCH_SIZE}{first}; "
            f"log: {_rel(DAG_LOG)}"
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
        console.step(f"airflow dags test {REQUESTS_DAG_ID}; log: {_rel(REQUESTS_LOG)}")
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
        calls = admin.calls()
        reimburse = {oid: r["reimburse_status"] for oid, r in admin.statuses().items()}
        console.section("The sandbox's own view")
        print(f"  bills in the sandbox: {len(bills)}")
        print("  calls: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()) if v))
        for rule in admin.faults():
            print(
                f"  fault {rule.get('endpoint')} {rule.get('kind')} "
                f"{rule.get('errcode') or rule.get('status') or ''}: hit {rule.get('hits')} of "
                f"{rule.get('seen')} calls"
            )
        recovered = [oid for oid in retried if rows[oid].get("status") == "inserted"]
        print(f"  orders retried after a transient fault and then inserted: {len(recovered)}")
        print(
            f"  refused: {', '.join(admin.rejections()) or '-'}; cancelled: "
            f"{', '.join(o for o, r in reimburse.items() if r.endswith('CANCEL')) or '-'}"
        )

        verdict = judge(
            demo, report.rejected, rows, bills, sandbox_orders, result.run_state, reimburse
        )
        verdict.expect(
            carried.run_state == "success", f"the requests run ended {carried.run_state}"
        )

        # 7. Payers who authorise after the load: links, events, the fast DAG.
        from nontax_dev.demo_payers import run_payer_flow

        console.section("Payers who authorise after the load")
        flow = {"store": store, "dsn": db.dsn, "admin": admin, "env": env}
        problems = run_payer_flow(say=console.say, run_dir=RUN_DIR, pdf_root=PDF_ROOT, now=now,
                                  **flow)  # fmt: skip
        for problem in problems:
            verdict.expect(False, problem)

        console.section("Verdict")
        if verdict.problems:
            print("  DEMO FAILED:")
            print("\n".join(f"  - {p}" for p in verdict.problems[:30]))
            print(f"  (Airflow's output: {_rel(DAG_LOG)})")
            return 1
        print(
            f"  OK: {len(demo.good)} good orders, each bill inserted exactly once in the sandbox;\n"
            f"  {len(demo.planted)} planted problems, each ended as expected with its reason;\n"
            f"  one order refused and one bill voided by the requests DAG, each once on WeChat;\n"
            f"  four payers' bills issued by {WAITING_DAG_ID} after WeChat pushed their "
            "authorisation to the receiver, each "
            "once; the declined and the unanswered order never sent;\n"
            f"  {len(demo.unloadable)} unloadable lines refused at load with their line numbers.\n"
            f"  The run is '{result.run_state}' on purpose: orders that need a person turn it red."
        )
        if db.kept:
            print(
                f"\n  The orders stay in {db.kept}; look at them with\n"
                f"    AIRFLOW_CONN_NONTAX_ORDERS_DB={db.kept} make attention\n"
                f"    .venv/bin/nontax --dsn {db.kept} "
                f"history {demo.planted[0].order_id}"
            )
        return 0


def main() -> int:
    started = time.monotonic()
    console = Console(started)
    _stop_on_sigterm()
    print("nontax demo: 200 fiscal e-bills through the DAG against the WeChat sandbox")
    try:
        code = run_demo(console)
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into a message
        traceback.print_exc()
        print(f"\ndemo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    console.step(f"done; everything the demo started is stopped (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
