"""`make bench`: the pipeline against the raw-client ceiling and a per-order DAG, in one go.

Two stacks up at once, both warm: the local Airflow of `make up` (api-server, scheduler with
LocalExecutor, dag-processor, triggerer, Postgres metadata) whose dags folder holds the pipeline's
DAG and `per_order_dag.py`, and the same on CeleryExecutor (`make up EXECUTOR=celery WORKERS=2`:
two `airflow celery worker` processes on the local Redis, database 3, keys of its own), each
with its sandbox at a fixed latency on every call. Then, in this order:
  1. warm-up: the pipeline at 1,000 orders on each stack (each fetches its stack's one token,
     and the api-server answers its first task calls: 2-3 s more that once);
  2. three rows taking turns (`bench/schedule.py`: ceiling, LocalExecutor, Celery, then the
     reverse, `--repeats` rounds; the best of each counts, the median beside it), so that the
     machine's noise hits them alike: the ceiling (a plain client, the same calls in flight as
     the pipeline, pool slots x workers), and the pipeline at 10,000 orders on each stack, each
     run timed from the trigger to the run's end, with where its time went (each task's first
     start and last end, each batch's host and span); `celery_vs_local` is the Celery row's
     best orders/s over the LocalExecutor row's best;
  3. CPU per order, by whom (`bench/cpu_account.py`), of every pipeline run and every ceiling:
     the processes' own CPU accounting over the run. `cpu_ms_per_order_pipeline` (the batch
     processes plus the order database's Postgres) against `cpu_ms_per_order_ceiling` (the
     client's processes), the rest broken down by role (sandbox, Airflow's processes);
  4. the 1,000-order row on the warm LocalExecutor stack, then the per-order DAG at 500 orders
     (`--per-order`; Airflow's mapping limit is 1,024), the Celery stack down;
  5. costs: the DAG file's parse time, the claim on 20,000 and 1,000,000 row tables, the peak
     memory of the worker processes during each pipeline run, token fetches per run.
  6. the Bills view at 1,000,000 orders (bench/bills_view.py): each page's answer time through
     an api-server of its own, and each of its queries' plans.
  7. the backlog gauges at 1,000,000 orders (bench/backlog_gauges.py): a scrape's time and the
     plan of its statement.
Every stack starts on databases of its own created anew (an interrupted benchmark's are dropped,
its processes stopped), each measured run on orders of its own, and a run that did not issue
exactly the orders it was given is refused, naming the row (bench/own_orders.py): no figure of
one run is ever reported under another's name.
Results go to bench/results.json and bench/orders_per_s.png. Sizes are settable (--help).
`--only bills` runs the Bills row alone (on a stack of its own) and updates only its keys there;
`--only gauges` the gauges' row alone (no stack).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil
import psycopg2

from cpu_account import CpuTracker, mean_roles, own_cpu_s
from nontax_dev.stack.processes import command_of
from own_orders import OwnOrders, count_orders
from schedule import most_at_once, summary, turns
from wechat_nontax.settings import INSERTBILL_DAG_ID, ISSUE_TASK_ID

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# The benchmark's databases carry a mark of this checkout: two checkouts benchmarking on one
# Postgres server at once (each drops its databases at the end) never share one.
CHECKOUT = hashlib.sha1(str(ROOT).encode()).hexdigest()[:6]  # noqa: S324 (a name, not a secret)


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class WorkerMemory:
    """Samples the RSS of the scheduler's descendants (LocalExecutor workers and the task
    processes they run), or on Celery of the workers' (their pools and task processes), while a
    run goes: the peak of their sum, and the peak of the largest single one (what one batch
    costs, whatever the number of batches running at once)."""

    def __init__(self, stack, interval_s: float = 0.2):
        self.stack, self.interval_s = stack, interval_s
        self.peak_mb = 0.0
        self.peak_one_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _scheduler(self) -> psutil.Process | None:
        return next((p for p in self.stack.processes() if "scheduler" in command_of(p)), None)

    def _roots(self) -> list[psutil.Process]:
        workers = [w.process() for w in self.stack.workers()]
        return [w for w in workers if w is not None] or [p for p in [self._scheduler()] if p]

    def _sample(self) -> None:
        roots = self._roots()
        while roots and not self._stop.is_set():
            sizes = []
            for root in roots:
                with contextlib.suppress(psutil.Error):
                    for child in root.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            sizes.append(child.memory_info().rss)
            self.peak_mb = max(self.peak_mb, sum(sizes) / 2**20)
            self.peak_one_mb = max(self.peak_one_mb, max(sizes, default=0) / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def load_orders(dsn: str, pdf_root: Path, prefix: str, n: int) -> None:
    """N due orders sharing one bill PDF file (the pipeline still reads it once per order)."""
    from ceiling import demo_orders
    from nontax_dev.bill_pdf import render_bill_pdf
    from wechat_nontax.store.orders import OrderStore

    orders = demo_orders(n, prefix)
    pdf = pdf_root / "bench" / "bill.pdf"
    pdf.parent.mkdir(parents=True, exist_ok=True)
    if not pdf.exists():
        pdf.write_bytes(render_bill_pdf(orders[0]))
    from dataclasses import replace

    store = OrderStore(psycopg2.connect(dsn))
    try:
        for start in range(0, n, 5000):
            store.upsert_orders(
                [replace(o, pdf_path="bench/bill.pdf") for o in orders[start : start + 5000]]
            )
    finally:
        store.close()


def token_fetches(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(fetch_count), 0) FROM nontax.access_token")
        (count,) = cur.fetchone()
    conn.close()
    return int(count)


def postmaster_pid(dsn: str) -> int | None:
    """The Postgres server's main process (the parent of every backend), when it runs here."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (backend,) = cur.fetchone()
        return psutil.Process(backend).ppid()
    except psutil.Error:
        return None  # a server on another machine: its processes are not counted
    finally:
        conn.close()


