"""`make chaos`: run the DAG again and again under random WeChat faults and check the promise.

The promise: every order ends inserted exactly once, or with a recorded reason, or still due;
never a second bill; never a secret in the open. Each run of `make chaos RUNS=n SEED=s`:

1. seeds 16-32 orders with fresh ids (a few with bad data, one maybe not authorised or
   rejected by WeChat, one maybe whose payer authorises late or refuses the bill after a first
   72038) into an order database created for this invocation; a run may also have a daily
   insert limit (72057) below its number of orders;
2. switches on a random mix of sandbox faults, drawn from SEED and the run's number: latency,
   latency spikes past the client's timeout, HTTP 5xx, timeouts (the call is handled, its answer
   held past the client's timeout), -1 (also four in a row for one order, which fails it),
   72036, 45011, 45009, token expiry mid-run, and an answer lost after a successful insert;
   every rule has its own seed, so the sandbox's draws repeat; some runs also ask for a good
   order's refusal before the run and another's void after it (`make refuse` / `make void`),
   and some of those answer 45009 to every refusal (or void) of the day (a request's quota);
   some ask for refusals of orders late in the batches once the first bills arrive (while the
   batches run); in some, both DAGs run at one run id (as their scheduled runs at 02:30 do):
   once a batch holds its orders, the requests DAG's tasks run with the issuing run's run id
   beside it;
3. runs the DAG (`dag.test()`, the real DAG file: claim, token, mapped issue, announce,
   report, with Airflow's own task retries);
4. acts as the person on duty: an `issue_bills` instance that is red while one of its orders
   failed or is still due is cleared (with `announce_bills` and `report` downstream) and run
   again, up to `--rerun-rounds` times with the faults still on; then the person "fixes the
   cause" (faults off), clears what is still red once more, and starts a new run of the same
   orders if some are still due now; orders with invalid data are not re-run (a person fixes
   the data first); the requests DAG `nontax_requests` runs after the issuing run with the
   faults on, and again after the fix while a request is pending; before that last round the
   late payers answer (getauthdata then says "auth success" or "reject insert"), in some runs
   getauthdata's daily quota runs out at the first look (45009 once; a few good orders were
   then left out of the first run, so that the last one's batch mixes them with the looks),
   and the 15-minute wait of every order waiting for its authorisation is shortened (time,
   not logic);
5. checks the invariants against the sandbox's own state (`SandboxAdmin.bills()`, `.orders()`
   with per-order successes, `.media()`, `.tokens()`, `.faults()` with their hits) and the
   order database, once with the faults still on and once at the end:
   - no order inserted twice (sandbox successes <= 1, one `inserted` history row);
   - every order inserted, ended with a reason (invalid, failed, rejected, duplicate, refused,
     cancelled), or still due; at the end, still due only while waiting for a time
     (`not_before`: an authorisation, a daily quota), never stuck, and no lease left held;
   - the database agrees with the sandbox: each inserted order has the sandbox's bill with the
     same code and openid, each `duplicate` has a bill, and at the end no order that the
     database calls failed, invalid or rejected has a bill;
   - refusals and voids: a refused order has no bill and WeChat has its refusal; a cancelled
     one had its bill inserted and is INVOICE_REIMBURSE_CANCEL on WeChat; no order both refused
     and inserted on WeChat; each request done at most once (one done request per order and
     kind, at most one change to CANCEL), and a done request's order is refused / cancelled;
     no insertbill for an order arrives later than `IN_FLIGHT_S` after its refusal was asked
     (from the sandbox's call log);
   - orders with bad data end `invalid` and WeChat never hears of them (no insertbill naming
     them, no PDF uploaded under their name);
   - token fetches (`nontax.access_token.fetch_count`, and the tokens the sandbox issued) are no
     more than the token expiries injected + 1;
   - no insertbill for an order after getauthdata said "never auth" or "reject insert" (until
     it said "auth success"), from the sandbox's call log;
   - no call of an API after its daily quota stop was recorded in `nontax.api_quota` (calls
     that arrive within `IN_FLIGHT_S` of the record were past their check already), and every
     daily quota answer recorded there, from the sandbox's call log; no order waits for the
     quota of a call it does not need (getauthdata's, when it is not waiting for its payer);
   - no batch loses its hold (no fault takes one away), and a requests run of the same run id
     ends no claim or hold of the issuing run;
   - no access token issued by the sandbox, nor the app secret, in the order database's texts
     (reasons, errmsgs, history), in Airflow's XCom or rendered fields, in the run's output, or
     (at the end) in the task log files.
A table of runs, faults and violations is printed; any violation exits 1.

Why in one process, and what is shortened: `airflow dags test` costs 10-15 s a run (Airflow's
import, parsing, migrating checks). Here Airflow is imported once, the DAG file is parsed once
and the public `DAG.test()` runs it again and again against one migrated SQLite metadata
database (copied from a template made once by `airflow db migrate`). A run then costs a few
seconds. What the person on duty sees and does goes through Airflow's REST API v2, as the UI's
does, from an `airflow api-server` on that database (nontax_dev.chaos_airflow): the red
instances, the claim's batches (its XCom), the XComs and rendered fields searched for secrets,
and the clear of the red instances with their downstream tasks. Running what the clear made
ready is the one step without a public interface in this process (see nontax_dev.chaos_airflow:
the loop of `DAG.test()` itself, private to Airflow 3.3, pinned, checked at start).
Only time is shortened, never logic: the batch operators' transient-error budget
(`time_budget_s`, 300 s in the DAG) is 6 s here and Airflow's retry delay (30 s doubling) is
1 s doubling to 2 s, the WeChat Connection's timeout is 2 s and the sandbox's held answers and
spikes last 3 s. Everything else is the DAG file as deployed.

A run's plan and the sandbox's draws repeat from (SEED, run): `python -m nontax_dev.chaos
--seed S --first-run N --runs 1` runs run N again (thread timing is the machine's own).

Each run starts from a reset sandbox, an empty token cache (so that fetches count per run) and
no recorded quota stop (the reset sandbox is a new day);
orders of earlier runs stay in the database, and every DAG run names its own orders
(`order_ids`), as a person targeting a run would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from nontax_dev.chaos_airflow import ChaosAirflow, check_private_loop
from wechat_nontax.settings import INSERTBILL_DAG_ID, ISSUE_TASK_ID
from wechat_nontax.wechat.statuses import Status

ROOT = Path(__file__).resolve().parent.parent.parent
DAG_ID = INSERTBILL_DAG_ID
INSERT_TASK = ISSUE_TASK_ID
RERUN_WITH = ("announce_bills", "report")  # cleared with a red instance: its downstream
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

# The shortened clocks (see the module docstring).
CLIENT_TIMEOUT_S = 2.0
HELD_ANSWER_S = 3.0
SPIKE_MS = 3000
TIME_BUDGET_S = 6.0
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 2.0

MINIMAL_PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"

FAULT_KINDS = (
    "latency",
    "latency_spike",
    "http_5xx",
    "timeout",
    "busy",
    "busy_order",
    "invoice_busy",
    "minute_quota",
    "daily_quota",
    "token_expire",
    "lost_answer",
)
# Bad data the order table accepts (fee <= 0, a reused billing pair and non-numbers are refused
# by the database itself: tests/reliability/test_bad_input.py covers those at load).
BAD_KINDS = (
    "title_empty",
    "title_control",
    "billing_time_ms",
    "billing_time_future",
    "fee_huge",
    "pdf_missing",
    "pdf_not_pdf",
    "pdf_empty",
    "pdf_path_escape",
    "billing_no_sql",
)
# A call that passed its quota check just before another worker recorded the stop may arrive
# this long after the record (a thread descheduled between its check and its send on 2 cores).
IN_FLIGHT_S = 2.0
# The sandbox endpoints behind each `nontax.api_quota` api.
QUOTA_ENDPOINTS = {
    "insert": ("insertbill",),
    "upload": ("setpdf",),
    "authorization": ("getauthdata",),
    "token": ("stable_token", "token"),
    "refuse": ("rejectinsert",),
    "void": ("updatestatus",),
}
# What a daily quota answer is, per endpoint (45009 everywhere; 72057, the insert limit).
QUOTA_ANSWERS = {"insertbill": (45009, 72057)}
NOT_AUTHORISED = frozenset({"never auth", "reject insert"})
# The order states a run's orders may take: loaded authorised, none waits for its payer's first
# authorisation (Status.WAITING_FOR_PAYER).
KNOWN = Status.DUE | Status.FINISHED | Status.NEEDS_ATTENTION
# Ended with a reason: every state past due but inserted.
NEEDS_REASON = (Status.SETTLED | Status.NEEDS_ATTENTION) - {Status.INSERTED}
# Orders that must never have a bill in the card package, whatever the sandbox shows (mismatched
# needs a person, but its bill is in the card package: inserted from an older row version).
NO_BILL = (Status.NEEDS_ATTENTION - {Status.MISMATCHED}) | {
    Status.REJECTED,
    Status.REFUSED,
    Status.DECLINED,
}
# Due and to be sent by a batch (not the orders waiting for their payer's answer).
TO_SEND = sorted(Status.DUE - {Status.AWAITING_AUTH})


# -- the plan of a run (pure) -------------------------------------------------------------------


def order_id(seed: int, run: int, n: int) -> str:
    return f"X{seed}R{run:04d}N{n:03d}"


@dataclass(frozen=True)
class RunPlan:
    run: int
    order_ids: tuple[str, ...]
    batch_size: int
    workers: int
    faults: tuple[tuple[str, dict[str, Any]], ...]  # (kind, sandbox fault rule)
    bad: tuple[tuple[str, str], ...] = ()  # (order id, bad kind)
    authorizations: tuple[tuple[str, str], ...] = ()  # (order id, unauthorized|rejected)
    # Cut the batches' order-database connections once bills start to arrive: the write-backs
    # must reconnect and record every code (not a sandbox fault: the runner does it).
    db_drop: bool = False
    # Requests to refuse (asked before the run) or void (asked after it) good orders: carried
    # out by the DAG nontax_requests, faults on, then once more after the person's fix.
    requests: tuple[tuple[str, str], ...] = ()  # (order id, refuse|void)
    # Payers not authorised at first (72038) who answer before the last round: (order id,
    # "authorized" | "rejected").
    payers_later: tuple[tuple[str, str], ...] = ()
    # The sandbox's daily insert limit for the run (72057 past it), None for none.
    insert_limit: int | None = None
    # getauthdata answers 45009 to the first look of the last round (its daily quota), and
    # these good orders are left out of the first run: the last round's batch sends them beside
    # the looks, which must not hold them back.
    auth_quota: bool = False
    held_back: tuple[str, ...] = ()
    # Orders late in the batches whose refusal is asked once the first bills arrive.
    refused_mid_batch: tuple[str, ...] = ()
    # Both DAGs at one run id: the requests DAG's tasks run with the issuing run's run id while
    # a batch holds its orders (`_RequestsBeside`).
    same_run_id: bool = False

    @property
    def first_authorizations(self) -> dict[str, str]:
        """What the sandbox says of each order's authorisation at the start of the run."""
        late = {oid: "unauthorized" for oid, _ in self.payers_later}
        return {**dict(self.authorizations), **late}

    @property
    def conf(self) -> dict[str, Any]:
        return {
            "order_ids": list(self.order_ids),
            "batch_size": self.batch_size,
            "workers": self.workers,
        }

    @property
    def first_conf(self) -> dict[str, Any]:
        """The first run's: without the orders held back."""
        return {**self.conf, "order_ids": [o for o in self.order_ids if o not in self.held_back]}


