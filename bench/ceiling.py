"""The ceiling: a plain client, no Airflow, no database, against the same sandbox.

For each of N orders it uploads the PDF (setpdf) and inserts the bill (insertbill, the pipeline's
own body), with `in_flight` orders at once (one thread and keep-alive session each), the same
number of calls in flight as the pipeline uses (pool slots x workers per batch), spread over as
many processes as the pipeline runs batches at once (the pool's slots): one Python process is
bound by its interpreter lock to about one core, and the pipeline's batches are processes too.
Timed from the moment every process is ready to the last answer. Each client process also
counts its own CPU over that time (all its threads: `time.process_time`), which is the raw
client's CPU per order that `make bench` sets the pipeline's against.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from wechat_nontax.wechat.bill import Order, insertbill_body
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID, SandboxWeChat


def demo_orders(n: int, prefix: str = "CEIL") -> list[Order]:
    now = int(time.time()) - 3600
    return [
        Order(f"{prefix}{i:08d}", DEFAULT_CARD_ID, DEFAULT_APPID, 100 + i, "某市医院门诊收费",
              now, f"{prefix}N{i:08d}", f"C{i:07d}", None)
        for i in range(n)
    ]  # fmt: skip


def _issue_all(url: str, token: str, orders: list[Order], pdf: bytes, threads: int) -> list[str]:
    local = threading.local()
    failures: list[str] = []

    def issue(order: Order) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        upload = session.post(
            f"{url}/card/invoice/platform/setpdf",
            params={"access_token": token},
            files={"pdf": (f"{order.order_id}.pdf", pdf, "application/pdf")},
            timeout=30,
        ).json()
        if upload.get("errcode", 0) != 0:
            failures.append(f"{order.order_id}: setpdf {upload.get('errcode')}")
            return
        answer = session.post(
            f"{url}/nontax/insertbill",
            params={"access_token": token},
            json=insertbill_body(order, str(upload["s_media_id"])),
            timeout=30,
        ).json()
        if answer.get("errcode", 0) != 0:
            failures.append(f"{order.order_id}: insertbill {answer.get('errcode')}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(issue, orders))
    return failures


def _process(url, token, orders, pdf, threads, ready, results) -> None:
    cpu = 0.0
    try:
        ready.wait(timeout=60)  # every process started: the clock runs from here
        cpu = time.process_time()
        failures = _issue_all(url, token, orders, pdf, threads)
    except Exception as exc:  # noqa: BLE001 (reported to the parent, which fails the benchmark)
        failures = [f"client process failed: {exc!r}"]
    results.put((time.time(), failures, time.process_time() - cpu))


def ceiling(
    url: str, orders: list[Order], pdf: bytes, *, in_flight: int, processes: int = 1
) -> dict:
    token = SandboxWeChat(url).access_token()
    if processes == 1:
        started, cpu = time.time(), time.process_time()
        failures = _issue_all(url, token, orders, pdf, in_flight)
        ended, cpu_s = time.time(), time.process_time() - cpu
    else:
        context = multiprocessing.get_context("fork")
        ready = context.Barrier(processes + 1)
        results = context.Queue()
        shares = [orders[i::processes] for i in range(processes)]
        workers = [
            context.Process(target=_process, daemon=True,
                            args=(url, token, share, pdf, in_flight // processes, ready, results))
            for share in shares
        ]  # fmt: skip
        for worker in workers:
            worker.start()
        ready.wait(timeout=60)
        started = time.time()
        answers = [results.get(timeout=1800) for _ in workers]
        for worker in workers:
            worker.join()
        ended = max(end for end, _, _ in answers)
        failures = [f for _, fs, _ in answers for f in fs]
        cpu_s = sum(cpu for _, _, cpu in answers)
    seconds = ended - started
    return {
        "orders": len(orders),
        "in_flight": in_flight,
        "processes": processes,
        "failed": len(failures),
        "seconds": round(seconds, 2),
        "orders_per_s": round(len(orders) / seconds, 1),
        "cpu_s": round(cpu_s, 2),
        "cpu_ms_per_order": round(cpu_s * 1000 / len(orders), 3),
        "failures": failures[:10],
    }
