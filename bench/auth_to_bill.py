"""From a payer's authorisation to the bill at WeChat: p50/p95/max seconds, at the default
settings (the fast DAG `nontax_waiting` on its default schedule, every 2 minutes).

A stack of its own (LocalExecutor, the sandbox, the receiver, fresh databases, free ports) with
only the two issuing DAGs, the daily one never scheduled. `--payers` orders (1,000) are loaded
waiting for their payers; the payers authorise at random moments spread over `--minutes` (10),
and WeChat (the sandbox's pusher, `nontax_dev.payers.payer_answers`) pushes each event, signed
and encrypted, to the stack's receiver, which records it. Each is timed from the moment its push
starts (when WeChat would send it); the bill's time is the sandbox's `inserted_at`. What sets
the figure: the schedule's interval (an authorisation waits for the next tick, up to 2 minutes)
plus a run's own time (its claim, its batches' start and the inserts themselves). Also measured:
the receiver's answer times to those pushes while the runs work (`receiver_p50_ms`,
`receiver_p99_ms`), and an idle run (nothing due) of the DAG, its seconds and the claim's
buffer reads.

    .venv/bin/python bench/auth_to_bill.py [--payers 1000] [--minutes 10] [--latency-ms 50]

It updates its keys in bench/results.json (`auth_to_bill`, `auth_to_bill_p95_s`) and leaves the
others; `make bench` runs it after bench/run.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TARGET_P95_S = 300.0
# Databases marked by this checkout, as bench/run.py marks its own: two checkouts never share one.
CHECKOUT = hashlib.sha1(str(ROOT).encode()).hexdigest()[:6]  # noqa: S324 (a name, not a secret)


def load_waiting(dsn: str, pdf_root: Path, n: int) -> list[str]:
    from dataclasses import replace

    from ceiling import demo_orders
    from nontax_dev.bill_pdf import render_bill_pdf
    from wechat_nontax.store.orders import OrderStore

    orders = [replace(o, pdf_path="bench/bill.pdf") for o in demo_orders(n, "AUTH")]
    pdf = pdf_root / "bench" / "bill.pdf"
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf.write_bytes(render_bill_pdf(orders[0]))
    store = OrderStore(psycopg2.connect(dsn))
    try:
        ids = [o.order_id for o in orders]
        store.upsert_orders(orders, waiting_for_payer=set(ids))
    finally:
        store.close()
    return ids


def idle_claim_buffers(dsn: str) -> int:
    """Shared buffers the claim reads when nothing is due (EXPLAIN ANALYZE, rolled back)."""
    from wechat_nontax.store.holds import CLAIM_SQL

    idle = {"run_id": "bench-idle", "lease_s": 60, "limit": None, "targeted": False}
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {CLAIM_SQL}",
                        {**idle, "order_ids": []})  # fmt: skip
            plan = cur.fetchone()[0][0]
        conn.rollback()  # the claim took nothing, but it ran: nothing of it is kept
    finally:
        conn.close()
    top = plan["Plan"]
    return int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def measure(args, say) -> dict:
    from nontax_dev.payers import CallbackReceiver, payer_answers
    from nontax_dev.stack.config import StackConfig
    from nontax_dev.stack.stack import Stack
    from wechat_nontax.settings import WAITING_DAG_ID, WAITING_SCHEDULE_DEFAULT
    from wechat_sandbox.process import free_port

    state = ROOT / ".run" / "bench-auth"
    shutil.rmtree(state, ignore_errors=True)
    dags = state / "dags"
    dags.mkdir(parents=True)
    for name in ("nontax_insertbill.py", "nontax_waiting.py"):
        (dags / name).symlink_to(ROOT / "dags" / name)
    config = StackConfig(
        state_dir=state / "stack", orders_db_name=f"nontax_bench_auth_{CHECKOUT}",
        meta_db_name=f"airflow_bench_auth_meta_{CHECKOUT}", sandbox_port=None, port=free_port(),
        worker_log_port=free_port(), scheduler_health_port=free_port(),
        drop_databases_on_down=True, fresh_databases=True, unpause=False,
        extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "NONTAX_SCHEDULE": "0 0 29 2 *"},
    )  # fmt: skip
    with Stack(config, say=say) as stack:
        sandbox = stack.sandbox_admin()
        sandbox.add_fault(endpoint="*", kind="latency", latency_ms=args.latency_ms)
        ids = load_waiting(stack.orders_dsn, stack.pdf_root, args.payers)
        say(f"{len(ids)} orders waiting for their payers; {WAITING_DAG_ID} unpaused")
        stack.api.set_paused(False, dag_id=WAITING_DAG_ID)
        rng = random.Random(args.seed)
        span = args.minutes * 60
        moments = sorted(rng.uniform(0, span) for _ in ids)
        order = ids[:]
        rng.shuffle(order)
        receiver = CallbackReceiver.of_stack(stack)
        pusher = receiver.pusher()
        started = time.time()
        authorised: dict[str, float] = {}
        answer_s: list[float] = []
        undelivered = 0
        for order_id, moment in zip(order, moments, strict=True):
            time.sleep(max(0.0, started + moment - time.time()))
            url = f"https://sandbox.invalid/nontax/authorize?order_id={order_id}"
            answer = payer_answers(url, receiver=receiver, sandbox=sandbox, pusher=pusher)
            authorised[order_id] = answer.pushed_at
            answer_s.append(answer.push.seconds)
            undelivered += not answer.delivered
        pusher.close()
        say(f"all {len(ids)} payers' events pushed over {time.time() - started:.0f} s "
            f"({undelivered} not answered 'success')")  # fmt: skip
        deadline = time.time() + args.wait_minutes * 60
        while True:
            bills = {b["order_id"]: b for b in sandbox.bills()}
            if len(bills) >= len(ids) or time.time() > deadline:
                break
            time.sleep(5)
        delays = [bills[o]["inserted_at"] - authorised[o] for o in ids if o in bills]
        runs = stack.api.runs(dag_id=WAITING_DAG_ID, order_by="-start_date", limit=100)
        # An idle run: wait for the next tick after the last bill, then time it.
        time.sleep(130)
        idle = stack.api.runs(dag_id=WAITING_DAG_ID, order_by="-start_date", limit=1)[0]
        idle_s = _seconds(idle) if idle.get("end_date") else None
        buffers = idle_claim_buffers(stack.orders_dsn)
        bills_twice = sum(1 for s in sandbox.orders().values() if s["successes"] > 1)
        sandbox.close()
    return {
        "payers": len(ids),
        "minutes": args.minutes,
        "shortened": args.minutes != 10 or args.payers != 1000,
        "schedule": WAITING_SCHEDULE_DEFAULT,
        "latency_ms": args.latency_ms,
        "bills": len(delays),
        "bills_sent_twice": bills_twice,
        "p50_s": round(statistics.median(delays), 1) if delays else None,
        "p95_s": round(percentile(delays, 0.95), 1) if delays else None,
        "max_s": round(max(delays), 1) if delays else None,
        "target_p95_s": TARGET_P95_S,
        "events_undelivered": undelivered,
        "receiver_p50_ms": round(statistics.median(answer_s) * 1000, 1),
        "receiver_p99_ms": round(percentile(answer_s, 0.99) * 1000, 1),
        "runs": len(runs),
        "run_seconds_median": round(
            statistics.median(_seconds(r) for r in runs if r.get("end_date")), 1
        ),
        "idle_run_s": idle_s,
        "idle_claim_buffers": buffers,
        "command": "bench/auth_to_bill.py " + " ".join(args.argv),
    }


def _seconds(run: dict) -> float:
    from datetime import datetime

    start = datetime.fromisoformat(run["start_date"])
    end = datetime.fromisoformat(run["end_date"])
    return round((end - start).total_seconds(), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payers", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0, help="authorisations spread over")
    parser.add_argument("--wait-minutes", type=float, default=10.0, help="after the last one")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(argv)
    import sys

    args.argv = sys.argv[1:] if argv is None else argv
    begun = time.monotonic()
    say = lambda text: print(f"[{time.monotonic() - begun:6.1f}s] {text}", flush=True)  # noqa: E731
    row = measure(args, say)
    kept = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept["auth_to_bill"] = row
    kept["auth_to_bill_p95_s"] = row["p95_s"]
    args.out.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    for key, value in row.items():
        print(f"{key:<20} {value}")
    print(f"written: {args.out}")
    complete = row["bills"] == row["payers"] and not row["events_undelivered"]
    return 0 if complete and not row["bills_sent_twice"] else 1


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(BENCH))
    sys.exit(main())