def plan_run(seed: int, run: int, *, min_orders: int = 16, max_orders: int = 32) -> RunPlan:
    """The run's orders, batches, faults, bad orders and refusals, drawn from (seed, run)."""
    rng = random.Random(f"nontax-chaos:{seed}:{run}")  # noqa: S311 (a plan, not a secret)
    ids = tuple(order_id(seed, run, n) for n in range(rng.randint(min_orders, max_orders)))
    kinds = rng.sample(FAULT_KINDS, rng.randint(1, 4))
    faults = tuple((kind, _fault_rule(kind, rng, ids)) for kind in kinds)
    positions = list(range(len(ids)))
    rng.shuffle(positions)
    bad = tuple(
        (ids[positions.pop()], rng.choice(BAD_KINDS)) for _ in range(rng.choice((0, 0, 1, 1, 2)))
    )
    authorizations = []
    if rng.random() < 0.25:
        authorizations.append((ids[positions.pop()], "unauthorized"))
    if rng.random() < 0.2:
        authorizations.append((ids[positions.pop()], "rejected"))
    batch_size, workers = rng.choice((12, 20, 32)), rng.choice((4, 8))
    db_drop = rng.random() < 0.15
    # Drawn after the older draws, which stay as they were for a (seed, run).
    later = []
    if rng.random() < 0.3:
        later.append((ids[positions.pop()], "authorized"))
    if rng.random() < 0.2:
        later.append((ids[positions.pop()], "rejected"))
    limit = rng.randint(len(ids) // 3, len(ids) - 2) if rng.random() < 0.15 else None
    # Drawn after everything else: the draws before stay as they were.
    requests = tuple(
        (ids[positions.pop()], kind)
        for kind in ("refuse", "void")
        if positions and rng.random() < 0.3
    )
    if requests and rng.random() < 0.4:
        faults += (("request_quota", _request_quota_rule(rng, requests)),)
    waiting = any(status == "unauthorized" for _, status in authorizations) or bool(later)
    auth_quota = waiting and rng.random() < 0.4
    held_back = (
        tuple(ids[positions.pop()] for _ in range(min(4, len(positions)))) if auth_quota else ()
    )
    # Drawn last: the draws before stay as they were.
    refused_mid_batch = _late_in_batches(rng, ids, positions) if rng.random() < 0.3 else ()
    same_run_id = rng.random() < 0.2
    return RunPlan(
        run=run,
        order_ids=ids,
        batch_size=batch_size,
        workers=workers,
        faults=faults,
        bad=bad,
        authorizations=tuple(authorizations),
        db_drop=db_drop,
        payers_later=tuple(later),
        insert_limit=limit,
        requests=requests,
        auth_quota=auth_quota,
        held_back=held_back,
        refused_mid_batch=refused_mid_batch,
        same_run_id=same_run_id,
    )


def _request_quota_rule(rng: random.Random, requests: Sequence[tuple[str, str]]) -> dict:
    """The day's quota of a requested call used up: every refusal (or void) answered 45009."""
    kind = rng.choice(sorted({kind for _, kind in requests}))
    return {"endpoint": QUOTA_ENDPOINTS[kind][0], "kind": "errcode", "errcode": 45009,
            "seed": rng.randrange(2**31)}  # fmt: skip


def _late_in_batches(rng: random.Random, ids: Sequence[str], free: list[int]) -> tuple[str, ...]:
    """One or two of the orders not drawn for anything else, among the last the batches reach
    (claimed in order_id order): still unsent when the first bills arrive."""
    late = sorted(free)[-rng.randint(1, 2) :]
    return tuple(ids[n] for n in late)


def _fault_rule(kind: str, rng: random.Random, ids: Sequence[str]) -> dict[str, Any]:
    seed = rng.randrange(2**31)
    p = round
    if kind == "latency":
        return {"endpoint": rng.choice(("*", "insertbill", "setpdf")), "kind": "latency",
                "latency_ms": rng.randint(20, 300), "probability": p(rng.uniform(0.1, 0.5), 2),
                "seed": seed}  # fmt: skip
    if kind == "latency_spike":  # past the client's timeout: the call is handled afterwards
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "latency",
                "latency_ms": SPIKE_MS, "count": rng.randint(1, 2), "probability": 0.2,
                "seed": seed}  # fmt: skip
    if kind == "http_5xx":
        return {"endpoint": rng.choice(("*", "insertbill", "setpdf")), "kind": "http_5xx",
                "status": rng.choice((500, 502, 503, 504)),
                "probability": p(rng.uniform(0.05, 0.2), 2), "seed": seed}  # fmt: skip
    if kind == "timeout":  # handled, then the answer is held past the client's timeout
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "timeout",
                "timeout_s": HELD_ANSWER_S, "count": rng.randint(1, 3), "probability": 0.2,
                "seed": seed}  # fmt: skip
    if kind == "busy":
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": -1,
                "probability": p(rng.uniform(0.05, 0.15), 2), "seed": seed}  # fmt: skip
    if kind == "busy_order":  # four -1 in a row for one order: it fails; a re-run recovers
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": -1, "count": 4,
                "order_ids": [rng.choice(ids)]}  # fmt: skip
    if kind == "invoice_busy":
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": 72036,
                "probability": p(rng.uniform(0.1, 0.3), 2), "seed": seed}  # fmt: skip
    if kind == "minute_quota":
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "errcode",
                "errcode": 45011, "count": rng.randint(1, 2), "probability": 0.3,
                "seed": seed}  # fmt: skip
    if kind == "daily_quota":
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": 45009, "count": 1,
                "probability": 0.1, "seed": seed}  # fmt: skip
    if kind == "token_expire":
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "token_expire",
                "count": rng.randint(1, 2), "probability": 0.1, "seed": seed}  # fmt: skip
    if kind == "lost_answer":
        return {"endpoint": "insertbill", "kind": "lost_answer", "count": rng.randint(1, 3),
                "probability": 0.15, "seed": seed}  # fmt: skip
    raise ValueError(f"unknown fault kind {kind!r}")