def cpu_tracker(stack) -> CpuTracker:
    """CPU accounting of a stack's processes and its two databases' Postgres backends."""
    leaders = {p.pid: p.name for p in stack.state.procs if p.process() is not None}
    databases = {stack.config.orders_db_name: "postgres_orders",
                 stack.config.meta_db_name: "postgres_meta"}  # fmt: skip
    return CpuTracker(leaders, postmaster_pid(stack.orders_dsn), databases)


def batches(instances: list[dict], triggered: float) -> list[dict]:
    """The run's issue_bills instances: where each ran and when (seconds from the trigger)."""
    spans = []
    for ti in instances:
        start, end = _ts(ti.get("start_date")), _ts(ti.get("end_date"))
        if ti["task_id"] != ISSUE_TASK_ID or start is None or end is None:
            continue
        spans.append({"map_index": ti.get("map_index"), "hostname": ti.get("hostname"),
                      "start_s": round(start - triggered, 2),
                      "end_s": round(end - triggered, 2)})  # fmt: skip
    return sorted(spans, key=lambda b: b["map_index"] or 0)


def insert_calls(stack) -> int:
    """The insertbill calls the stack's sandbox has answered."""
    sandbox = stack.sandbox_admin()
    try:
        return sandbox.calls().get("insertbill", 0)
    finally:
        sandbox.close()


def own_orders(stack, row: str, label: str, n: int) -> Callable[[], int]:
    """N orders of a run's own (`label`) loaded, before the run and outside its measures; returns
    what checks, once the run ended, that it issued exactly those (`own_orders.OwnOrders`,
    raising NotItsOwnRun otherwise), and gives the number inserted."""
    dsn = stack.orders_dsn
    load_orders(dsn, stack.pdf_root, label, n)
    due = count_orders(dsn, label, "authorized")
    calls = insert_calls(stack)

    def issued() -> int:
        inserted = count_orders(dsn, label, "inserted")
        OwnOrders(row, n, due, inserted, insert_calls(stack) - calls).check()
        return inserted

    return issued


