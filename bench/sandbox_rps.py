"""How many insertbill calls per second the WeChat sandbox serves (latency faults off).

Starts the sandbox as its own process (or uses --url), takes a token, uploads one PDF per order,
then sends N insertbill calls for N distinct orders from a pool of threads, each thread with its
own requests.Session (keep-alive). Prints one JSON line with `insertbill_rps` and the settings.

    PYTHONPATH=include .venv/bin/python bench/sandbox_rps.py [--n 3000] [--threads 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "include"))

from cpu_account import own_cpu_s
from wechat_sandbox.client import SandboxAdmin, SandboxWeChat, insertbill_body
from wechat_sandbox.process import start_sandbox

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + b"0" * 4000 + b"\n%%EOF\n"


def run_pool(
    threads: int, items: list, call: Callable[[requests.Session, object], int]
) -> tuple[float, Counter, list[float]]:
    """Send every item once; returns (seconds, errcodes, latencies in ms)."""
    local = threading.local()
    lock = threading.Lock()
    codes: Counter = Counter()
    latencies: list[float] = []
    feed = iter(items)

    def worker() -> None:
        session = local.session = requests.Session()
        mine: list[float] = []
        mine_codes: Counter = Counter()
        while True:
            with lock:
                item = next(feed, None)
            if item is None:
                break
            started = time.perf_counter()
            try:
                code = call(session, item)
            except requests.RequestException as exc:
                code = type(exc).__name__
            mine.append((time.perf_counter() - started) * 1000)
            mine_codes[code] += 1
        session.close()
        with lock:
            latencies.extend(mine)
            codes.update(mine_codes)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return time.perf_counter() - started, codes, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000, help="orders (distinct insertbill calls)")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--url", help="use a running sandbox instead of starting one")
    parser.add_argument("--admin-token", help="with --url: its admin token (it printed it)")
    args = parser.parse_args()

    proc = None if args.url else start_sandbox()
    url = args.url or proc.url
    try:
        admin = proc.admin() if proc else SandboxAdmin(url, admin_token=args.admin_token)
        admin.reset()
        wx = SandboxWeChat(url)
        token = wx.access_token()
        params = f"?access_token={token}"
        orders = [f"bench-{i:06d}" for i in range(args.n)]

        media: dict[str, str] = {}

        def setpdf(session: requests.Session, order_id: object) -> object:
            answer = session.post(
                f"{url}/card/invoice/platform/setpdf{params}",
                files={"pdf": ("bill.pdf", PDF, "application/pdf")},
                timeout=30,
            ).json()
            media[str(order_id)] = answer.get("s_media_id", "")
            return answer["errcode"]

        setpdf_s, setpdf_codes, _ = run_pool(args.threads, orders, setpdf)

        headers = {"Content-Type": "application/json"}
        bodies = [
            json.dumps(insertbill_body(order_id, media[order_id])).encode() for order_id in orders
        ]

        def insertbill(session: requests.Session, body: object) -> object:
            answer = session.post(
                f"{url}/nontax/insertbill{params}", data=body, headers=headers, timeout=30
            )
            return answer.json()["errcode"]

        cpu_before = own_cpu_s(proc.pid) if proc else None
        insert_s, insert_codes, latencies = run_pool(args.threads, bodies, insertbill)
        cpu_after = own_cpu_s(proc.pid) if proc else None
        server_cpu = None
        if cpu_before is not None and cpu_after is not None:
            used = cpu_after - cpu_before
            server_cpu = {
                "cpu_s": round(used, 2),
                "busy_share": round(used / insert_s, 2),
                "ms_per_insertbill": round(used * 1000 / args.n, 3),
            }
        state = admin.state()
        result = {
            "insertbill_rps": round(args.n / insert_s, 1),
            "setpdf_rps": round(args.n / setpdf_s, 1),
            "n": args.n,
            "threads": args.threads,
            "insertbill_errcodes": {str(k): v for k, v in insert_codes.items()},
            "setpdf_errcodes": {str(k): v for k, v in setpdf_codes.items()},
            "latency_ms": {
                "mean": round(statistics.fmean(latencies), 2),
                "p50": percentile(latencies, 0.50),
                "p95": percentile(latencies, 0.95),
                "p99": percentile(latencies, 0.99),
            },
            "server_during_insertbill": server_cpu,
            "bills_recorded": state["bills"],
            "faults": len(state["faults"]),
            "client": "requests.Session per thread, keep-alive, same machine",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sandbox": url if args.url else "started by bench (python -m wechat_sandbox)",
        }
        print(json.dumps(result))
        ok = insert_codes.get(0) == args.n and state["bills"] == args.n
        return 0 if ok else 1
    finally:
        if proc is not None:
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