# Where the runs with both DAGs at one run id are (a day apart: each run's id is its own).
SAME_RUN_AT = datetime(2030, 1, 1, 18, 30, tzinfo=UTC)  # 02:30 Beijing time


class _RequestsBeside:
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
                    "AND held_by LIKE '%%|issue_bills|%%' AND claim_expires_at > now()",
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
            CarryOutRequestsOperator(task_id="carry_out_requests", time_budget_s=TIME_BUDGET_S),
            RequestsReportOperator(task_id="report"),
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
        gone = self._rows(conn, "AND claimed_by IS NULL", held)
        # Until the issuing run's report ends them, its claims are its own.
        if gone and "Run report:" not in self._log_since():
            self.violations.append(
                f"the requests run of the same run id ended {len(gone)} claims of the issuing "
                f"run while its batches ran ({sorted(gone)[0]}...)"
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


class _OnInserts:
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


def _drop_batch_connections(dsn: str) -> int:
    """Terminates the batches' order-database connections: 1 when there were any."""
    import psycopg2

    conn = psycopg2.connect(dsn, application_name="chaos-db-drop")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() "
            "AND application_name LIKE 'nontax-issue_bills%'"
        )
        dropped = cur.fetchone()[0]
    conn.close()
    return 1 if dropped else 0