def pipeline_run(stack, conf: dict, label: str, n: int, say) -> dict:
    """N orders loaded, one run of the pipeline timed, with its memory, token fetches and the
    CPU each role spent on it."""
    dsn = stack.orders_dsn
    issued = own_orders(stack, f"pipeline {label}", label, n)
    fetched = token_fetches(dsn)
    with WorkerMemory(stack) as memory, cpu_tracker(stack) as cpu:
        run, instances = timed_run(stack, INSERTBILL_DAG_ID, conf, timeout=1800)
    spans = batches(instances, run.pop("triggered"))
    run.update(
        orders=n,
        inserted=issued(),
        orders_per_s=round(n / run["seconds"], 1),
        peak_rss_mb=round(memory.peak_mb, 1),
        peak_rss_one_worker_mb=round(memory.peak_one_mb, 1),
        token_fetches=token_fetches(dsn) - fetched,
        load_avg_1m=round(os.getloadavg()[0], 2),  # how busy the shared machine was
        batches=spans,
        batches_at_once=most_at_once([(b["hostname"], b["start_s"], b["end_s"]) for b in spans]),
        cpu=cpu.report({ti["id"]: ti["task_id"] for ti in instances if ti.get("id")}, n),
    )
    cpu_ms = run["cpu"]
    say(f"pipeline {label}: {run['orders_per_s']} orders/s, {run['seconds']} s, CPU ms per order "
        f"{cpu_ms['cpu_ms_per_order_pipeline']} (batch + order DB: "
        f"{role_ms(cpu_ms, 'batch')} + {role_ms(cpu_ms, 'postgres_orders')}), "
        f"{cpu_ms['cpu_ms_per_order_all']} (all), at once {run['batches_at_once']}")  # fmt: skip
    return run


def ceiling_run(stack, label: str, args, in_flight: int, say) -> dict:
    """The plain client once, with its own CPU and the sandbox's."""
    from ceiling import ceiling, demo_orders
    from nontax_dev.bill_pdf import render_bill_pdf

    orders = demo_orders(args.large, label)
    sandbox = next(p.pid for p in stack.state.procs if p.name == "sandbox")
    before = own_cpu_s(sandbox) or 0.0
    out = ceiling(stack.sandbox_url, orders, render_bill_pdf(orders[0]),
                  in_flight=in_flight, processes=args.pool_slots)  # fmt: skip
    out["sandbox_cpu_ms_per_order"] = round(
        ((own_cpu_s(sandbox) or before) - before) * 1000 / len(orders), 3
    )
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    say(f"ceiling {label}: {out}")
    if out["failed"]:
        raise SystemExit(f"the ceiling's client failed: {out['failures']}")
    return out


def role_ms(cpu: dict, role: str) -> float | None:
    """One role's ms per order in a run's CPU breakdown (None: no process of it ran)."""
    return cpu["roles"].get(role, {}).get("ms_per_order")


def row_result(runs: list[dict]) -> dict:
    """A row's runs: the best one in full, the summary of all (orders/s and CPU per order), and
    each run in brief, in measured order (how noisy each was beside what it measured)."""
    best = max(runs, key=lambda r: r["orders_per_s"])
    return {
        "best": best,
        "orders_per_s": summary([r["orders_per_s"] for r in runs]),
        "cpu_ms_per_order": summary([r["cpu"]["cpu_ms_per_order_pipeline"] for r in runs], 3),
        "runs": [
            {"orders_per_s": r["orders_per_s"], "seconds": r["seconds"],
             "cpu_ms_per_order_pipeline": r["cpu"]["cpu_ms_per_order_pipeline"],
             "machine_cpu_ms_per_order": r["cpu"]["machine_cpu_ms_per_order"],
             "load_avg_1m": r["load_avg_1m"], "batches_at_once": r["batches_at_once"],
             "batch_ms_per_order": role_ms(r["cpu"], "batch"),
             "postgres_orders_ms_per_order": role_ms(r["cpu"], "postgres_orders")}
            for r in runs
        ],
    }  # fmt: skip


