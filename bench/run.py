"""`make bench`: the pipeline against the raw-client ceiling and a per-order DAG, in one go.

One local Airflow (the `make up` stack: api-server, scheduler with LocalExecutor, dag-processor,
triggerer, Postgres metadata) whose dags folder holds the pipeline's DAG and `per_order_dag.py`,
one sandbox with a fixed latency on every call, and then, in this order:
  1. the ceiling: a plain client, the same calls in flight as the pipeline (pool slots x workers),
     taking turns with the pipeline at 10,000 orders (`--repeats` times, the best of each counts);
     the pipeline at 1,000 orders once; each run timed from the trigger to the run's end, with
     where its time went (each task's first start and last end);
  2. the per-order DAG at 1,000 orders (Airflow's mapping limit is 1,024);
  3. costs: the DAG file's parse time, the claim on 20,000 and 1,000,000 row tables, the peak
     memory of the worker processes during each pipeline run, token fetches per run;
  4. the Bills view at 1,000,000 orders (bench/bills_view.py): each page's answer time through
     an api-server of its own, and each of its queries' plans;
  5. the Celery row: the same stack on CeleryExecutor (`make up EXECUTOR=celery WORKERS=2`: two
     `airflow celery worker` processes on the local Redis, database 3, keys of its own), the same
     10,000 orders `--repeats` times (the best counts), right after the LocalExecutor runs of the
     same `make bench`; `celery_vs_local` is its orders/s over the LocalExecutor row's.
Results go to bench/results.json and bench/orders_per_s.png. Sizes are settable (--help).
`--only bills` runs the Bills row alone (on a stack of its own) and updates only its keys there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


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
        for proc in self.stack.processes():
            try:
                if "scheduler" in " ".join(proc.cmdline()):
                    return proc
            except psutil.Error:
                continue
        return None

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
    from nontax_tools.bill_pdf import render_bill_pdf
    from wechat_nontax.store import OrderStore

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


def count_inserted(dsn: str, prefix: str) -> int:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM nontax.bill_order WHERE status = 'inserted' AND order_id LIKE %s",
            (f"{prefix}%",),
        )
        (count,) = cur.fetchone()
    conn.close()
    return int(count)


def pipeline_run(stack, conf: dict, label: str, n: int, say) -> dict:
    """N orders loaded, one run of the pipeline timed, with its memory and token fetches."""
    dsn = stack.orders_dsn
    load_orders(dsn, stack.pdf_root, label, n)
    fetched = token_fetches(dsn)
    with WorkerMemory(stack) as memory:
        run = timed_run(stack, "nontax_insertbill", conf, timeout=1800)
    run.update(
        orders=n,
        inserted=count_inserted(dsn, label),
        orders_per_s=round(n / run["seconds"], 1),
        peak_rss_mb=round(memory.peak_mb, 1),
        peak_rss_one_worker_mb=round(memory.peak_one_mb, 1),
        token_fetches=token_fetches(dsn) - fetched,
        load_avg_1m=round(os.getloadavg()[0], 2),  # how busy the shared machine was
    )
    say(f"pipeline {label}: {run}")
    return run


def celery_row(config, conf: dict, args, say) -> dict:
    """The same 10,000-order runs on a Celery stack (its workers on the local Redis)."""
    from nontax_tools.stack import Stack

    with Stack(config, say=say) as stack:
        workers = ", ".join(p.name for p in stack.workers())
        say(f"Celery stack up in {stack.started_in_s}s: {workers}")
        sandbox = stack.sandbox_admin()
        sandbox.add_fault(endpoint="*", kind="latency", latency_ms=args.latency_ms)
        runs = [pipeline_run(stack, conf, f"C10K{r}", args.large, say) for r in range(args.repeats)]
        best = max(runs, key=lambda r: r["orders_per_s"])
        hosts = {t["hostname"] for t in stack.api.task_instances(best["run_id"])
                 if t["task_id"] == "issue_bills"}  # fmt: skip
        sandbox.close()
    return {
        "workers": config.workers,
        "worker_concurrency": config.worker_concurrency,
        "pipeline_10k": best,
        "pipeline_10k_samples": [r["orders_per_s"] for r in runs],
        "batches_ran_on": sorted(hosts),
        "stack_up_s": stack.started_in_s,
    }


def _wait_for_dag(api, dag_id: str, timeout: float = 120) -> None:
    from nontax_tools.airflow_api import AirflowApiError

    deadline = time.monotonic() + timeout
    while True:
        try:
            api.dag(dag_id)
            return
        except AirflowApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def timed_run(stack, dag_id: str, conf: dict, *, timeout: float) -> dict:
    """Trigger, wait, and time from the trigger to the end of the run (its last task)."""
    api = stack.api
    triggered = time.time()
    run_id = api.trigger(conf, dag_id=dag_id)
    run = api.wait_run(run_id, timeout=timeout, poll_s=0.5, dag_id=dag_id)
    # The run's own end (its last task done), not a listing of its task instances: a per-order
    # run has more instances than the API returns in one page.
    finished = _ts(run.get("end_date")) or time.time()
    return {
        "run_id": run_id,
        "state": run["state"],
        "seconds": round(finished - triggered, 2),
        "timeline_s": timeline(api.task_instances(run_id, dag_id=dag_id), triggered),
    }


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
        "per-order DAG\n1,000",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--per-order", type=int, default=1000, help="0: skip the per-order DAG")
    parser.add_argument("--batch-size", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--pool-slots", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="ceiling and large run, best of")
    parser.add_argument("--claim-rows", type=int, nargs="*", default=[20_000, 1_000_000])
    parser.add_argument("--celery-workers", type=int, default=2, help="0: skip the Celery row")
    parser.add_argument("--bills-orders", type=int, default=1_000_000, help="0: skip the row")
    parser.add_argument("--fresh-bills", action="store_true", help="build the big table anew")
    parser.add_argument("--only", choices=["bills"], help="run this row alone")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--plot", type=Path, default=BENCH / "orders_per_s.png")
    args = parser.parse_args(argv)

    from ceiling import ceiling, demo_orders
    from claim_cost import claim_cost
    from nontax_tools.bill_pdf import render_bill_pdf
    from nontax_tools.stack import Stack, StackConfig, free_port
    from parse_time import parse_ms

    state = ROOT / ".run" / "bench"
    shutil.rmtree(state, ignore_errors=True)
    dags = state / "dags"
    dags.mkdir(parents=True)
    for dag_file in (ROOT / "dags" / "nontax_insertbill.py", BENCH / "per_order_dag.py"):
        (dags / dag_file.name).symlink_to(dag_file)
    in_flight = args.pool_slots * args.workers
    settings = dict(
        port=free_port(),
        sandbox_port=None,
        pool_slots=args.pool_slots,
        parallelism=max(8, args.pool_slots + 4),
        worker_log_port=free_port(),
        trigger_log_port=free_port(),
        scheduler_health_port=free_port(),
        drop_databases_on_down=True,
        # A schedule whose latest tick is before the DAG's start date: unpausing the DAG starts
        # no scheduled run, which would claim the first measured run's orders as they load.
        extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "NONTAX_SCHEDULE": "0 0 29 2 *"},
    )
    config = StackConfig(
        state_dir=state / "stack",
        orders_db_name="nontax_bench",
        meta_db_name="airflow_bench_meta",
        **settings,
    )
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

    if args.only == "bills":
        with Stack(config, say=say) as stack:
            bills(stack)
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        kept.update({k: results[k] for k in ("bills_view_1m", "bills_view_ms_1m")})
        args.out.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
        print(f"bills_view_ms_1m             {results['bills_view_ms_1m']}")
        print(f"written: {args.out}")
        return 0
    with Stack(config, say=say) as stack:
        say(f"stack up in {stack.started_in_s}s at {stack.url}")
        sandbox = stack.sandbox_admin()
        sandbox.add_fault(endpoint="*", kind="latency", latency_ms=args.latency_ms)
        dsn = stack.orders_dsn

        conf = {"batch_size": args.batch_size, "min_batches": args.pool_slots,
                "workers": args.workers}  # fmt: skip

        def pipeline(label: str, n: int) -> dict:
            return pipeline_run(stack, conf, label, n, say)

        # The ceiling and the large run take turns, `repeats` times, and the best of each
        # counts: on a shared machine noise only ever slows a run down.
        ceilings, larges = [], []
        for round_ in range(args.repeats):
            orders = demo_orders(args.large, f"CEIL{round_}")
            out = ceiling(stack.sandbox_url, orders, render_bill_pdf(orders[0]),
                          in_flight=in_flight, processes=args.pool_slots)  # fmt: skip
            say(f"ceiling: {out}")
            if out["failed"]:
                raise SystemExit(f"the ceiling's client failed: {out['failures']}")
            ceilings.append(out)
            if round_ == 0:
                results["pipeline_1k"] = pipeline("P1K", args.small)
            larges.append(pipeline(f"P10K{round_}", args.large))
        # For scale: the same client in one process (bound to about one core by its interpreter
        # lock), once.
        orders = demo_orders(args.large, "ONE")
        one = ceiling(stack.sandbox_url, orders, render_bill_pdf(orders[0]), in_flight=in_flight)
        say(f"plain client, one process: {one}")
        results["plain_client_one_process"] = one
        results["ceiling"] = max(ceilings, key=lambda r: r["orders_per_s"])
        results["ceiling_samples"] = [r["orders_per_s"] for r in ceilings]
        results["ceiling_orders_per_s"] = results["ceiling"]["orders_per_s"]
        results["pipeline_10k"] = max(larges, key=lambda r: r["orders_per_s"])
        results["pipeline_10k_samples"] = [r["orders_per_s"] for r in larges]
        results["token_fetches_per_run"] = max(
            r["token_fetches"] for r in (results["pipeline_1k"], *larges)
        )

        if args.per_order:
            load_orders(dsn, stack.pdf_root, "PER", args.per_order)
            _wait_for_dag(stack.api, "bench_per_order")
            stack.api.set_paused(False, dag_id="bench_per_order")
            run = timed_run(stack, "bench_per_order", {}, timeout=3600)
            run.update(
                orders=args.per_order,
                inserted=count_inserted(dsn, "PER"),
                orders_per_s=round(args.per_order / run["seconds"], 2),
            )
            say(f"per-order DAG: {run}")
            results["per_order_dag"] = run
        results["sandbox_bills"] = len(sandbox.bills())
        if args.bills_orders:
            bills(stack)

    results["parse"] = parse_ms()
    say(f"parse: {results['parse']}")
    for rows in args.claim_rows:
        cost = claim_cost(server, rows)
        results[f"claim_{rows}"] = cost
        say(f"claim at {rows} rows: {cost['claim_ms']} ms")

    if args.celery_workers:
        celery_config = StackConfig(
            state_dir=state / "celery-stack",
            orders_db_name="nontax_bench_celery",
            meta_db_name="airflow_bench_celery_meta",
            executor="celery",
            workers=args.celery_workers,
            **{**settings, "port": free_port()},
        )
        results["celery"] = celery_row(celery_config, conf, args, say)

    small, large = results["pipeline_1k"], results["pipeline_10k"]
    celery = results.get("celery", {}).get("pipeline_10k")
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
            "bills_view_ms_1m", "total_s")  # fmt: skip
    for key in keys:
        print(f"{key:<28} {results.get(key)}")
    print(f"written: {args.out}, {args.plot}")
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(BENCH))
    sys.exit(main())