def _refuse(dsn: str, plan: RunPlan) -> int:
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


# -- the invariants (pure) ----------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the order database and the sandbox say about one run's orders."""

    order_ids: Sequence[str]
    rows: dict[str, dict[str, Any]]  # order_id -> status, reason, code, openid, waiting, held,
    #                                  inserted_records
    bills: list[dict[str, Any]]  # the sandbox's bills (every order of this sandbox reset)
    sandbox_orders: dict[str, dict[str, Any]]  # insertbill stats per order id
    uploaded_names: set[str]  # file names of the PDFs the sandbox received
    tokens_issued: int
    token_fetches: int
    token_expiries: int
    bad_orders: set[str] = field(default_factory=set)
    secret_hits: int = 0
    final: bool = False
    # The requests to refuse or void (order_id -> [(kind, status)]), the sandbox's refusals
    # (order_id -> repeats) and its bills' reimburse statuses (order_id -> (status, changes
    # to CANCEL)).
    requests: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    reimburse: dict[str, tuple[str, int]] = field(default_factory=dict)

    # The sandbox's calls in arrival order ({at, endpoint, order_id, errcode, invoice_status}).
    call_log: list[dict[str, Any]] = field(default_factory=list)
    # The recorded daily quota stops: (api, since when, Unix time).
    quota_stops: list[tuple[str, float]] = field(default_factory=list)
    # When each order's refusal was asked (Unix time), of those not withdrawn.
    refusals_asked: dict[str, float] = field(default_factory=dict)


def _request_problems(s: Snapshot, oid: str, status: str, has_bill: bool) -> list[str]:
    """The promises about refusals and voids: a refused order was never inserted and WeChat
    has its refusal; a voided bill was inserted first and is cancelled on WeChat; each request
    was carried out at most once (a done request per order and kind, one change to CANCEL)."""
    problems = []
    if status == Status.REFUSED:
        if has_bill:
            problems.append(f"{oid}: refused, yet WeChat has its bill")
        if oid not in s.rejections:
            problems.append(f"{oid}: refused in the database, no refusal on WeChat")
    if oid in s.rejections and has_bill:
        problems.append(f"{oid}: both refused and inserted on WeChat")
    reimburse, cancels = s.reimburse.get(oid, (None, 0))
    if status == Status.CANCELLED:
        if not has_bill:
            problems.append(f"{oid}: cancelled, but WeChat never had its bill")
        if reimburse != "INVOICE_REIMBURSE_CANCEL":
            problems.append(f"{oid}: cancelled in the database, {reimburse} on WeChat")
    if cancels > 1:
        problems.append(f"{oid}: voided {cancels} times on WeChat")
    done = Counter(kind for kind, state in s.requests.get(oid, []) if state == "done")
    problems += [f"{oid}: {n} {kind} requests done" for kind, n in done.items() if n > 1]
    if done["refuse"] and status != Status.REFUSED:
        problems.append(f"{oid}: its refusal is done, yet it is {status}")
    if done["void"] and status != Status.CANCELLED:
        problems.append(f"{oid}: its void is done, yet it is {status}")
    return problems


def check_invariants(s: Snapshot) -> list[str]:
    """Every broken promise in `s`, one line each; [] when all hold."""
    problems: list[str] = []
    bills_by_order: dict[str, list[dict[str, Any]]] = {}
    for bill in s.bills:
        bills_by_order.setdefault(bill["order_id"], []).append(bill)
    for oid, bills in bills_by_order.items():
        if len(bills) > 1:
            problems.append(f"{oid}: {len(bills)} bills in the sandbox")
        if oid not in s.order_ids:
            problems.append(f"{oid}: a bill in the sandbox for an order of no run")
    for oid, stats in s.sandbox_orders.items():
        if stats.get("successes", 0) > 1:
            problems.append(f"{oid}: inserted {stats['successes']} times")
    for oid in s.order_ids:
        row = s.rows.get(oid)
        if row is None:
            problems.append(f"{oid}: missing from the order database")
            continue
        status, bills = row["status"], bills_by_order.get(oid, [])
        if status not in KNOWN:
            problems.append(f"{oid}: unknown status {status!r}")
        if status in NEEDS_REASON and not (row.get("reason") or "").strip():
            problems.append(f"{oid}: {status} without a reason")
        if row.get("inserted_records", 0) > 1:
            problems.append(f"{oid}: {row['inserted_records']} 'inserted' history rows")
        if status in (Status.INSERTED, Status.MISMATCHED):
            if not bills:
                problems.append(f"{oid}: inserted in the database, no bill in the sandbox")
            elif (row.get("code"), row.get("openid")) != (bills[0]["code"], bills[0]["openid"]):
                problems.append(f"{oid}: code/openid differ from the sandbox's bill")
        elif status == Status.DUPLICATE and not bills:
            problems.append(f"{oid}: duplicate in the database, no bill in the sandbox")
        elif bills and status in NO_BILL and s.final:
            problems.append(f"{oid}: {status} in the database, but WeChat has its bill")
        problems += _request_problems(s, oid, status, bool(bills))
        if status == Status.INVALID or oid in s.bad_orders:
            if status != Status.INVALID:
                problems.append(f"{oid}: bad data, but {status} instead of invalid")
            if s.sandbox_orders.get(oid, {}).get("attempts", 0):
                problems.append(f"{oid}: invalid, yet insertbill was called for it")
            if f"{oid}.pdf" in s.uploaded_names:
                problems.append(f"{oid}: invalid, yet its PDF was uploaded")
        if row.get("quota_api") == "authorization" and status != Status.AWAITING_AUTH:
            problems.append(f"{oid}: {status}, yet waits for getauthdata's daily quota")
        if s.final and status in Status.DUE and not row.get("waiting"):
            problems.append(f"{oid}: still {status} with nothing to wait for (stuck)")
        if s.final and row.get("held"):
            problems.append(f"{oid}: a lease is still held after the runs ended")
    allowed = s.token_expiries + 1
    if s.token_fetches > allowed:
        problems.append(
            f"{s.token_fetches} token fetches for {s.token_expiries} expiries (at most {allowed})"
        )
    if s.tokens_issued > allowed:
        problems.append(
            f"the sandbox issued {s.tokens_issued} tokens for {s.token_expiries} expiries"
        )
    if s.secret_hits:
        problems.append(f"{s.secret_hits} secret occurrences in the open")
    problems += _calls_after_a_no(s)
    return problems