def _wait_for_dag(api, dag_id: str, timeout: float = 120) -> None:
    from nontax_dev.airflow_api import AirflowApiError

    deadline = time.monotonic() + timeout
    while True:
        try:
            api.dag(dag_id)
            return
        except AirflowApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def timed_run(stack, dag_id: str, conf: dict, *, timeout: float) -> tuple[dict, list[dict]]:
    """Trigger, wait, and time from the trigger to the end of the run (its last task); also
    returns the run's task instances."""
    api = stack.api
    triggered = time.time()
    run_id = api.trigger(conf, dag_id=dag_id)
    run = api.wait_run(run_id, timeout=timeout, poll_s=0.5, dag_id=dag_id)
    # The run's own end (its last task done), not a listing of its task instances: a per-order
    # run has more instances than the API returns in one page.
    finished = _ts(run.get("end_date")) or time.time()
    instances = api.task_instances(run_id, dag_id=dag_id)
    return {
        "run_id": run_id,
        "state": run["state"],
        "triggered": triggered,
        "seconds": round(finished - triggered, 2),
        "timeline_s": timeline(instances, triggered),
    }, instances


def timeline(instances: list[dict], triggered: float) -> dict[str, list[float]]:
    """Where a run's time goes: each task's first start and last end, seconds from the trigger
    (a mapped task's instances together). The gaps between tasks are Airflow's scheduling and
    task start-up."""
    spans: dict[str, list[float]] = {}
    for ti in instances:
        start, end = _ts(ti.get("start_date")), _ts(ti.get("end_date"))
        if start is None or end is None:
            continue
        span = spans.setdefault(ti["task_id"], [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    return {task: [round(start - triggered, 2), round(end - triggered, 2)]
            for task, (start, end) in ordered}  # fmt: skip


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        f"ceiling: plain client\n{results['ceiling']['processes']} processes",
        "plain client\n1 process",
        "pipeline\n1,000",
        "pipeline\n10,000",
        f"pipeline 10,000\nCelery, {results['settings']['celery_workers']} workers",
        f"per-order DAG\n{results['settings']['sizes']['per_order']:,}",
    ]
    values = [
        results["ceiling_orders_per_s"],
        results.get("plain_client_one_process", {}).get("orders_per_s"),
        results["pipeline_orders_per_s_1k"],
        results["pipeline_orders_per_s"],
        results["celery_orders_per_s"],
        results["per_order_dag_orders_per_s"],
    ]
    colors = ["#999999", "#c4c4c4", "#4c9be8", "#1f6fbf", "#2f9e6e", "#e8894c"]
    shown = [bar for bar in zip(names, values, colors, strict=True) if bar[1]]  # skipped: None
    fig, ax = plt.subplots(figsize=(8.5, 4))
    bars = ax.bar([n for n, _, _ in shown], [v for _, v, _ in shown], color=[c for *_, c in shown])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("orders per second (upload + insert)")
    settings = results["settings"]
    ax.set_title(
        f"{settings['latency_ms']} ms per call, "
        f"{settings['in_flight']} calls in flight, {results['machine']['cpus']} cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def stack_configs(state: Path, pool_slots: int, celery_workers: int) -> tuple:
    """The benchmark's two stacks (LocalExecutor, and Celery with `celery_workers`), under a
    fresh state directory whose dags folder holds the pipeline's DAG and the per-order one, on
    fresh databases: an interrupted benchmark's stacks are stopped, its databases dropped."""
    from nontax_dev.stack.config import StackConfig
    from nontax_dev.stack.records import StackState
    from nontax_dev.stack.stack import stop_stack
    from wechat_sandbox.process import free_port

    for leftover in state.glob("*/stack.json"):
        recorded = StackState.load(leftover)
        if recorded is not None:
            print(f"{leftover.parent.name} of an interrupted benchmark: stopping what it left")
            stop_stack(recorded, grace_s=10, say=print)
    shutil.rmtree(state, ignore_errors=True)
    dags = state / "dags"
    dags.mkdir(parents=True)
    for dag_file in (ROOT / "dags" / "nontax_insertbill.py", BENCH / "per_order_dag.py"):
        (dags / dag_file.name).symlink_to(dag_file)

    def ports() -> dict:  # both stacks run at once: each on ports of its own
        return {"port": free_port(), "worker_log_port": free_port(),
                "scheduler_health_port": free_port()}  # fmt: skip

    settings = dict(
        sandbox_port=None,
        pool_slots=pool_slots,
        parallelism=max(8, pool_slots + 4),
        drop_databases_on_down=True,
        fresh_databases=True,
        # A schedule whose latest tick is before the DAG's start date: unpausing the DAG starts
        # no scheduled run, which would claim the first measured run's orders as they load.
        extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "NONTAX_SCHEDULE": "0 0 29 2 *"},
    )
    local = StackConfig(
        state_dir=state / "stack",
        orders_db_name=f"nontax_bench_{CHECKOUT}",
        meta_db_name=f"airflow_bench_meta_{CHECKOUT}",
        **settings,
        **ports(),
    )
    celery = StackConfig(
        state_dir=state / "celery-stack",
        orders_db_name=f"nontax_bench_celery_{CHECKOUT}",
        meta_db_name=f"airflow_bench_celery_meta_{CHECKOUT}",
        executor="celery",
        workers=celery_workers,
        **settings,
        **ports(),
    )
    return local, celery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10_000)
    # 500: its orders/s do not depend on the number (one mapped task per order, `parallelism`
    # at a time), and at 1,000 it took 8-11 minutes of the 15 `make bench` may take.
    parser.add_argument("--per-order", type=int, default=500, help="0: skip the per-order DAG")
    parser.add_argument("--batch-size", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--pool-slots", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="ceiling and large run, best of")
    parser.add_argument("--claim-rows", type=int, nargs="*", default=[20_000, 1_000_000])
    parser.add_argument("--celery-workers", type=int, default=2, help="0: skip the Celery row")
    parser.add_argument("--bills-orders", type=int, default=1_000_000, help="0: skip the row")
    parser.add_argument("--fresh-bills", action="store_true", help="build the big table anew")
    parser.add_argument("--gauges-orders", type=int, default=1_000_000, help="0: skip the row")
    parser.add_argument("--only", choices=["bills", "gauges"], help="run this row alone")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--plot", type=Path, default=BENCH / "orders_per_s.png")
    args = parser.parse_args(argv)

    from ceiling import ceiling, demo_orders
    from claim_cost import claim_cost
    from nontax_dev.bill_pdf import render_bill_pdf
    from nontax_dev.stack.stack import Stack
    from parse_time import parse_ms

    state = ROOT / ".run" / "bench"
    config, celery_config = stack_configs(state, args.pool_slots, args.celery_workers)
    in_flight = args.pool_slots * args.workers
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "latency_ms": args.latency_ms,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "pool_slots": args.pool_slots,
            "in_flight": in_flight,
            "executor": "LocalExecutor",
            "celery_workers": args.celery_workers,
            "min_batches": args.pool_slots,
            "repeats": args.repeats,
            "sizes": {"small": args.small, "large": args.large, "per_order": args.per_order},
        },
    }
    started = time.monotonic()
    say = lambda text: print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)  # noqa: E731
    server = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

    def bills(stack) -> None:
        from bills_view import bills_row

        row = bills_row(stack, server, n=args.bills_orders, fresh=args.fresh_bills, say=say)
        results["bills_view_1m"] = row
        results["bills_view_ms_1m"] = row["ms"]

    def gauges() -> None:
        from backlog_gauges import gauges_row

        row = gauges_row(server, n=args.gauges_orders, say=say)
        results["backlog_gauges_1m"] = {k: v for k, v in row.items() if k != "plan"}
        results["backlog_scrape_ms_1m"] = row["scrape_ms"]

    def only_these(keys: tuple[str, str]) -> int:
        """Update only the row's keys in the results file (`--only`)."""
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        kept.update({k: results[k] for k in keys})
        args.out.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
        print(f"{keys[1]:<28} {results[keys[1]]}")
        print(f"written: {args.out}")
        return 0

    if args.only == "gauges":
        gauges()
        return only_these(("backlog_gauges_1m", "backlog_scrape_ms_1m"))
    if args.only == "bills":
        with Stack(config, say=say) as stack:
            bills(stack)
        return only_these(("bills_view_1m", "bills_view_ms_1m"))
    conf = {"batch_size": args.batch_size, "min_batches": args.pool_slots,
            "workers": args.workers}  # fmt: skip
    with Stack(config, say=say) as stack:
        say(f"stack up in {stack.started_in_s}s at {stack.url}")
        sandbox = stack.sandbox_admin()
        sandbox.add_fault(endpoint="*", kind="latency", latency_ms=args.latency_ms)
        # Both stacks up and warm while the rows take turns: the one not measured idles, and
        # the machine's noise (other work on it, the load the benchmark itself leaves) hits
        # each row alike.
        celery_up = Stack(celery_config, say=say) if args.celery_workers else None
        with celery_up or contextlib.nullcontext():
            if celery_up is not None:
                workers = ", ".join(p.name for p in celery_up.workers())
                say(f"Celery stack up in {celery_up.started_in_s}s: {workers}")
                celery_sandbox = celery_up.sandbox_admin()
                celery_sandbox.add_fault(endpoint="*", kind="latency", latency_ms=args.latency_ms)
                celery_sandbox.close()
            results["pipeline_1k_first"] = pipeline_run(stack, conf, "W1K", args.small, say)
            celery_warm = (
                pipeline_run(celery_up, conf, "C1K", args.small, say) if celery_up else None
            )
            rows = ["ceiling", "local", *(["celery"] if celery_up else [])]
            runs: dict[str, list[dict]] = {row: [] for row in rows}
            for round_, row in turns(rows, args.repeats):
                if row == "ceiling":
                    runs[row].append(ceiling_run(stack, f"CEIL{round_}", args, in_flight, say))
                else:
                    on, prefix = (stack, "P10K") if row == "local" else (celery_up, "C10K")
                    runs[row].append(pipeline_run(on, conf, f"{prefix}{round_}", args.large, say))
            if celery_up is not None:
                celery = row_result(runs["celery"])
                hosts = {b["hostname"] for b in celery["best"]["batches"]}
                results["celery"] = {
                    "workers": celery_config.workers,
                    "worker_concurrency": celery_config.worker_concurrency,
                    "pipeline_1k": celery_warm,
                    "pipeline_10k": celery["best"],
                    "pipeline_10k_samples": celery["orders_per_s"]["samples"],
                    "orders_per_s": celery["orders_per_s"],
                    "cpu_ms_per_order": celery["cpu_ms_per_order"],
                    "runs": celery["runs"],
                    "batches_ran_on": sorted(h for h in hosts if h),
                    "stack_up_s": celery_up.started_in_s,
                }
        # For scale: the same client in one process (bound to about one core by its interpreter
        # lock), once.
        orders = demo_orders(args.large, "ONE")
        one = ceiling(stack.sandbox_url, orders, render_bill_pdf(orders[0]), in_flight=in_flight)
        say(f"plain client, one process: {one}")
        results["plain_client_one_process"] = one
        ceilings = runs["ceiling"]
        results["ceiling"] = max(ceilings, key=lambda r: r["orders_per_s"])
        results["ceiling_samples"] = [r["orders_per_s"] for r in ceilings]
        results["ceiling_orders_per_s"] = results["ceiling"]["orders_per_s"]
        results["ceiling_cpu_ms_per_order"] = summary([r["cpu_ms_per_order"] for r in ceilings], 3)
        local = row_result(runs["local"])
        results["pipeline_10k"] = local["best"]
        results["pipeline_10k_samples"] = local["orders_per_s"]["samples"]
        results["pipeline_10k_orders_per_s"] = local["orders_per_s"]
        results["pipeline_10k_cpu_ms_per_order"] = local["cpu_ms_per_order"]
        results["pipeline_10k_runs"] = local["runs"]
        # Warm, as the per-order DAG runs next: what a run of 1,000 costs in a running Airflow.
        results["pipeline_1k"] = pipeline_run(stack, conf, "P1K", args.small, say)
        results["token_fetches_per_run"] = max(
            r["token_fetches"]
            for r in (results["pipeline_1k_first"], *runs["local"], results["pipeline_1k"])
        )

        if args.per_order:
            from per_order_dag import PER_ORDER_PREFIX

            issued = own_orders(stack, "per-order DAG", PER_ORDER_PREFIX, args.per_order)
            _wait_for_dag(stack.api, "bench_per_order")
            stack.api.set_paused(False, dag_id="bench_per_order")
            run, _ = timed_run(stack, "bench_per_order", {}, timeout=3600)
            del run["triggered"]
            run.update(
                orders=args.per_order,
                inserted=issued(),
                orders_per_s=round(args.per_order / run["seconds"], 2),
            )
            say(f"per-order DAG: {run}")
            results["per_order_dag"] = run
        results["sandbox_bills"] = len(sandbox.bills())
        if args.bills_orders:
            bills(stack)
    if args.gauges_orders:
        gauges()

    results["parse"] = parse_ms()
    say(f"parse: {results['parse']}")
    for rows in args.claim_rows:
        cost = claim_cost(server, rows)
        results[f"claim_{rows}"] = cost
        say(f"claim at {rows} rows: {cost['claim_ms']} ms")

    small, large = results["pipeline_1k"], results["pipeline_10k"]
    celery = results.get("celery", {}).get("pipeline_10k")
    # CPU per order: the median over the row's runs (it moves little with the load, unlike
    # orders/s), the pipeline's batches and order database against the raw client's processes.
    pipeline_cpu = results["pipeline_10k_cpu_ms_per_order"]["median"]
    ceiling_cpu = results["ceiling_cpu_ms_per_order"]["median"]
    results["cpu_breakdown"] = {
        "pipeline_ms_per_order": mean_roles([r["cpu"] for r in runs["local"]]),
        "ceiling_ms_per_order": {
            "client": ceiling_cpu,
            "sandbox": summary([r["sandbox_cpu_ms_per_order"] for r in ceilings], 3)["median"],
        },
    }
    if celery:
        results["cpu_breakdown"]["celery_ms_per_order"] = mean_roles(
            [r["cpu"] for r in runs["celery"]]
        )
    per_order = results.get("per_order_dag")  # None with --per-order 0 (a quicker look)
    results.update(
        pipeline_orders_per_s=large["orders_per_s"],
        pipeline_orders_per_s_1k=small["orders_per_s"],
        pipeline_vs_ceiling=round(large["orders_per_s"] / results["ceiling_orders_per_s"], 3),
        pipeline_vs_one_process_client=round(
            large["orders_per_s"] / results["plain_client_one_process"]["orders_per_s"], 3
        ),
        per_order_dag_orders_per_s=per_order["orders_per_s"] if per_order else None,
        pipeline_vs_per_order_dag=(
            round(small["orders_per_s"] / per_order["orders_per_s"], 1) if per_order else None
        ),
        parse_ms=results["parse"]["parse_ms"],
        claim_ms_1m=results.get("claim_1000000", {}).get("claim_ms"),
        claim_ms_20k=results.get("claim_20000", {}).get("claim_ms"),
        peak_rss_mb_1k=small["peak_rss_mb"],
        peak_rss_mb_10k=large["peak_rss_mb"],
        cpu_ms_per_order_pipeline=pipeline_cpu,
        cpu_ms_per_order_ceiling=ceiling_cpu,
        cpu_pipeline_vs_ceiling=round(pipeline_cpu / ceiling_cpu, 2),
        cpu_ms_per_order_celery=results.get("celery", {}).get("cpu_ms_per_order", {}).get("median"),
        celery_orders_per_s=celery["orders_per_s"] if celery else None,
        celery_vs_local=round(celery["orders_per_s"] / large["orders_per_s"], 3)
        if celery
        else None,
        total_s=round(time.monotonic() - started, 1),
    )
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    plot(results, args.plot)
    keys = ("ceiling_orders_per_s", "pipeline_orders_per_s", "pipeline_vs_ceiling",
            "pipeline_vs_one_process_client",
            "per_order_dag_orders_per_s", "pipeline_vs_per_order_dag", "parse_ms",
            "claim_ms_1m", "claim_ms_20k", "peak_rss_mb_1k", "peak_rss_mb_10k",
            "token_fetches_per_run", "celery_orders_per_s", "celery_vs_local",
            "cpu_ms_per_order_pipeline", "cpu_ms_per_order_ceiling", "cpu_pipeline_vs_ceiling",
            "cpu_ms_per_order_celery", "bills_view_ms_1m", "backlog_scrape_ms_1m",
            "total_s")  # fmt: skip
    for key in keys:
        print(f"{key:<28} {results.get(key)}")
    print(f"written: {args.out}, {args.plot}")
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(BENCH))
    sys.exit(main())
