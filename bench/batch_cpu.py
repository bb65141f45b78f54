"""CPU per order: one batch of the pipeline's issuing step against the plain client.

Both in this process, one after the other, against one sandbox (fixed latency), with the same
calls in flight: the plain client of `ceiling.py`, then `IssueBillsOperator.execute` on a batch
of due orders in a fresh order database (outside the scheduler: what a task process spends on
its orders, without Airflow's start-up). What the batch spends beyond the client is ours:
validation, reading the PDF, the token cache, the write-back of every result; and the order
database's server processes that answer the batch are counted too (`postgres_orders`, from
their own accounting: `cpu_account.CpuTracker`), beside the client as `pipeline_vs_client_cpu`.
Run it under py-spy to see where (`--gil`: only what holds the interpreter, i.e. CPU), or with
`--profile`: the batch under cProfile in every thread (each order runs in a thread of the batch's
pool, which cProfile alone would not see), the functions ranked by cumulative and by own time
written to bench/batch_profile.txt (cProfile slows the batch down; the ranking is what counts):

    PYTHONPATH=include .venv/bin/python bench/batch_cpu.py [--orders 2500] [--profile]
    PYTHONPATH=include .venv/bin/py-spy record --gil -o batch.svg -- \
        .venv/bin/python bench/batch_cpu.py
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parent
# The token cache keeps the token encrypted with Airflow's Fernet key: one for this process.
os.environ.setdefault(
    "AIRFLOW__CORE__FERNET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode()
)


def _timed(work) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"seconds": round(wall, 2), "cpu_s": round(cpu, 2)}


# The pipeline's modules, as pstats names them (file:line(function)).
OWN_CODE = r"^(issuing|hook|store|token_cache|validation|bill|operators)\.py"


@contextlib.contextmanager
def profiled_threads() -> Iterator[list[cProfile.Profile]]:
    """cProfile in this thread and in every thread started meanwhile (each gets a profile of
    its own, enabled in the thread: cProfile only sees the thread that enables it), each timed
    by its thread's CPU clock: the waits for WeChat's answers count nothing, as they cost no CPU."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original = threading.Thread.run

    def run(thread: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()
        try:
            original(thread)
        finally:
            profile.disable()

    main = cProfile.Profile(time.thread_time)
    profiles.append(main)
    threading.Thread.run = run  # type: ignore[method-assign]
    main.enable()
    try:
        yield profiles
    finally:
        main.disable()
        threading.Thread.run = original  # type: ignore[method-assign]


def profile_report(profiles: list[cProfile.Profile], top: int = 40) -> str:
    """The threads' profiles merged: the top functions by cumulative CPU time (a function and
    what it calls), then by own CPU time."""
    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for profile in profiles[1:]:
        with contextlib.suppress(TypeError):  # a thread that never ran anything
            stats.add(profile)
    stats.strip_dirs()
    out.write("== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(top)
    out.write("== by own time ==\n")
    stats.sort_stats("tottime").print_stats(top)
    # The pipeline's own functions (not the HTTP client's, which the plain client runs too):
    # where each spends its CPU, in what it calls.
    out.write("== the pipeline's functions, by cumulative time: what each calls ==\n")
    stats.sort_stats("cumulative").print_callees(OWN_CODE, 25)
    return out.getvalue()


def batch_cpu(
    orders: int, workers: int, latency_ms: int, server_dsn: str, profile_to: Path | None = None
) -> dict:
    from ceiling import ceiling, demo_orders
    from cpu_account import CpuTracker
    from nontax_dev.airflow_run import orders_connection, sandbox_connection
    from nontax_dev.bill_pdf import render_bill_pdf
    from nontax_dev.pg import drop_database, fresh_database
    from run import CHECKOUT, load_orders, postmaster_pid
    from wechat_nontax.issuing.issue_operator import IssueBillsOperator
    from wechat_nontax.settings import INSERTBILL_DAG_ID, ISSUE_TASK_ID
    from wechat_nontax.store.migrate import migrate
    from wechat_sandbox.process import start_sandbox

    database = f"nontax_bench_cpu_{CHECKOUT}"
    dsn = fresh_database(server_dsn, database)
    sandbox = start_sandbox()
    try:
        sandbox.admin().add_fault(endpoint="*", kind="latency", latency_ms=latency_ms)
        migrate(dsn)
        sample = demo_orders(orders, "CPU")
        client = _timed(lambda: ceiling(sandbox.url, sample, render_bill_pdf(sample[0]),
                                        in_flight=workers))  # fmt: skip
        with tempfile.TemporaryDirectory() as pdf_root:
            load_orders(dsn, Path(pdf_root), "BATCH", orders)
            os.environ.update(
                AIRFLOW_CONN_NONTAX_ORDERS_DB=orders_connection(dsn),
                AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT=sandbox_connection(sandbox.url),
                NONTAX_PDF_ROOT=pdf_root,
            )
            ids = [o.order_id for o in demo_orders(orders, "BATCH")]
            operator = IssueBillsOperator(task_id=ISSUE_TASK_ID, order_ids=ids,
                                          max_workers=workers)  # fmt: skip
            # The first try of batch 0, as a task sees itself (its holder is made from this).
            ti = SimpleNamespace(
                dag_id=INSERTBILL_DAG_ID, run_id="bench-cpu", task_id=ISSUE_TASK_ID,
                map_index=0, try_number=1, max_tries=2,
            )  # fmt: skip
            context = {"run_id": "bench-cpu", "ti": ti}
            # The order database's server processes that answer the batch (its write-backs).
            server = CpuTracker({}, postmaster_pid(dsn), {database: "postgres_orders"})
            with server:
                if profile_to is None:
                    batch = _timed(lambda: operator.execute(context))
                else:
                    with profiled_threads() as profiles:
                        batch = _timed(lambda: operator.execute(context))
            # The tracker's sweeps ran in a thread of this process meanwhile: not the batch's.
            batch["cpu_s"] = round(batch["cpu_s"] - server.reading_s, 2)
            batch["postgres_cpu_s"] = (
                server.report({}, orders)["roles"].get("postgres_orders", {}).get("cpu_s", 0.0)
            )
            if profile_to is not None:
                profile_to.write_text(profile_report(profiles), encoding="utf-8")
    finally:
        sandbox.stop()
        drop_database(server_dsn, database)
    per_order = {name: round(r["cpu_s"] / orders * 1000, 2) for name, r in
                 (("client", client), ("batch", batch))}  # fmt: skip
    per_order["postgres_orders"] = round(batch["postgres_cpu_s"] / orders * 1000, 2)
    per_order["batch_and_postgres"] = round(per_order["batch"] + per_order["postgres_orders"], 2)
    return {
        "orders": orders,
        "workers": workers,
        "latency_ms": latency_ms,
        "client": {**client, "orders_per_s": round(orders / client["seconds"], 1)},
        "batch": {**batch, "orders_per_s": round(orders / batch["seconds"], 1)},
        "cpu_ms_per_order": per_order,
        "batch_vs_client_cpu": round(per_order["batch"] / per_order["client"], 2),
        # The pipeline's CPU measure: the batch and its order database against the client alone.
        "pipeline_vs_client_cpu": round(per_order["batch_and_postgres"] / per_order["client"], 2),
        "profiled": profile_to is not None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument(
        "--profile", nargs="?", type=Path, const=BENCH / "batch_profile.txt", default=None,
        help="the batch under cProfile, its report to this file (bench/batch_profile.txt)",
    )  # fmt: skip
    args = parser.parse_args()
    server = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    result = batch_cpu(args.orders, args.workers, args.latency_ms, server, args.profile)
    print(json.dumps(result, indent=2))
    if args.profile:
        print(f"profile: {args.profile}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