def _calls_after_a_no(s: Snapshot) -> list[str]:
    """Calls the pipeline had been told not to make: an insert after getauthdata said the
    order is not authorised (until it says it is), a call after its quota stop was recorded."""
    problems = []
    not_authorised: dict[str, str] = {}
    for call in s.call_log:
        oid, endpoint = call.get("order_id"), call["endpoint"]
        if endpoint == "getauthdata" and oid and call.get("errcode") == 0:
            status = call.get("invoice_status")
            if status in NOT_AUTHORISED:
                not_authorised[oid] = status
            else:
                not_authorised.pop(oid, None)
        elif endpoint == "insertbill" and oid in not_authorised:
            problems.append(f"{oid}: insertbill after getauthdata said {not_authorised[oid]!r}")
    recorded = {api for api, _ in s.quota_stops}
    for api, endpoints in QUOTA_ENDPOINTS.items():
        answers = {c for e in endpoints for c in QUOTA_ANSWERS.get(e, (45009,))}
        answered = [
            c for c in s.call_log if c["endpoint"] in endpoints and c.get("errcode") in answers
        ]
        if answered and api not in recorded:
            problems.append(f"{len(answered)} daily quota answers of {api}, none recorded")
    for oid, asked in s.refusals_asked.items():
        late = [
            c for c in s.call_log
            if c["endpoint"] == "insertbill" and c.get("order_id") == oid
            and c["at"] > asked + IN_FLIGHT_S
        ]  # fmt: skip
        if late:
            problems.append(f"{oid}: {len(late)} insertbill calls after its refusal was asked")
    for api, since in s.quota_stops:
        endpoints = QUOTA_ENDPOINTS.get(api, (api,))
        late = [
            c for c in s.call_log if c["endpoint"] in endpoints and c["at"] > since + IN_FLIGHT_S
        ]
        if late:
            problems.append(f"{len(late)} {'/'.join(endpoints)} calls after the {api} quota stop")
    return problems


# -- the world: sandbox, order database, Airflow in this process --------------------------------


@dataclass
class RunResult:
    plan: RunPlan
    seconds: float
    fault_hits: Counter
    dag_runs: int
    reruns: int
    statuses: Counter
    token_expiries: int
    token_fetches: int
    violations: list[str]
    secret_hits: int = 0
    requests_done: Counter = field(default_factory=Counter)  # refuse / void carried out
    quota_waiting: int = 0  # orders still due at the end, waiting for a daily quota's reset


class Chaos:
    """One invocation: a sandbox, a fresh order database, Airflow loaded once."""

    def __init__(self, *, pg: str, workdir: Path):
        self.pg = pg
        self.workdir = workdir
        self.pdf_root = workdir / "pdfs"
        self.pdf_root.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "airflow-output.log"
        self.db_name = f"nontax_chaos_{uuid.uuid4().hex[:10]}"
        self.dsn = _with_dbname(pg, self.db_name)
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
        self._load_dag()
        self.airflow = self._stack.enter_context(ChaosAirflow(home, env))

        from wechat_nontax.store.connection import connect_dsn
        from wechat_nontax.store.orders import OrderStore

        self.store = OrderStore(connect_dsn(self.dsn, application_name="chaos-seeder"))
        self._stack.callback(self.store.close)

    def _drop_db(self, server: Any) -> None:
        with server.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        server.close()

    def _load_dag(self) -> None:
        from airflow.dag_processing.dagbag import DagBag

        from nontax_dev.airflow_run import REQUESTS_DAG_ID

        check_private_loop()
        bag = DagBag(dag_folder=str(ROOT / "dags" / "nontax_insertbill.py"))
        if bag.import_errors:
            raise RuntimeError(f"the DAG does not import: {bag.import_errors}")
        self.dag = bag.dags[DAG_ID]
        requests = DagBag(dag_folder=str(ROOT / "dags" / f"{REQUESTS_DAG_ID}.py"))
        if requests.import_errors:
            raise RuntimeError(f"the requests DAG does not import: {requests.import_errors}")
        self.requests_dag = requests.dags[REQUESTS_DAG_ID]
        for task in self.requests_dag.tasks:
            task.retry_delay = timedelta(seconds=RETRY_DELAY_S)
            task.max_retry_delay = timedelta(seconds=MAX_RETRY_DELAY_S)
            if task.task_id == "carry_out_requests":
                task.time_budget_s = TIME_BUDGET_S
        for task in self.dag.tasks:  # only the clocks change (module docstring)
            task.retry_delay = timedelta(seconds=RETRY_DELAY_S)
            task.max_retry_delay = timedelta(seconds=MAX_RETRY_DELAY_S)
            if task.task_id == INSERT_TASK:
                # A mapped task: its operator's arguments are the partial's (an attribute set
                # on the mapped task itself would never reach the batches).
                task.partial_kwargs["time_budget_s"] = TIME_BUDGET_S

    # one run -------------------------------------------------------------------------------

    def run(self, plan: RunPlan, *, rerun_rounds: int) -> RunResult:
        started = time.monotonic()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._runs: list[tuple[str, str]] = []  # (dag id, run id) of the plan's DAG runs
        self.admin.reset()
        self._sql("DELETE FROM nontax.access_token")
        self._sql("DELETE FROM nontax.api_quota")
        self._seed(plan)
        for _, rule in plan.faults:
            self.admin.add_fault(**rule)
        if plan.first_authorizations:
            self.admin.set_authorizations(plan.first_authorizations)
        if plan.insert_limit is not None:
            self.admin.configure(daily_insert_limit=plan.insert_limit)

        self._ask(plan, "refuse")
        dropper = (
            _OnInserts(self.admin, 2, lambda: _drop_batch_connections(self.dsn), "db-drop")
            if plan.db_drop
            else None
        )
        refuser = (
            _OnInserts(self.admin, 1, lambda: _refuse(self.dsn, plan), "refuse-mid-batch")
            if plan.refused_mid_batch
            else None
        )
        run_at = SAME_RUN_AT + timedelta(days=plan.run) if plan.same_run_id else None
        beside = (
            _RequestsBeside(
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

    def _seed(self, plan: RunPlan) -> None:
        from wechat_nontax.issuing.bill import Order
        from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID

        now = int(time.time())
        bad = dict(plan.bad)
        orders = []
        for n, oid in enumerate(plan.order_ids):
            fields: dict[str, Any] = {
                "order_id": oid,
                "card_id": DEFAULT_CARD_ID,
                "appid": DEFAULT_APPID,
                "fee": 100 + n,
                "title": "混沌测试医院门诊收费",
                "billing_time": now - 3600,
                "billing_no": f"B{oid}",
                "billing_code": f"C{n:04d}",
                "pdf_path": f"{plan.run % 10}/{oid}.pdf",
            }
            pdf = MINIMAL_PDF
            kind = bad.get(oid)
            if kind == "title_empty":
                fields["title"] = ""
            elif kind == "title_control":
                fields["title"] = "门诊\x1b[31m收费"
            elif kind == "billing_time_ms":
                fields["billing_time"] = now * 1000
            elif kind == "billing_time_future":
                fields["billing_time"] = now + 30 * 86400
            elif kind == "fee_huge":
                fields["fee"] = 10**12
            elif kind == "pdf_not_pdf":
                pdf = b"<html>not a pdf</html>"
            elif kind == "pdf_empty":
                pdf = b""
            elif kind == "pdf_path_escape":
                fields["pdf_path"] = "../../../etc/passwd"
            elif kind == "billing_no_sql":
                fields["billing_no"] = f"'; DROP TABLE nontax.bill_order; -- {oid}"
            if kind != "pdf_missing" and kind != "pdf_path_escape":
                path = self.pdf_root / fields["pdf_path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(pdf)
            orders.append(Order(**fields))
        self.store.upsert_orders(orders, run_id=f"chaos-{plan.run}")

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
        self._runs.append((DAG_ID, dr.run_id))
        return dr

    def _requests_run(self) -> None:
        dr = self.airflow.run(self.requests_dag)
        self._runs.append((dr.dag_id, dr.run_id))

    def _instances_to_rerun(self, dr: Any, plan: RunPlan) -> list[tuple[str, int]]:
        """Red insert instances holding an order that a re-run can move: failed or due now."""
        red = self.airflow.red(dr.run_id, INSERT_TASK)
        if not red:
            return []
        batches = self.airflow.claimed_batches(dr.run_id)
        movable = self._movable(plan.order_ids)
        return [
            (INSERT_TASK, i)
            for i in red
            if i < len(batches) and any(oid in movable for oid in batches[i])
        ]

    def _rerun(self, dr: Any, instances: Iterable[tuple[str, int]]) -> None:
        """What a person does in the UI: clear the instances and their downstream tasks; the
        run goes on as the scheduler would take it."""
        self.airflow.clear_and_rerun(self.dag, dr, instances, RERUN_WITH)

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
            secret_hits += self._secret_hits_in_log(log_offset)
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

    def _secret_hits_in_log(self, offset: int) -> int:
        text = self._log_since(offset)
        return sum(text.count(secret) for secret in self.secrets)

    def scan_task_logs(self) -> int:
        """Secret occurrences in the task log files Airflow wrote under its home."""
        logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
        hits = 0
        for path in logs.rglob("*") if logs.exists() else ():
            if path.is_file():
                text = path.read_text("utf-8", "replace")
                hits += sum(text.count(secret) for secret in self.secrets)
        return hits


def take_snapshot(
    db: Any,
    admin: Any,
    order_ids: Sequence[str],
    *,
    token_expiries: int,
    final: bool,
    bad_orders: Iterable[str] = (),
    secret_hits: int = 0,
) -> Snapshot:
    """What the order database (`db`, a psycopg2 connection) and the sandbox (`admin`, a
    `SandboxAdmin`) say about `order_ids` right now."""
    ids = list(order_ids)
    rows = {}
    with db.cursor() as cur:
        cur.execute(
            """
            SELECT o.order_id, o.status, o.reason, o.code, o.openid,
                   coalesce(o.not_before > now(), false) OR EXISTS (
                       SELECT 1 FROM nontax.bill_request r WHERE r.order_id = o.order_id
                          AND r.status = 'pending' AND r.not_before > now()),
                   coalesce(o.claimed_by IS NOT NULL AND o.claim_expires_at > now(), false),
                   coalesce(o.not_before > now() AND o.last_errcode IN (45009, 72057), false),
                   CASE WHEN o.not_before > now() AND o.last_errcode IN (45009, 72057)
                        THEN substring(o.last_errmsg from 'daily quota of ([a-z]+) used up') END,
                   (SELECT count(*) FROM nontax.bill_attempt a
                     WHERE a.order_id = o.order_id AND a.outcome = 'inserted')
              FROM nontax.bill_order o WHERE o.order_id = ANY(%s)
            """,
            (ids,),
        )
        for (
            oid,
            status,
            reason,
            code,
            openid,
            waiting,
            held,
            quota,
            quota_api,
            records,
        ) in cur.fetchall():
            rows[oid] = {"status": status, "reason": reason, "code": code, "openid": openid,
                         "waiting": waiting, "held": held, "quota": quota,
                         "quota_api": quota_api, "inserted_records": records}  # fmt: skip
        cur.execute("SELECT coalesce(sum(fetch_count), 0) FROM nontax.access_token")
        fetches = int(cur.fetchone()[0])
        cur.execute(
            "SELECT order_id, kind, status FROM nontax.bill_request WHERE order_id = ANY(%s) "
            "ORDER BY request_id",
            (ids,),
        )
        requests: dict[str, list[tuple[str, str]]] = {}
        for oid, kind, state in cur.fetchall():
            requests.setdefault(oid, []).append((kind, state))
        cur.execute("SELECT api, extract(epoch FROM stopped_since)::float8 FROM nontax.api_quota")
        quota_stops = [(api, since) for api, since in cur.fetchall()]
        cur.execute(
            "SELECT order_id, extract(epoch FROM min(requested_at))::float8 "
            "FROM nontax.bill_request WHERE order_id = ANY(%s) AND kind = 'refuse' "
            "AND status <> 'withdrawn' GROUP BY order_id",
            (ids,),
        )
        refusals_asked = dict(cur.fetchall())
    db.commit()
    return Snapshot(
        order_ids=ids,
        rows=rows,
        bills=admin.bills(),
        sandbox_orders=admin.orders(),
        uploaded_names={m.get("filename") or "" for m in admin.media()},
        tokens_issued=len(admin.tokens()),
        token_fetches=fetches,
        token_expiries=token_expiries,
        bad_orders=set(bad_orders),
        secret_hits=secret_hits,
        final=final,
        requests=requests,
        rejections={oid: r.get("repeats", 0) for oid, r in admin.rejections().items()},
        reimburse={
            oid: (
                r["reimburse_status"],
                sum(1 for h in r["history"] if h["to"] == "INVOICE_REIMBURSE_CANCEL"),
            )
            for oid, r in admin.statuses().items()
        },
        call_log=admin.call_log(),
        quota_stops=quota_stops,
        refusals_asked=refusals_asked,
    )


def secrets_in_order_db(db: Any, secrets: Sequence[str]) -> int:
    """Occurrences of `secrets` in the order database's free texts: reasons, errmsgs, history."""
    with db.cursor() as cur:
        cur.execute(
            """
            SELECT (SELECT count(*) FROM nontax.bill_order o, unnest(%(s)s::text[]) s
                     WHERE strpos(concat_ws(' ', o.reason, o.last_errmsg, o.s_pdf_media_id,
                                            o.code, o.openid), s) > 0)
                 + (SELECT count(*) FROM nontax.bill_attempt a, unnest(%(s)s::text[]) s
                     WHERE strpos(coalesce(a.errmsg, ''), s) > 0)
            """,
            {"s": list(secrets)},
        )
        hits = int(cur.fetchone()[0])
    db.commit()
    return hits


def _with_dbname(uri: str, dbname: str) -> str:
    base, _, _ = uri.partition("?")
    return f"{base.rpartition('/')[0]}/{dbname}"


# -- the table ----------------------------------------------------------------------------------

_HEAD = (
    f"{'run':>4} {'orders':>6} {'faults (hits)':<48} {'hits':>4} {'exp':>3} {'fetch':>5} "
    f"{'ins':>3} {'dup':>3} {'end':>3} {'due':>3} {'dag':>3} {'re':>2} {'s':>5}  violations"
)


# How the table names the faults (the summary uses the full names).
SHORT = {
    "latency": "latency", "latency_spike": "spike", "http_5xx": "5xx", "timeout": "timeout",
    "busy": "-1", "busy_order": "-1x4", "invoice_busy": "72036", "minute_quota": "45011",
    "daily_quota": "45009", "token_expire": "expiry", "lost_answer": "lost",
    "unauthorized": "72038", "rejected": "72035", "db_drop": "db-drop",
    "refuse": "refused", "void": "voided",
    "late_auth": "auth-late", "refuses": "refuse", "insert_limit": "72057",
    "request_quota": "req-45009", "auth_quota": "auth-45009", "refuse_mid_batch": "refuse-mid",
    "same_run_id": "one-run-id",
}  # fmt: skip


LEGEND = (
    "faults: sandbox fault rules and WeChat refusals, with how often each hit (and the "
    "requests carried out: refused, voided); exp: token "
    "expiries injected; fetch: token fetches\n"
    "orders at the end: ins inserted, dup duplicate (answer lost after WeChat recorded the "
    "bill), end ended with a reason (invalid, failed, rejected, refused, cancelled), due still "
    "due and waiting\n"
    "dag: DAG runs; re: instances re-run by the person on duty; s: seconds"
)


def format_row(r: RunResult) -> str:
    faults = " ".join(
        [f"{SHORT.get(k, k)}:{n}" for k, n in sorted(r.fault_hits.items())]
        + [f"{SHORT[k]}:{n}" for k, n in sorted(r.requests_done.items())]
    )
    ended = sum(n for s, n in r.statuses.items() if s in NEEDS_REASON - {Status.DUPLICATE})
    due = sum(n for s, n in r.statuses.items() if s in Status.DUE)
    return (
        f"{r.plan.run:>4} {len(r.plan.order_ids):>6} {faults[:48]:<48} "
        f"{sum(r.fault_hits.values()):>4} {r.token_expiries:>3} {r.token_fetches:>5} "
        f"{r.statuses.get(Status.INSERTED, 0):>3} {r.statuses.get(Status.DUPLICATE, 0):>3} "
        f"{ended:>3} "
        f"{due:>3} {r.dag_runs:>3} {r.reruns:>2} {r.seconds:>5.1f}  {len(r.violations)}"
    )


@dataclass
class Summary:
    runs: int
    orders: int
    faults_injected: int
    fault_kinds: Counter
    violations: int
    secret_occurrences: int
    seconds: float
    statuses: Counter
    dag_runs: int = 0
    reruns: int = 0
    bad_orders: int = 0
    interrupted: bool = False
    requests_done: Counter = field(default_factory=Counter)
    quota_waiting: int = 0

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.fault_kinds.items()))
        statuses = ", ".join(f"{k} {n}" for k, n in sorted(self.statuses.items()))
        return (
            f"runs: {self.runs}, orders: {self.orders}, faults injected: {self.faults_injected}, "
            f"invariant violations: {self.violations}, secret occurrences: "
            f"{self.secret_occurrences}, duration: {self.seconds:.0f} s"
            f"{' (interrupted)' if self.interrupted else ''}\n"
            f"DAG runs: {self.dag_runs}, instances re-run by the person on duty: {self.reruns}, "
            f"orders seeded with bad data: {self.bad_orders}\n"
            f"faults by kind (hits): {kinds}\n"
            f"requests carried out: "
            f"{', '.join(f'{k} {n}' for k, n in sorted(self.requests_done.items())) or '-'}\n"
            f"orders by final status: {statuses} ({self.quota_waiting} of the due ones waiting "
            "for a daily quota's reset)"
        )


# -- the command --------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[IO[str]]:
    """Send this process's stdout/stderr (Airflow's console) to `path`; yield the real stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield out
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close()


_STOP = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def run_chaos(
    runs: int,
    seed: int,
    *,
    pg: str = DEFAULT_PG,
    workdir: Path | None = None,
    rerun_rounds: int = 2,
    min_orders: int = 16,
    max_orders: int = 32,
    first_run: int = 0,
    out: IO[str] | None = None,
) -> Summary:
    """Run the chaos in this process; prints the table to `out`; returns the summary."""
    for path in ("include", "dags"):
        if str(ROOT / path) not in sys.path:
            sys.path.insert(0, str(ROOT / path))
    workdir = (
        workdir or ROOT / ".airflow" / "chaos" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: list[RunResult] = []
    log_path = workdir / "airflow-output.log"
    with _output_to(log_path) as real_out:
        out = out or real_out
        print(f"chaos: {runs} runs, seed {seed}; Airflow's output: {log_path}", file=out)
        with Chaos(pg=pg, workdir=workdir) as chaos:
            print(f"order database {chaos.db_name}, sandbox {chaos.sandbox_process.url}", file=out)
            print(LEGEND, file=out)
            print(_HEAD, file=out)
            for run in range(first_run, first_run + runs):
                # Airflow's task runner swallows a Ctrl-C inside a task (the task fails) and
                # takes SIGTERM over: ask for a stop, and stop after the run.
                signal.signal(signal.SIGINT, _request_stop)
                signal.signal(signal.SIGTERM, _request_stop)
                if _STOP.is_set():
                    break
                plan = plan_run(seed, run, min_orders=min_orders, max_orders=max_orders)
                result = chaos.run(plan, rerun_rounds=rerun_rounds)
                if _STOP.is_set():
                    print(f"interrupted during run {run}: not counted", file=out)
                    break
                results.append(result)
                print(format_row(result), file=out)
                for violation in result.violations:
                    print(f"       ! {violation}", file=out)
                if result.violations:
                    print(f"       (again: --seed {seed} --first-run {run} --runs 1)", file=out)
            task_log_hits = chaos.scan_task_logs()
        if task_log_hits:
            print(f"       ! {task_log_hits} secret occurrences in Airflow's task logs", file=out)
        summary = Summary(
            runs=len(results),
            orders=sum(len(r.plan.order_ids) for r in results),
            faults_injected=sum(sum(r.fault_hits.values()) for r in results),
            fault_kinds=sum((r.fault_hits for r in results), Counter()),
            violations=sum(len(r.violations) for r in results) + (1 if task_log_hits else 0),
            secret_occurrences=task_log_hits + sum(r.secret_hits for r in results),
            seconds=time.monotonic() - started,
            statuses=sum((r.statuses for r in results), Counter()),
            dag_runs=sum(r.dag_runs for r in results),
            reruns=sum(r.reruns for r in results),
            bad_orders=sum(len(r.plan.bad) for r in results),
            interrupted=_STOP.is_set(),
            requests_done=sum((r.requests_done for r in results), Counter()),
            quota_waiting=sum(r.quota_waiting for r in results),
        )
        print(summary, file=out)
        if not summary.violations:  # keep the output and the summary; the rest only for a look
            for scratch in ("pdfs", "airflow"):
                shutil.rmtree(workdir / scratch, ignore_errors=True)
        (workdir / "summary.json").write_text(
            json.dumps(
                {
                    "runs": summary.runs,
                    "seed": seed,
                    "orders": summary.orders,
                    "faults_injected": summary.faults_injected,
                    "fault_kinds": dict(summary.fault_kinds),
                    "violations": summary.violations,
                    "secret_occurrences": summary.secret_occurrences,
                    "seconds": round(summary.seconds, 1),
                    "statuses": dict(summary.statuses),
                    "dag_runs": summary.dag_runs,
                    "reruns": summary.reruns,
                    "bad_orders": summary.bad_orders,
                    "requests_done": dict(summary.requests_done),
                    "waiting_for_quota": summary.quota_waiting,
                },
                indent=2,
            )
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nontax_dev.chaos", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--runs", type=int, default=int(os.environ.get("RUNS", 200)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SEED", 1)))
    parser.add_argument(
        "--first-run", type=int, default=0, help="start at this run (repeat one: --runs 1)"
    )
    parser.add_argument("--rerun-rounds", type=int, default=2)
    parser.add_argument("--min-orders", type=int, default=16)
    parser.add_argument("--max-orders", type=int, default=32)
    parser.add_argument(
        "--pg",
        default=os.environ.get("NONTAX_TEST_PG", DEFAULT_PG),
        help="a Postgres server where a database may be created (default: NONTAX_TEST_PG, "
        "else the local server)",
    )
    parser.add_argument("--workdir", type=Path, help="where logs and PDFs go")
    args = parser.parse_args(argv)
    try:
        summary = run_chaos(
            args.runs,
            args.seed,
            pg=args.pg,
            workdir=args.workdir,
            rerun_rounds=args.rerun_rounds,
            min_orders=args.min_orders,
            max_orders=args.max_orders,
            first_run=args.first_run,
        )
    except KeyboardInterrupt:
        print("chaos: interrupted (the sandbox and the order database are cleaned up)")
        return 130
    if summary.interrupted:
        return 130
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
